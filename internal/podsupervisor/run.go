package podsupervisor

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/supervision"
)

// Child file descriptors: the listening socket and the pipe the child reports its failure on.
const (
	ListenFD = 3
	ReportFD = 4
)

// Config is what PID 1 runs with.
type Config struct {
	Settings
	// Listen is the address of the vending API; PID 1 holds the socket for the life of the pod.
	Listen string
	// Command is the vending service: the binary and its flags. PID 1 adds
	// --listen-fd and --report-fd.
	Command []string
	// TerminationMessagePath is where PID 1 reports when it gives up.
	TerminationMessagePath string
	// MemoryEvents is where the container's cgroup counts OOM kills (an oom_kill line:
	// MemoryEventsFile): an OOM kill counted there while the child died of SIGKILL is the
	// container's OOM, the operator's to handle.
	MemoryEvents string
	// Report, when set, is told of every in-place restart (the cumulative report; it must not
	// block: the next restart does not wait for the API).
	Report func(contract.InPlace)
	Logger *slog.Logger
	Now    func() time.Time
	// Exit ends PID 1; os.Exit unless a test replaces it (and then Run returns).
	Exit func(code int)
}

// Run supervises the vending service until it gives up (then it exits, through cfg.Exit).
func Run(cfg Config) error {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Exit == nil {
		cfg.Exit = os.Exit
	}
	log := cfg.Logger.With("supervisor", "in-pod")
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return cfg.giveUp(contract.TerminationMessage{Reason: contract.ReasonConfigError, ExitCode: contract.ExitConfigError,
			Message: err.Error(), Time: cfg.Now()}, nil)
	}
	// The socket stays open here while children come and go: between two of them the kernel
	// keeps completing handshakes into its backlog, so a customer's connection waits for the
	// next child rather than being refused.
	sock, err := ln.(*net.TCPListener).File()
	if err != nil {
		return cfg.giveUp(contract.TerminationMessage{Reason: contract.ReasonConfigError, ExitCode: contract.ExitConfigError,
			Message: err.Error(), Time: cfg.Now()}, nil)
	}
	sigterm := make(chan os.Signal, 1)
	signal.Notify(sigterm, syscall.SIGTERM)

	t := NewTracker(cfg.Policy, cfg.Seed, cfg.Earlier)
	for {
		oomBefore := oomKills(cfg.MemoryEvents)
		child, failure, err := start(cfg.Command, sock)
		if err != nil {
			return cfg.giveUp(contract.TerminationMessage{Reason: contract.ReasonConfigError, ExitCode: contract.ExitConfigError,
				Message: "starting the vending process: " + err.Error(), Time: cfg.Now()}, t)
		}
		exited := make(chan *os.ProcessState, 1)
		go func() {
			st, _ := child.Process.Wait()
			exited <- st
		}()
		var st *os.ProcessState
		select {
		case st = <-exited:
		case <-sigterm:
			return cfg.terminate(child, exited, t)
		}
		f := failureOf(st, <-failure, oomKills(cfg.MemoryEvents) > oomBefore, cfg.Now())
		if f.Reason == contract.ReasonOOMKilled {
			// The container's memory is the pod's problem: restarting inside the same limit
			// would hide it. The operator handles it as before.
			return cfg.giveUp(f, t)
		}
		d := t.Decide(f, cfg.Now())
		if d.Action != supervision.Restart {
			log.Error("Giving up: the operator takes over", "reason", f.Reason, "decision", d.Reason, "message", d.Message)
			return cfg.giveUp(f, t)
		}
		log.Warn("The vending process failed; restarting it in place", "reason", f.Reason, "exitCode", f.ExitCode,
			"message", f.Message, "decision", d.Message)
		if wait := d.RestartAt.Sub(cfg.Now()); wait > 0 {
			select {
			case <-time.After(wait):
			case <-sigterm:
				return cfg.terminate(nil, nil, t)
			}
		}
		t.Restarted(f, d, cfg.Now())
		r := t.Report()
		// The history is in the termination message at once too: if PID 1 is killed in its
		// turn (the grace period's SIGKILL, an OOM kill of the whole container) the operator
		// still counts these restarts. A failure that ends the pod overwrites it.
		cfg.writeTerminationMessage(contract.TerminationMessage{Time: cfg.Now(), InPlace: &r})
		if cfg.Report != nil {
			cfg.Report(r)
		}
	}
}

// start runs the vending service with the socket as fd 3 and a pipe as fd 4; failure yields
// what the child wrote on the pipe once it is gone.
func start(command []string, sock *os.File) (*exec.Cmd, <-chan []byte, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	args := append(append([]string(nil), command[1:]...),
		"--listen-fd="+strconv.Itoa(ListenFD), "--report-fd="+strconv.Itoa(ReportFD))
	cmd := exec.Command(command[0], args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{sock, w} // fds 3 and 4
	// The child must not outlive PID 1 (it would hold the log's lock); in a container the
	// kernel sees to that, elsewhere (tests) this does.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	_ = w.Close() // the child's copy is the only writer left: EOF when it is gone
	if err != nil {
		_ = r.Close()
		return nil, nil, err
	}
	failure := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(r, 64<<10))
		_ = r.Close()
		failure <- b
	}()
	return cmd, failure, nil
}

