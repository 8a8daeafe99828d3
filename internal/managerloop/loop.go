package managerloop

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// Config is what the loop needs to build each manager and to serve the process's probes.
type Config struct {
	// RestConfig reaches the API server.
	RestConfig *rest.Config
	// Manager is the template of every manager's options. The loop sets its own: the probes
	// and metrics servers (it serves them), the leader election's lock, timing and release,
	// the runnables' base context, and SkipNameValidation (each manager registers the same
	// controllers again, never two at once).
	Manager ctrl.Options
	// Setup adds the controllers to a fresh manager. An error is a configuration error: Run
	// returns it.
	Setup func(ctrl.Manager) error

	// LeaderElection elects one acting manager among the replicas through a Lease.
	LeaderElection          bool
	LeaderElectionID        string
	LeaderElectionNamespace string // "" in a pod: the pod's namespace
	Timing                  Timing // zero fields: DefaultTiming

	// ProbeAddr serves /healthz and /readyz for the life of the process ("0" or "": none).
	ProbeAddr string
	// Metrics serves the controller-runtime metrics registry for the life of the process.
	Metrics metricsserver.Options

	// PollInterval is the pause between two GET /readyz while the API server is away (500 ms).
	PollInterval time.Duration
	// Identity in the lease (NewIdentity if empty).
	Identity string
	Log      logr.Logger
	// OnEvent, if set, sees every change of the loop's state, in order, from the loop's goroutine.
	OnEvent func(Event)
}

// State is what the loop is doing.
type State string

const (
	// WaitingForAPIServer: no manager; polling GET /readyz.
	WaitingForAPIServer State = "WaitingForAPIServer"
	// Campaigning: a manager runs and campaigns for the lease.
	Campaigning State = "Campaigning"
	// Leading: the manager leads; its controllers act.
	Leading State = "Leading"
	// Draining: the manager's Start returned; waiting for its controllers to return.
	Draining State = "Draining"
	// Stopped: Run is about to return.
	Stopped State = "Stopped"
)

// Event is one change of the loop's state: Manager counts the managers built so far (the one
// concerned), Err is why the manager ended (Draining) or why Run returns (Stopped).
type Event struct {
	State   State
	Manager int
	Err     error
}

const (
	minHealthyRun   = 10 * time.Second // a manager that ran less counts as failing at once
	restartBase     = time.Second
	restartMax      = 30 * time.Second
	probeTimeout    = 2 * time.Second
	defaultInterval = 500 * time.Millisecond
)

// ErrControllersDidNotStop is returned when the old manager's controllers were still running
// when another replica may already lead: the process must exit (as controller-runtime's would).
var ErrControllersDidNotStop = errors.New("managerloop: the controllers did not stop within the lease's margin")

type loop struct {
	cfg      Config
	timing   Timing
	log      logr.Logger
	lock     gatedLock
	stopping func() bool
	probe    func(context.Context) error

	state   atomic.Value // State
	current atomic.Pointer[tracker]
	n       int
}

