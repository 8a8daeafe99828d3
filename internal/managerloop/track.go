package managerloop

import (
	"context"
	"sync"

	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
)

// tracker counts the runnables of one manager that are running, so that the loop can wait until
// the old manager's controllers have returned before the next manager campaigns.
type tracker struct {
	mu      sync.Mutex
	running int
	closed  bool          // the manager is over: a runnable that starts now does not run
	changed chan struct{} // closed and replaced whenever running drops
}

func newTracker() *tracker { return &tracker{changed: make(chan struct{})} }

// enter records a runnable starting; false if the manager is already over.
func (t *tracker) enter() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.running++
	return true
}

func (t *tracker) leave() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.running--
	close(t.changed)
	t.changed = make(chan struct{})
}

// Running is how many tracked runnables are running now.
func (t *tracker) Running() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.running
}

// drain closes the tracker (no runnable starts after it) and waits until none runs, or until ctx
// ends: then it returns ctx's error and how many still run.
func (t *tracker) drain(ctx context.Context) (int, error) {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	for {
		t.mu.Lock()
		n, changed := t.running, t.changed
		t.mu.Unlock()
		if n == 0 {
			return 0, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return n, ctx.Err()
		}
	}
}

// trackingManager is the manager the controllers are set up with: it hands every runnable they
// add (a controller is one) to the real manager through the tracker. Caches, HTTP and webhook
// servers pass through untouched: the manager sorts runnables by their type, and they do not act
// on the cluster.
type trackingManager struct {
	manager.Manager
	t *tracker
}

func (m trackingManager) Add(r manager.Runnable) error {
	switch r.(type) {
	case *manager.Server, hasCache, webhook.Server:
		return m.Manager.Add(r)
	}
	tr := trackedRunnable{r: r, t: m.t}
	if _, ok := r.(warmupRunnable); ok {
		return m.Manager.Add(trackedWarmupRunnable{tr})
	}
	return m.Manager.Add(tr)
}

type hasCache interface{ GetCache() cache.Cache }

type warmupRunnable interface {
	Warmup(context.Context) error
}

// trackedRunnable runs r and keeps its kind: a runnable that is not a LeaderElectionRunnable
// runs under leader election, as the manager would run it.
type trackedRunnable struct {
	r manager.Runnable
	t *tracker
}

func (tr trackedRunnable) Start(ctx context.Context) error {
	if !tr.t.enter() {
		return nil
	}
	defer tr.t.leave()
	return tr.r.Start(ctx)
}

func (tr trackedRunnable) NeedLeaderElection() bool {
	if le, ok := tr.r.(manager.LeaderElectionRunnable); ok {
		return le.NeedLeaderElection()
	}
	return true
}

// trackedWarmupRunnable keeps a controller's Warmup (its sources started before it leads, when
// the controller asks for it).
type trackedWarmupRunnable struct{ trackedRunnable }

func (tr trackedWarmupRunnable) Warmup(ctx context.Context) error {
	return tr.r.(warmupRunnable).Warmup(ctx)
}
