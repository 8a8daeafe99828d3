package vendingpod

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/eventlog"
	"github.com/vendingfleet/vending-operator/internal/vending"
)

// Config is everything the vending pod runs with.
type Config struct {
	DataDir                string
	Listen                 string
	Machine                vending.Config
	SnapshotEvery          uint64
	SegmentSize            int64
	MailboxSize            int
	EnableFaults           bool
	TerminationMessagePath string
	// Supervised: the process is the child of the in-pod supervisor (internal/podsupervisor),
	// which holds the listening socket and hands it over as Listener, and reads the failure
	// from ReportTo instead of the termination-message path. A supervised child accepts
	// connections only once it has recovered: during an in-place restart, requests and probes
	// wait in the socket's backlog (held by the supervisor) instead of meeting 503 NotReady, so
	// a restart shorter than a probe's timeout is a slow reply, not a flap.
	Listener net.Listener
	ReportTo *os.File
	// LockWait is how long to wait for another process's lock on the log before exiting with
	// LogLocked: a pod replaced in a hurry (deleted with no grace) may still be dying on the
	// same node while its successor starts.
	LockWait time.Duration
	Logger   *slog.Logger
	// Exit ends the process after a failure was reported; os.Exit unless a test replaces it.
	Exit func(code int)
}

// ParseMenu reads a menu like "BlackCoffee=2,Latte=2:milk,Espresso=2".
func ParseMenu(s string) (map[string]vending.Item, error) {
	menu := map[string]vending.Item{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, rest, ok := strings.Cut(part, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("menu item %q: want Name=price[:milk]", part)
		}
		priceStr, opt, _ := strings.Cut(rest, ":")
		price, err := strconv.ParseInt(priceStr, 10, 64)
		if err != nil || price <= 0 {
			return nil, fmt.Errorf("menu item %q: price must be a positive whole number of coins", part)
		}
		if opt != "" && opt != "milk" {
			return nil, fmt.Errorf("menu item %q: unknown option %q (only :milk)", part, opt)
		}
		if _, dup := menu[name]; dup {
			return nil, fmt.Errorf("menu item %q is listed twice", name)
		}
		menu[name] = vending.Item{Price: price, UsesMilk: opt == "milk"}
	}
	if len(menu) == 0 {
		return nil, errors.New("menu is empty")
	}
	return menu, nil
}

// DefaultListen is :8080, every address of the pod's network namespace: its pod IP for the
// Service, the kubelet's probes and the operator, and localhost, where `kubectl port-forward`
// connects. (It was the pod IP only, and port-forward met "connection refused".)
func DefaultListen() string {
	return net.JoinHostPort("", strconv.Itoa(contract.Port))
}

// reporter reifies failures: a termination message for the supervisor, a log line, an exit.
type reporter struct {
	path   string
	to     *os.File // the supervisor's pipe, instead of path
	logger *slog.Logger
	exit   func(int)
	now    func() time.Time
	// once: the first failure is the one reported. Another may race it (SIGTERM while the
	// writer fails); two writers of the termination message could interleave into bad JSON.
	once *sync.Once
}

func (r reporter) fail(f Failure) {
	r.once.Do(func() { r.report(f) })
	select {} // Exit does not return; a test's replacement blocks this goroutine instead.
}

func (r reporter) report(f Failure) {
	msg := contract.TerminationMessage{
		Reason: f.Reason, Message: f.Message, ExitCode: f.ExitCode, PendingOrder: f.PendingOrder,
		Sequence: f.Sequence, File: f.File, Offset: f.Offset, Time: r.now().UTC(),
	}
	b, _ := json.Marshal(msg)
	if r.to != nil {
		// The in-pod supervisor reads this pipe to EOF when the process is gone.
		if _, err := r.to.Write(b); err != nil {
			r.logger.Error("Reporting the failure to the supervisor", "err", err)
		}
	} else if r.path != "" {
		// Best effort: a failure to report must not stop the process from dying.
		if err := os.WriteFile(r.path, b, 0o644); err != nil {
			r.logger.Error("Writing termination message", "path", r.path, "err", err)
		}
	}
	r.logger.Error("Vending machine failed", "reason", f.Reason, "exitCode", f.ExitCode, "message", f.Message,
		"pendingOrder", f.PendingOrder, "sequence", f.Sequence, "file", f.File, "offset", f.Offset)
	r.exit(f.ExitCode)
}

// openFailure turns an error from opening the log into the failure it is.
func openFailure(err error) Failure {
	var ce *eventlog.CorruptError
	switch {
	case errors.As(err, &ce):
		return Failure{Reason: contract.ReasonCorruptLog, ExitCode: contract.ExitCorruptLog, Message: err.Error(),
			File: ce.File, Offset: ce.Offset}
	case errors.Is(err, eventlog.ErrLocked):
		return Failure{Reason: contract.ReasonLogLocked, ExitCode: contract.ExitLogLocked, Message: err.Error()}
	default:
		return Failure{Reason: contract.ReasonStorageFailure, ExitCode: contract.ExitStorageFailure, Message: err.Error()}
	}
}