// Run supervises managers until ctx ends (nil) or a configuration error (returned). It never
// returns because the API server is away or the lease was lost.
func Run(ctx context.Context, cfg Config) (err error) {
	l, err := newLoop(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	l.stopping = func() bool { return ctx.Err() != nil }
	l.state.Store(WaitingForAPIServer)

	var servers sync.WaitGroup
	defer servers.Wait()
	defer cancel(nil) // runs first: stops the servers
	if err := l.serve(ctx, cancel, &servers); err != nil {
		return err
	}
	if cfg.LeaderElection {
		stopEvents, err := l.newLock(ctx)
		if err != nil {
			return err
		}
		defer stopEvents()
	}

	err = l.run(ctx)
	if err == nil {
		if cause := context.Cause(ctx); !errors.Is(cause, context.Canceled) {
			err = cause // a server of the loop failed
		}
	}
	l.emit(Event{State: Stopped, Manager: l.n, Err: err})
	return err
}

func newLoop(cfg Config) (*loop, error) {
	if cfg.RestConfig == nil || cfg.Setup == nil {
		return nil, errors.New("managerloop: RestConfig and Setup are required")
	}
	l := &loop{cfg: cfg, timing: cfg.Timing.withDefaults(), log: cfg.Log}
	if err := l.timing.Validate(); err != nil {
		return nil, err
	}
	if l.cfg.PollInterval <= 0 {
		l.cfg.PollInterval = defaultInterval
	}
	if l.cfg.Identity == "" {
		id, err := NewIdentity()
		if err != nil {
			return nil, err
		}
		l.cfg.Identity = id
	}
	pc := rest.CopyConfig(cfg.RestConfig)
	pc.Timeout = probeTimeout
	dc, err := discovery.NewDiscoveryClientForConfig(pc)
	if err != nil {
		return nil, fmt.Errorf("managerloop: API server client: %w", err)
	}
	l.probe = func(ctx context.Context) error {
		return dc.RESTClient().Get().AbsPath("/readyz").Do(ctx).Error()
	}
	return l, nil
}

// newLock makes the process's lease lock and its event recorder ("became leader" events, as
// the manager's own lock would emit).
func (l *loop) newLock(ctx context.Context) (stop func(), err error) {
	ns, err := leaseNamespace(l.cfg.LeaderElectionNamespace)
	if err != nil {
		return nil, err
	}
	if l.cfg.LeaderElectionID == "" {
		return nil, errors.New("managerloop: LeaderElectionID is required with leader election")
	}
	cs, err := kubernetes.NewForConfig(l.cfg.RestConfig)
	if err != nil {
		return nil, fmt.Errorf("managerloop: events client: %w", err)
	}
	b := record.NewBroadcaster(record.WithContext(ctx))
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: cs.CoreV1().Events("")})
	events := b.NewRecorder(clientgoscheme.Scheme, corev1.EventSource{Component: l.cfg.Identity})
	lock, err := newLock(l.cfg.RestConfig, ns, l.cfg.LeaderElectionID, l.cfg.Identity, l.timing.RenewDeadline, events)
	if err != nil {
		b.Shutdown()
		return nil, err
	}
	l.lock = gatedLock{Interface: lock, mayRelease: func() bool {
		running := 0
		if t := l.current.Load(); t != nil {
			running = t.Running()
		}
		return releaseAllowed(l.stopping(), running)
	}}
	return b.Shutdown, nil
}

// serve starts the probes and metrics servers for the life of the process. A listener that
// cannot bind is a configuration error; a server failing later ends Run through cancel.
func (l *loop) serve(ctx context.Context, cancel context.CancelCauseFunc, wg *sync.WaitGroup) error {
	if a := l.cfg.ProbeAddr; a != "" && a != "0" {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return fmt.Errorf("managerloop: health probes: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/healthz", probeHandler(func() error { return nil })) // the loop is alive: it serves this
		mux.Handle("/readyz", probeHandler(l.ready))
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		wg.Go(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				cancel(fmt.Errorf("managerloop: health probes: %w", err))
			}
		})
		wg.Go(func() {
			<-ctx.Done()
			_ = srv.Close()
		})
	}
	httpClient, err := rest.HTTPClientFor(l.cfg.RestConfig)
	if err != nil {
		return fmt.Errorf("managerloop: metrics: %w", err)
	}
	metrics, err := metricsserver.NewServer(l.cfg.Metrics, l.cfg.RestConfig, httpClient)
	if err != nil {
		return fmt.Errorf("managerloop: metrics: %w", err)
	}
	if metrics != nil {
		wg.Go(func() {
			if err := metrics.Start(logr.NewContext(ctx, l.log)); err != nil {
				cancel(fmt.Errorf("managerloop: metrics: %w", err))
			}
		})
	}
	return nil
}

