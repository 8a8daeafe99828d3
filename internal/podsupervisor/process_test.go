package podsupervisor

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/testbinary"
)

// These tests run the real vendingpod binary as PID 1 of a "pod" (--supervise) on a temp
// directory: its child really dies (SIGKILL, a failure of its own) and is really restarted in
// place from disk, on the socket PID 1 holds.

var binary string

func TestMain(m *testing.M) { testbinary.Main(m, "../../cmd/vendingpod", &binary) }

type pod struct {
	t       *testing.T
	addr    string
	cmd     *exec.Cmd
	exited  chan struct{}
	stderr  syncBuffer
	termMsg string
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startPod runs PID 1 on a fresh log and waits until the child serves.
func startPod(t *testing.T, args ...string) *pod {
	t.Helper()
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	p := &pod{t: t, addr: addr, exited: make(chan struct{}), termMsg: filepath.Join(dir, "termination-log")}
	p.cmd = exec.Command(binary, append([]string{"--supervise", "--data-dir", filepath.Join(dir, "data"), "--listen", addr,
		"--termination-message-path", p.termMsg, "--enable-faults", "--backoff-initial=0s", "--backoff-jitter-percent=0"}, args...)...)
	p.cmd.Stderr = &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("pod's log:\n%s", p.stderr.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if code, _ := p.do("GET", "/readyz", "", ""); code == http.StatusOK {
			return p
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the pod did not get ready:\n%s", p.stderr.String())
	return nil
}

func (p *pod) do(method, path, key, body string) (int, error) {
	req, _ := http.NewRequest(method, "http://"+p.addr+path, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	return resp.StatusCode, nil
}

// child is the pid of the vending process PID 1 runs now.
func (p *pod) child() int {
	p.t.Helper()
	f := children(p.cmd.Process.Pid)
	if len(f) != 1 {
		p.t.Fatalf("PID 1 has children %q, want one", f)
	}
	n, _ := strconv.Atoi(f[0])
	return n
}

// children of pid: each of its threads lists the children it started.
func children(pid int) []string {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	out := make([]string, 0, 1)
	for _, t := range tasks {
		b, _ := os.ReadFile(t)
		out = append(out, strings.Fields(string(b))...)
	}
	return out
}

// killChild SIGKILLs the vending process and waits until PID 1 runs another.
func (p *pod) killChild() {
	p.t.Helper()
	old := p.child()
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		p.t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		select {
		case <-p.exited:
			return // gave up
		default:
		}
		if f := children(p.cmd.Process.Pid); len(f) == 1 && f[0] != strconv.Itoa(old) {
			return
		}
	}
	p.t.Fatalf("no new child after killing %d", old)
}

// waitExit waits for PID 1 to end and returns its exit code and termination message.
func (p *pod) waitExit() (int, contract.TerminationMessage) {
	p.t.Helper()
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		p.t.Fatal("PID 1 did not exit")
	}
	var msg contract.TerminationMessage
	b, err := os.ReadFile(p.termMsg)
	if err != nil || json.Unmarshal(b, &msg) != nil {
		p.t.Fatalf("termination message %q: %v", b, err)
	}
	return p.cmd.ProcessState.ExitCode(), msg
}

// A killed vending process is restarted in place: the same PID 1, the same socket, the state
// replayed from disk, and a customer hammering the socket through the kills meets no refused
// connection: they wait in the backlog PID 1 holds.
func TestWorkerCrashHealsInPlace(t *testing.T) {
	p := startPod(t)
	for i := range 5 {
		if code, err := p.do("POST", "/v1/coins", fmt.Sprintf("k%d", i), `{"count":1}`); code != 200 {
			t.Fatalf("insert: %d %v", code, err)
		}
	}
	var refused, sent, notReady atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	probed := make(chan struct{})
	go func() { // the kubelet's readiness probe, hammering: a restarting child is never seen not ready
		defer close(probed)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if code, err := p.do("GET", "/readyz", "", ""); err == nil && code != http.StatusOK {
				notReady.Add(1)
			}
		}
	}()
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			sent.Add(1)
			if _, err := p.do("GET", "/v1/state", "", ""); errors.Is(err, syscall.ECONNREFUSED) {
				refused.Add(1)
			}
		}
	}()
	for range 3 {
		p.killChild()
	}
	close(stop)
	<-done
	<-probed
	if refused.Load() > 0 {
		t.Errorf("%d of %d requests were refused during in-place restarts", refused.Load(), sent.Load())
	}
	if notReady.Load() > 0 {
		t.Errorf("%d readiness probes answered not ready during in-place restarts (the child served before its replay)",
			notReady.Load())
	}
	if code, err := p.do("POST", "/v1/coins", "k0", `{"count":1}`); code != 200 {
		t.Fatalf("keyed retry: %d %v", code, err)
	}
	var st contract.State
	resp, err := http.Get("http://" + p.addr + "/v1/state")
	if err != nil {
		t.Fatal(err)
	}
	_ = json.NewDecoder(resp.Body).Decode(&st)
	_ = resp.Body.Close()
	if st.Inserted != 5 {
		t.Fatalf("inserted = %d after 3 in-place restarts, want 5 (replayed, the retry not counted again)", st.Inserted)
	}
	select {
	case <-p.exited:
		t.Fatal("PID 1 exited")
	default:
	}
}