// Run serves the vending machine until the process dies. It returns only if it cannot start
// serving at all (after reporting that as a failure).
func Run(cfg Config) error {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	exit := cfg.Exit
	if exit == nil {
		exit = os.Exit
	}
	rep := reporter{path: cfg.TerminationMessagePath, to: cfg.ReportTo, logger: logger, exit: exit, now: time.Now, once: new(sync.Once)}
	defer onSIGTERM(rep)()
	if err := cfg.Machine.Validate(); err != nil {
		rep.fail(Failure{Reason: contract.ReasonConfigError, ExitCode: contract.ExitConfigError, Message: err.Error()})
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	logMetrics := eventlog.NewMetrics(reg)
	mailbox := make(chan command, cfg.MailboxSize)
	srv := &server{
		mailbox:      mailbox,
		eventReaders: make(chan struct{}, maxEventReaders),
		menu:         map[string]int{},
		enableFaults: cfg.EnableFaults,
		now:          time.Now,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vending_http_requests_total", Help: "HTTP requests by route and status code.",
		}, []string{"route", "code"}),
	}
	for name, it := range cfg.Machine.Menu {
		srv.menu[name] = int(it.Price)
	}
	var err error
	reg.MustRegister(srv.requests, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "vending_mailbox_depth", Help: "Commands waiting for the writer.",
	}, func() float64 { return float64(len(mailbox)) }))

	ln := cfg.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", cfg.Listen); err != nil {
			rep.fail(Failure{Reason: contract.ReasonConfigError, ExitCode: contract.ExitConfigError, Message: err.Error()})
			return err
		}
	}
	httpSrv := &http.Server{
		Handler:           srv.routes(promhttp.HandlerFor(reg, promhttp.HandlerOpts{})),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	serve := func() {
		go func() {
			if err := httpSrv.Serve(ln); err != nil {
				rep.fail(Failure{Reason: contract.ReasonConfigError, ExitCode: contract.ExitConfigError, Message: "http: " + err.Error()})
			}
		}()
	}
	if cfg.Listener == nil {
		// Alone in its container, the process serves probes while the log replays: alive at
		// once, ready only after recovery (a long replay is not mistaken for a hang).
		serve()
	}

	m := vending.New(cfg.Machine)
	l, stats, err := eventlog.Open(cfg.DataDir, eventlog.Options{
		SegmentSize: cfg.SegmentSize, Logger: logger, Metrics: logMetrics,
	}, replayer{m})
	for deadline := time.Now().Add(cfg.LockWait); errors.Is(err, eventlog.ErrLocked) && time.Now().Before(deadline); {
		logger.Warn("The event log is locked by another process (a predecessor still dying?); waiting", "dir", cfg.DataDir)
		time.Sleep(200 * time.Millisecond)
		m = vending.New(cfg.Machine)
		l, stats, err = eventlog.Open(cfg.DataDir, eventlog.Options{
			SegmentSize: cfg.SegmentSize, Logger: logger, Metrics: logMetrics,
		}, replayer{m})
	}
	if err != nil {
		f := openFailure(err)
		if f.Reason == contract.ReasonCorruptLog {
			f.Sequence = stats.LastSeq // the last record replayed before the damage: what a human can still trust
		}
		rep.fail(f)
		return err
	}
	srv.log = l
	logger.Info("Replayed event log", "dir", cfg.DataDir, "snapshotSeq", stats.SnapshotSeq, "records", stats.Records,
		"lastSeq", stats.LastSeq, "tornBytes", stats.TornBytes, "duration", stats.Duration)

	snapshots := make(chan snapshotJob, 1)
	w := &writer{
		m: m, log: l, now: time.Now, acks: make(chan ack, cfg.MailboxSize+1), every: cfg.SnapshotEvery,
		lastSnap: stats.SnapshotSeq, fail: rep.fail,
		snapshot: func(seq uint64, data []byte) {
			select {
			case snapshots <- snapshotJob{seq, data}:
			default: // one is being written; the next interval takes another
			}
		},
	}
	go func() {
		for j := range snapshots {
			if err := l.SaveSnapshot(j.seq, j.data); err != nil {
				logger.Error("Writing snapshot", "seq", j.seq, "err", err)
			}
		}
	}()
	go w.acknowledger()
	if err := w.recover(); err != nil {
		rep.fail(Failure{Reason: contract.ReasonStorageFailure, ExitCode: contract.ExitStorageFailure, Message: err.Error()})
		return err
	}
	st := m.State()
	logger.Info("Vending machine ready", "listen", ln.Addr().String(), "menu", menuString(cfg.Machine.Menu),
		"totalCoins", st.TotalCoins, "inserted", st.Inserted, "beans", st.Beans, "milk", st.Milk, "seq", st.Seq)
	srv.ready.Store(true)
	if cfg.Listener != nil {
		serve()
	}
	w.run(mailbox)
	return nil
}

// onSIGTERM ends the process at once on SIGTERM with ExitTerminated and a Terminated message.
// Crash-only: this is no shutdown path (nothing is flushed or drained; everything acknowledged
// is durable already), it only names the exit. Without it Go's default applies, and as PID 1
// of a container (where the kernel ignores the re-raised SIGTERM) the runtime exits with 2,
// which reads as a program error.
// It returns the function that stops listening (Run returns only if it cannot start).
func onSIGTERM(rep reporter) (stop func()) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case <-sigs:
			rep.fail(Failure{Reason: contract.ReasonTerminated, ExitCode: contract.ExitTerminated,
				Message: "SIGTERM: stopped at once; everything acknowledged is durable, the next start replays the log"})
		case <-done:
		}
	}()
	return func() {
		signal.Stop(sigs)
		close(done)
	}
}

type snapshotJob struct {
	seq  uint64
	data []byte
}