// probeHandler answers 200 ok, or 503 with check's error. Unlike controller-runtime's healthz
// handler it does not log each failed probe: a readiness that fails for a whole outage is expected.
func probeHandler(check func() error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if err := check(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
}

// ready answers /readyz: a manager runs (campaigning or leading).
func (l *loop) ready() error {
	if s := l.state.Load().(State); s != Campaigning && s != Leading {
		return fmt.Errorf("no manager is running: %s", s)
	}
	return nil
}

func (l *loop) emit(e Event) {
	l.state.Store(e.State)
	kv := []any{"state", e.State, "manager", e.Manager}
	switch {
	case e.Err != nil && e.State == Stopped:
		l.log.Error(e.Err, "Manager loop stopped", kv...)
	case e.Err != nil:
		l.log.Info("Manager loop", append(kv, "reason", e.Err.Error())...)
	default:
		l.log.Info("Manager loop", kv...)
	}
	if l.cfg.OnEvent != nil {
		l.cfg.OnEvent(e)
	}
}

func (l *loop) run(ctx context.Context) error {
	shortRuns := 0
	for {
		waited, err := l.waitForAPIServer(ctx)
		if err != nil {
			return nil // ctx ended
		}
		if waited {
			shortRuns = 0 // the last manager ended with the API server: an outage, not a manager failing at once
		}
		if err := sleep(ctx, restartDelay(shortRuns, restartBase, restartMax)); err != nil {
			return nil
		}
		began := time.Now()
		err = l.runManager(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, ErrControllersDidNotStop), errors.Is(err, errBuildWhileUp):
			return err
		}
		shortRuns = nextShortRuns(shortRuns, time.Since(began), minHealthyRun)
	}
}

// waitForAPIServer polls GET /readyz until it answers, and says whether it had to wait; it logs
// the wait once, not each attempt.
func (l *loop) waitForAPIServer(ctx context.Context) (waited bool, err error) {
	err = l.probe(ctx)
	if err == nil {
		return false, nil
	}
	l.emit(Event{State: WaitingForAPIServer, Manager: l.n, Err: err})
	began := time.Now()
	t := time.NewTicker(l.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return true, ctx.Err()
		case <-t.C:
		}
		if l.probe(ctx) == nil {
			l.log.Info("API server answers", "after", time.Since(began).Round(time.Millisecond))
			return true, nil
		}
	}
}

// runManager builds a fresh manager, runs it until its Start returns, and drains it.
func (l *loop) runManager(ctx context.Context) error {
	l.n++
	t := newTracker()
	l.current.Store(t)
	// The runnables' context ends as soon as Start returns, whatever controller-runtime's own
	// stop procedure (which does not wait on a lost lease) has got to by then.
	base, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	mgr, err := l.build(base, t)
	if err != nil {
		up := l.probe(ctx) == nil
		if !up {
			l.log.Info("Could not build a manager: the API server is away", "manager", l.n, "reason", err.Error())
		}
		return afterBuildFailure(err, up)
	}

	l.emit(Event{State: Campaigning, Manager: l.n})
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	select {
	case <-mgr.Elected():
		l.emit(Event{State: Leading, Manager: l.n})
		err = <-done
	case err = <-done:
	}
	cancelBase()
	if ctx.Err() != nil {
		return nil // shutting down: Start already waited for the runnables (graceful shutdown)
	}
	if err == nil {
		err = errors.New("the manager stopped")
	}
	l.emit(Event{State: Draining, Manager: l.n, Err: err})
	drainCtx, cancelDrain := context.WithTimeout(ctx, l.timing.DrainBudget())
	defer cancelDrain()
	if running, err := t.drain(drainCtx); err != nil && ctx.Err() == nil {
		return fmt.Errorf("%w: %d still running after %v", ErrControllersDidNotStop, running, l.timing.DrainBudget())
	}
	return nil
}

// build makes a manager from the template and adds the controllers through the tracker.
func (l *loop) build(base context.Context, t *tracker) (ctrl.Manager, error) {
	o := l.cfg.Manager
	o.HealthProbeBindAddress = "0"
	o.Metrics.BindAddress = "0"
	o.BaseContext = func() context.Context { return base }
	o.Controller.SkipNameValidation = ptr.To(true)
	o.LeaderElection = l.cfg.LeaderElection
	if l.cfg.LeaderElection {
		o.LeaderElectionID = l.cfg.LeaderElectionID
		o.LeaderElectionResourceLockInterface = l.lock
		o.LeaderElectionReleaseOnCancel = true // gated: see gatedLock
		o.LeaseDuration, o.RenewDeadline, o.RetryPeriod = &l.timing.LeaseDuration, &l.timing.RenewDeadline, &l.timing.RetryPeriod
	}
	mgr, err := ctrl.NewManager(l.cfg.RestConfig, o)
	if err != nil {
		return nil, fmt.Errorf("managerloop: new manager: %w", err)
	}
	if err := l.cfg.Setup(trackingManager{Manager: mgr, t: t}); err != nil {
		return nil, fmt.Errorf("managerloop: setting up the controllers: %w", err)
	}
	return mgr, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
