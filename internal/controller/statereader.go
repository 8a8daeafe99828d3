package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/vendingfleet/vending-operator/internal/contract"
)

// StateReader reads what a vending pod reports about itself: the operator's small interface to
// the other program of the contract.
type StateReader interface {
	ReadState(ctx context.Context, pod *corev1.Pod) (*contract.State, error)
}

// HTTPStateReader reads GET /v1/state from the pod's IP.
type HTTPStateReader struct {
	Client *http.Client
	// Port overrides contract.Port (tests).
	Port int
}

// NewHTTPStateReader returns a reader with a short timeout: a slow pod must not hold a worker.
func NewHTTPStateReader() *HTTPStateReader {
	return &HTTPStateReader{Client: &http.Client{Timeout: time.Second}}
}

// ReadState implements StateReader.
func (h *HTTPStateReader) ReadState(ctx context.Context, pod *corev1.Pod) (*contract.State, error) {
	if pod.Status.PodIP == "" {
		return nil, fmt.Errorf("pod %s has no IP", pod.Name)
	}
	port := contract.Port
	if h.Port != 0 {
		port = h.Port
	}
	url := "http://" + net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(port)) + contract.PathState
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := h.Client.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	var st contract.State
	if err := json.NewDecoder(http.MaxBytesReader(nil, resp.Body, 1<<20)).Decode(&st); err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return &st, nil
}
