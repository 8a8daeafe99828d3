package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"

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

// DefaultStateRefresh is how long the state a ready pod reported (its coins, whether it is out
// of milk) is used before the operator asks again, when nothing about the pod changed. Every
// change the supervisor can see (a new pod, a readiness transition, an in-place restart, a
// request on the machine's annotation) asks at once; this bounds how stale a quiet machine's
// figures get. At 20 minutes (and 10 % jitter) 10,000 machines cost 8 requests a second.
const DefaultStateRefresh = 20 * time.Minute

// stateReads remembers, per machine, what its pod last reported and when to ask again: the
// operator's requests to pods follow what changed, not the number of passes.
type stateReads struct {
	mu      sync.Mutex
	seen    map[types.NamespacedName]stateSeen
	refresh time.Duration
}

// stateSeen is one machine's last answer and what it was the answer to.
type stateSeen struct {
	machine    types.UID
	pod        types.UID
	readySince time.Time // the pod's Ready transition it was read after
	report     string    // the pod's in-place restart report when read
	asked      string    // the machine's read-state annotation when read
	next       time.Time // ask again from then on
	state      *contract.State
	failures   int // reads failed in a row since the last answer
}

// stateRetry is how soon a pod that did not answer is asked again, doubling per failure up to the
// refresh: a pod that does not answer (a NetworkPolicy, a hung process) must not hold a worker
// in a loop of one-second timeouts.
const stateRetry = 30 * time.Second

func newStateReads(refresh time.Duration) *stateReads {
	if refresh <= 0 {
		refresh = DefaultStateRefresh
	}
	return &stateReads{seen: map[types.NamespacedName]stateSeen{}, refresh: refresh}
}

// seenOf is what the pod's state was read after: the machine, the pod and its readiness, its
// in-place report, and the read-state request on the machine.
func seenOf(vm *vendingv1alpha1.VendingMachine, pod *corev1.Pod) stateSeen {
	s := stateSeen{machine: vm.UID, pod: pod.UID, report: pod.Annotations[contract.AnnotationInPlace],
		asked: vm.Annotations[AnnotationReadState]}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			s.readySince = c.LastTransitionTime.Time
		}
	}
	return s
}

// last returns the state the pod reported, while nothing it was read after changed and it is not
// due; ok false: ask the pod. stale is the pod's last answer even then (nil if none).
func (s *stateReads) last(vm *vendingv1alpha1.VendingMachine, pod *corev1.Pod, now time.Time) (st, stale *contract.State, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	prev, found := s.seen[client.ObjectKeyFromObject(vm)]
	if !found || prev.machine != vm.UID || prev.pod != pod.UID {
		return nil, nil, false
	}
	want := seenOf(vm, pod)
	sameLife := prev.readySince.Equal(want.readySince) && prev.report == want.report
	if !sameLife {
		// A new life of the process (a readiness flip, an in-place restart): the last answer is
		// not this life's, even as a fallback.
		return nil, nil, false
	}
	if prev.asked != want.asked || !now.Before(prev.next) {
		return nil, prev.state, false
	}
	return prev.state, prev.state, true
}

// failed records a read that failed: the pod is asked again after stateRetry (doubling), and
// meanwhile the machine shows stale, the same life's last answer (nil: none).
func (s *stateReads) failed(vm *vendingv1alpha1.VendingMachine, pod *corev1.Pod, stale *contract.State, now time.Time) {
	key := client.ObjectKeyFromObject(vm)
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := seenOf(vm, pod)
	seen.state = stale
	seen.failures = 1
	if prev, ok := s.seen[key]; ok && prev.machine == vm.UID && prev.pod == pod.UID {
		seen.failures = prev.failures + 1
	}
	retry := s.refresh
	if seen.failures <= 16 {
		retry = min(stateRetry<<(seen.failures-1), s.refresh)
	}
	seen.next = now.Add(wait.Jitter(retry, 0.1))
	s.seen[key] = seen
}

// remember records an answer.
func (s *stateReads) remember(vm *vendingv1alpha1.VendingMachine, pod *corev1.Pod, st *contract.State, now time.Time) {
	seen := seenOf(vm, pod)
	// Only what the status shows is kept: the menu and the tallies would cost 10,000 maps.
	seen.state = &contract.State{TotalCoins: st.TotalCoins, Sequence: st.Sequence, Degraded: st.Degraded}
	seen.next = now.Add(wait.Jitter(s.refresh, 0.1))
	s.mu.Lock()
	s.seen[client.ObjectKeyFromObject(vm)] = seen
	s.mu.Unlock()
}

// due is how long until the machine's state is asked for again (0: not remembered).
func (s *stateReads) due(key types.NamespacedName, now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seen, ok := s.seen[key]; ok {
		return max(seen.next.Sub(now), time.Millisecond)
	}
	return 0
}

// forget drops a machine that is gone.
func (s *stateReads) forget(key types.NamespacedName) {
	s.mu.Lock()
	delete(s.seen, key)
	s.mu.Unlock()
}
