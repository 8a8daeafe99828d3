package podsupervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"k8s.io/client-go/rest"

	"github.com/vendingfleet/vending-operator/internal/contract"
)

// Annotator reports in-place restarts on the pod's own annotation (contract.AnnotationInPlace),
// where the operator, which watches pods, folds them into the machine's status. The pod's
// service account may change nothing else (RBAC and an admission policy see to that; see
// docs/design.md).
//
// Healing never waits for it: Report only hands over the newest cumulative report, and a
// goroutine patches it, retrying with back-off while the API server is away or refuses, so that
// the status catches up when it returns. Reports are cumulative, so the latest one replaces any
// unsent.
type Annotator struct {
	latest chan contract.InPlace
}

// NewAnnotator reports on pod namespace/name through the in-cluster service account.
func NewAnnotator(ctx context.Context, namespace, name string, logger *slog.Logger) (*Annotator, error) {
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, err
	}
	return newAnnotator(ctx, cfg, namespace, name, logger)
}

func newAnnotator(ctx context.Context, cfg *rest.Config, namespace, name string, logger *slog.Logger) (*Annotator, error) {
	cfg.UserAgent = "vendingpod-supervisor"
	// client-go's transport (the CA, the rotating bound token) without its typed clients: every
	// in-place restart starts this binary again, and the typed clients' package initialisation
	// would add milliseconds to each.
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, err
	}
	u, err := url.JoinPath(cfg.Host, "api/v1/namespaces", namespace, "pods", name)
	if err != nil {
		return nil, err
	}
	a := &Annotator{latest: make(chan contract.InPlace, 1)}
	patch := func(ctx context.Context, r contract.InPlace) error {
		v, _ := json.Marshal(r)
		body, _ := json.Marshal(map[string]any{"metadata": map[string]any{
			"annotations": map[string]string{contract.AnnotationInPlace: string(v)}}})
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodPatch, u, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/merge-patch+json")
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer func() { _ = resp.Body.Close() }()
		if resp.StatusCode/100 != 2 {
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			err := fmt.Errorf("PATCH %s: %s: %s", u, resp.Status, bytes.TrimSpace(msg))
			if resp.StatusCode/100 == 4 && resp.StatusCode != http.StatusConflict && resp.StatusCode != http.StatusTooManyRequests {
				return refused{err}
			}
			return err
		}
		return nil
	}
	go a.run(ctx, patch, logger)
	return a, nil
}

// refused is a 4xx answer: a retry of the same request gets it again until something changes
// (an authorizer's caches, a RoleBinding).
type refused struct{ error }

// Report hands over the newest report; it never blocks.
func (a *Annotator) Report(r contract.InPlace) {
	for {
		select {
		case a.latest <- r:
			return
		default:
		}
		select {
		case <-a.latest: // an unsent older report: this one carries it
		default:
		}
	}
}

func (a *Annotator) run(ctx context.Context, patch func(context.Context, contract.InPlace) error, logger *slog.Logger) {
	for {
		var r contract.InPlace
		select {
		case r = <-a.latest:
		case <-ctx.Done():
			return
		}
		// Every error is retried: a refusal is not final either. An API server that has just
		// come back answers 403 until its authorizer's caches are filled, and a RoleBinding may
		// be created late. A refusal waits longer between tries; the log says so once per
		// streak, not every try.
		logged := ""
		for delay := 100 * time.Millisecond; ; {
			err := patch(ctx, r)
			if err == nil {
				if logged != "" {
					logger.Info("Reported in-place restarts on the pod", "restarts", r.Restarts)
				}
				break
			}
			limit := 5 * time.Second
			if errors.As(err, new(refused)) {
				limit = 30 * time.Second
			}
			if msg := err.Error(); msg != logged {
				logger.Warn("Reporting in-place restarts on the pod; retrying with back-off", "restarts", r.Restarts, "err", err)
				logged = msg
			}
			select {
			case newer := <-a.latest:
				r = newer
			case <-time.After(delay):
			case <-ctx.Done():
				return
			}
			delay = min(2*delay, limit)
		}
	}
}