// failureOf names the child's end: its own report when it made one, else what its exit says.
func failureOf(st *os.ProcessState, report []byte, oomKilled bool, now time.Time) contract.TerminationMessage {
	var f contract.TerminationMessage
	if len(bytes.TrimSpace(report)) > 0 && json.Unmarshal(report, &f) == nil && f.Reason != "" {
		if f.Time.IsZero() {
			f.Time = now
		}
		return f
	}
	f = contract.TerminationMessage{Time: now, ExitCode: st.ExitCode()}
	ws, _ := st.Sys().(syscall.WaitStatus)
	switch {
	case ws.Signaled() && ws.Signal() == syscall.SIGKILL && oomKilled:
		f.Reason, f.ExitCode = contract.ReasonOOMKilled, 128+int(syscall.SIGKILL)
		f.Message = "the kernel's OOM killer ended the vending process (the container's memory limit)"
	case ws.Signaled() && ws.Signal() == syscall.SIGKILL:
		f.Reason, f.ExitCode = contract.ReasonKilled, 128+int(syscall.SIGKILL)
		f.Message = "the vending process was killed (SIGKILL)"
	case ws.Signaled() && ws.Signal() == syscall.SIGTERM:
		f.Reason, f.ExitCode = contract.ReasonTerminated, contract.ExitTerminated
		f.Message = "the vending process got SIGTERM"
	case ws.Signaled():
		f.Reason, f.ExitCode = contract.ReasonError, 128+int(ws.Signal())
		f.Message = "the vending process died of " + ws.Signal().String()
	case f.ExitCode == 0:
		f.Reason, f.Message = contract.ReasonExited, "the vending process exited 0"
	default:
		f.Reason, f.Message = contract.ReasonError, fmt.Sprintf("the vending process exited %d without a report", f.ExitCode)
	}
	return f
}

// giveUp ends PID 1 carrying the failure and the in-place history: the pod fails, and the
// operator decides with the same history.
func (cfg Config) giveUp(f contract.TerminationMessage, t *Tracker) error {
	if t != nil {
		r := t.Report()
		f.InPlace = &r
	}
	cfg.writeTerminationMessage(f)
	cfg.Logger.Error("Vending machine failed", "reason", f.Reason, "exitCode", f.ExitCode, "message", f.Message,
		"inPlaceRestarts", f.InPlace != nil && f.InPlace.Restarts > 0)
	code := f.ExitCode
	if code == 0 {
		code = contract.ExitConfigError // the pod failed: never report success
	}
	cfg.Exit(code)
	return errors.New(f.Reason + ": " + f.Message)
}

func (cfg Config) writeTerminationMessage(f contract.TerminationMessage) {
	if cfg.TerminationMessagePath == "" {
		return
	}
	if err := os.WriteFile(cfg.TerminationMessagePath, fit(f), 0o644); err != nil {
		cfg.Logger.Error("Writing termination message", "path", cfg.TerminationMessagePath, "err", err)
	}
}

// maxTerminationMessage is what the kubelet keeps of a termination message.
const maxTerminationMessage = 4096

// fit marshals f within what the kubelet keeps: the oldest restart times go first (the count
// stays exact), then the messages are cut.
func fit(f contract.TerminationMessage) []byte {
	for {
		b, _ := json.Marshal(f)
		switch {
		case len(b) <= maxTerminationMessage:
			return b
		case f.InPlace != nil && len(f.InPlace.Times) > 1:
			r := *f.InPlace
			r.Times = r.Times[1:]
			f.InPlace = &r
		case f.InPlace != nil && f.InPlace.Last != nil && len(f.InPlace.Last.Message) > 200:
			r, last := *f.InPlace, *f.InPlace.Last
			last.Message = last.Message[:200]
			r.Last = &last
			f.InPlace = &r
		case len(f.Message) > 200:
			f.Message = f.Message[:200]
		default:
			return b
		}
	}
}

// terminate is SIGTERM to the pod (the kubelet stopping it): crash-only, the child is killed
// where it stands (everything acknowledged is durable) and PID 1 ends as Terminated.
func (cfg Config) terminate(child *exec.Cmd, exited <-chan *os.ProcessState, t *Tracker) error {
	if child != nil {
		_ = child.Process.Kill()
		<-exited // the log's lock goes with the child: nothing of it may outlive the pod
	}
	return cfg.giveUp(contract.TerminationMessage{Reason: contract.ReasonTerminated, ExitCode: contract.ExitTerminated,
		Message: "SIGTERM: stopped at once; everything acknowledged is durable, the next start replays the log",
		Time:    cfg.Now()}, t)
}

// MemoryEventsFile is the file of the process's cgroup that counts OOM kills in an oom_kill
// line: memory.events on cgroup v2, memory.oom_control on cgroup v1 (Linux 4.13 or later).
func MemoryEventsFile() string {
	for _, p := range []string{"/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// oomKills reads the oom_kill count of a cgroup's memory.events or memory.oom_control (0 when
// unreadable).
func oomKills(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}