// The talk's OutOfCoffeeBeans heals in place: the persisted order is brewed after the restart.
func TestOutOfCoffeeBeansHealsInPlace(t *testing.T) {
	p := startPod(t)
	if code, _ := p.do("POST", "/v1/coins", "c", `{"count":2}`); code != 200 {
		t.Fatal("insert failed")
	}
	old := p.child()
	if code, _ := p.do("POST", "/v1/faults/out-of-beans", "", ""); code != http.StatusAccepted {
		t.Fatal("fault not armed")
	}
	_, _ = p.do("POST", "/v1/orders", "o", `{"beverage":"Latte"}`) // meets the crash: no answer
	code, err := p.do("POST", "/v1/orders", "o", `{"beverage":"Latte"}`)
	if code != 200 {
		t.Fatalf("the retried order: %d %v", code, err)
	}
	if p.child() == old {
		t.Fatal("the vending process was not restarted")
	}
}

// Intensity: after maxRestarts in place within the window the next failure is the operator's:
// PID 1 exits with the child's failure and the restarts it made, which the operator counts.
func TestGivesUpWhenTheWindowIsUsed(t *testing.T) {
	p := startPod(t, "--max-restarts=2")
	p.killChild()
	p.killChild()
	p.killChild()
	code, msg := p.waitExit()
	if code != 137 || msg.Reason != contract.ReasonKilled {
		t.Fatalf("exit %d %+v, want 137 Killed", code, msg)
	}
	if msg.InPlace == nil || msg.InPlace.Restarts != 2 || len(msg.InPlace.Times) != 2 || msg.InPlace.Last == nil {
		t.Fatalf("in-place history %+v, want 2 restarts", msg.InPlace)
	}
}

// One budget: the restarts the operator made before this pod count in place too.
func TestEarlierRestartsCount(t *testing.T) {
	now := time.Now().UTC()
	p := startPod(t, "--max-restarts=2", "--earlier-restarts="+
		now.Add(-2*time.Second).Format(time.RFC3339Nano)+","+now.Add(-time.Second).Format(time.RFC3339Nano))
	p.killChild()
	code, msg := p.waitExit()
	if code != 137 || msg.InPlace == nil || msg.InPlace.Restarts != 0 {
		t.Fatalf("exit %d %+v, want the first failure escalated with no restart in place", code, msg)
	}
}

// The decider means the same in place: a failure it stops on is not restarted.
func TestDeciderStops(t *testing.T) {
	p := startPod(t, "--decider=Killed=Stop")
	p.killChild()
	if code, msg := p.waitExit(); code != 137 || msg.Reason != contract.ReasonKilled {
		t.Fatalf("exit %d %+v", code, msg)
	}
}

// SIGTERM (the kubelet stopping the pod) ends the pod at once, its child with it.
func TestSIGTERMEndsThePod(t *testing.T) {
	p := startPod(t)
	child := p.child()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code, msg := p.waitExit()
	if code != contract.ExitTerminated || msg.Reason != contract.ReasonTerminated {
		t.Fatalf("exit %d %+v", code, msg)
	}
	if err := syscall.Kill(child, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("the vending process %d outlived PID 1: %v", child, err)
	}
}

// The termination message fits what the kubelet keeps, with the count exact.
func TestTerminationMessageFits(t *testing.T) {
	r := contract.InPlace{Restarts: 500, Last: &contract.InPlaceFailure{
		TerminationMessage: contract.TerminationMessage{Message: strings.Repeat("x", 5000)}}}
	for i := range contract.MaxInPlaceTimes {
		r.Times = append(r.Times, time.Unix(int64(i), 123456789))
	}
	b := fit(contract.TerminationMessage{Reason: "Killed", Message: strings.Repeat("y", 5000), InPlace: &r})
	var got contract.TerminationMessage
	if len(b) > maxTerminationMessage || json.Unmarshal(b, &got) != nil || got.InPlace.Restarts != 500 {
		t.Fatalf("%d bytes, restarts %v", len(b), got.InPlace)
	}
}
