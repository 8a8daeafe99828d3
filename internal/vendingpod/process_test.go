package vendingpod

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/testbinary"
)

// These tests run the real vendingpod binary as a child process on a temp directory: it really
// exits, is really SIGKILLed, and really recovers from disk.

var binary string

func TestMain(m *testing.M) { testbinary.Main(m, "../../cmd/vendingpod", &binary) }

// pod is one run of the binary.
type pod struct {
	t       *testing.T
	dir     string
	addr    string
	cmd     *exec.Cmd
	exited  chan struct{}
	stderr  bytes.Buffer
	termMsg string
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startPod starts the binary on dir and waits until it is ready.
func startPod(t *testing.T, dir string, args ...string) *pod {
	t.Helper()
	p := &pod{t: t, dir: dir, addr: freeAddr(t), exited: make(chan struct{}), termMsg: filepath.Join(dir, "..", "termination-log")}
	_ = os.Remove(p.termMsg)
	p.cmd = exec.Command(binary, append([]string{"--data-dir", dir, "--listen", p.addr,
		"--termination-message-path", p.termMsg}, args...)...)
	p.cmd.Stderr = &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() { p.kill() })
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			t.Fatalf("vendingpod exited before ready (code %d): %s", p.cmd.ProcessState.ExitCode(), p.stderr.String())
		default:
		}
		if resp, err := http.Get("http://" + p.addr + contract.PathReadyz); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("vendingpod not ready in 10s: %s", p.stderr.String())
	return nil
}

func (p *pod) kill() {
	if p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.exited
	}
}

// waitExit waits for the process to end on its own and returns its exit code.
func (p *pod) waitExit() int {
	select {
	case <-p.exited:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(10 * time.Second):
		p.t.Fatal("vendingpod did not exit")
		return 0
	}
}

// call sends a request and decodes the JSON answer.
func call(addr, method, path, key string, body any, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://"+addr+path, rd)
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return resp.StatusCode, err
		}
	}
	return resp.StatusCode, nil
}

func (p *pod) must(method, path, key string, body any, wantStatus int, out any) {
	p.t.Helper()
	code, err := call(p.addr, method, path, key, body, out)
	if err != nil || code != wantStatus {
		p.t.Fatalf("%s %s: status %d err %v, want %d", method, path, code, err, wantStatus)
	}
}

func (p *pod) state() contract.State {
	var st contract.State
	p.must("GET", "/v1/state", "", nil, 200, &st)
	return st
}

// The talk's three tests, with a real crash in the third.
func TestTalkScenarios(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	p := startPod(t, dir, "--enable-faults")

	// 1. Happy path: insert 2 coins and get an Espresso.
	var ord orderResponse
	p.must("POST", "/v1/coins", "", coinsRequest{Count: 2}, 200, nil)
	p.must("POST", "/v1/orders", "", orderRequest{Beverage: "Espresso"}, 200, &ord)
	if ord.Beverage != "Espresso" || ord.Status != "dispensed" {
		t.Fatalf("happy path: %+v", ord)
	}

	// 2. User error: 1 coin is not enough for a Latte; nothing changes.
	var apiErr apiError
	p.must("POST", "/v1/coins", "", coinsRequest{Count: 1}, 200, nil)
	before := p.state()
	p.must("POST", "/v1/orders", "", orderRequest{Beverage: "Latte"}, http.StatusPaymentRequired, &apiErr)
	if apiErr.Error != "NotEnoughCoins" || apiErr.Message != "Please insert [1] coins" {
		t.Fatalf("user error: %+v", apiErr)
	}
	if after := p.state(); after.Sequence != before.Sequence || after.Inserted != 1 {
		t.Fatalf("a rejected order changed the state: %+v -> %+v", before, after)
	}

	// 3. System failure: 1 more coin, out of beans, Latte: the process dies with its failure code
	// and a termination message naming the pending order.
	p.must("POST", "/v1/coins", "", coinsRequest{Count: 1}, 200, nil)
	p.must("POST", "/v1/faults/out-of-beans", "", nil, http.StatusAccepted, nil)
	if _, err := call(p.addr, "POST", "/v1/orders", "latte-1", orderRequest{Beverage: "Latte"}, nil); err == nil {
		t.Fatal("the order with an empty hopper got an answer; want the process to die")
	}
	if code := p.waitExit(); code != contract.ExitOutOfCoffeeBeans {
		t.Fatalf("exit code %d, want %d", code, contract.ExitOutOfCoffeeBeans)
	}
	var tm contract.TerminationMessage
	raw, err := os.ReadFile(p.termMsg)
	if err != nil || json.Unmarshal(raw, &tm) != nil {
		t.Fatalf("termination message: %v %q", err, raw)
	}
	if tm.Reason != contract.ReasonOutOfCoffeeBeans || tm.PendingOrder == "" {
		t.Fatalf("termination message: %+v", tm)
	}

	// The supervisor restarts it on the same log: the order completes, and the customer's retry
	// with the same key gets the Latte.
	p = startPod(t, dir, "--enable-faults")
	start := time.Now()
	p.must("POST", "/v1/orders", "latte-1", orderRequest{Beverage: "Latte"}, 200, &ord)
	if ord.Beverage != "Latte" || ord.Status != "dispensed" || ord.OrderID != tm.PendingOrder {
		t.Fatalf("after restart: %+v, want the pending order %s dispensed", ord, tm.PendingOrder)
	}
	t.Logf("Latte after restart in %v", time.Since(start))
	var byID orderResponse
	p.must("GET", "/v1/orders/"+tm.PendingOrder, "", nil, 200, &byID)
	if byID != ord {
		t.Fatalf("GET order %+v, want %+v", byID, ord)
	}
	st := p.state()
	if st.TotalCoins != 4 || st.Dispensed["Latte"] != 1 || st.Dispensed["Espresso"] != 1 || st.Beans <= 0 {
		t.Fatalf("state after recovery: %+v", st)
	}
}

// request is one customer request with its idempotency key and its first answer.
type request struct {
	key      string
	coins    int64  // > 0: an insert
	beverage string // else an order
	status   int
	answer   []byte
}

// Customers insert coins and order with idempotency keys while the process is SIGKILLed at
// random moments and restarted. Afterwards every acknowledged coin is in the state, no order is
// dispensed twice, and retried requests still get their first answers.
func TestCrashConsistencyUnderSIGKILL(t *testing.T) {
	const customers, rounds = 8, 12
	dir := filepath.Join(t.TempDir(), "data")
	var (
		mu  sync.Mutex
		cur *pod
	)
	setPod := func(p *pod) { mu.Lock(); cur = p; mu.Unlock() }
	getPod := func() *pod { mu.Lock(); defer mu.Unlock(); return cur }

	p := startPod(t, dir, "--snapshot-every", "50", "--beans", "1000000", "--milk", "1000000")
	setPod(p)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	done := make([][]*request, customers)
	for c := 0; c < customers; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 7))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				r := &request{key: fmt.Sprintf("c%d-%d", c, i)}
				if i%3 == 2 {
					r.beverage = []string{"BlackCoffee", "Espresso", "Latte"}[rng.IntN(3)]
				} else {
					r.coins = int64(1 + rng.IntN(3))
				}
				// Retry with the same key until the machine answers: through kills and restarts.
				for giveUp := time.Now().Add(30 * time.Second); ; {
					if time.Now().After(giveUp) {
						p := getPod()
						t.Errorf("%s: no answer in 30s; pod exited=%v stderr:\n%s", r.key, p.cmd.ProcessState, p.stderr.String())
						return
					}
					path, body := "/v1/coins", any(coinsRequest{Count: r.coins})
					if r.coins == 0 {
						path, body = "/v1/orders", orderRequest{Beverage: r.beverage}
					}
					var raw json.RawMessage
					code, err := call(getPod().addr, "POST", path, r.key, body, &raw)
					if err == nil && code != http.StatusServiceUnavailable {
						r.status, r.answer = code, raw
						break
					}
					time.Sleep(10 * time.Millisecond)
				}
				done[c] = append(done[c], r)
			}
		}(c)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < rounds; round++ {
		time.Sleep(time.Duration(50+rng.IntN(250)) * time.Millisecond)
		p.kill()
		p = startPod(t, dir, "--snapshot-every", "50", "--beans", "1000000", "--milk", "1000000")
		setPod(p)
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	if t.Failed() {
		return
	}

	// Check with a fresh process, after one more kill.
	p.kill()
	p = startPod(t, dir, "--beans", "1000000", "--milk", "1000000")
	st := p.state()
	var coins, change, paid int64
	dispensed := 0
	total := 0
	for _, reqs := range done {
		for _, r := range reqs {
			total++
			// A retry with the same key returns the first answer, byte for byte.
			var raw json.RawMessage
			path, body := "/v1/coins", any(coinsRequest{Count: r.coins})
			if r.coins == 0 {
				path, body = "/v1/orders", orderRequest{Beverage: r.beverage}
			}
			code, err := call(p.addr, "POST", path, r.key, body, &raw)
			if err != nil || code != r.status || (code == 200 && !bytes.Equal(canon(t, raw), canon(t, r.answer))) {
				t.Fatalf("retry of %s: %d %s, first answer %d %s (err %v)", r.key, code, raw, r.status, r.answer, err)
			}
			switch {
			case r.coins > 0 && r.status == 200:
				coins += r.coins
			case r.coins == 0 && r.status == 200:
				var o orderResponse
				_ = json.Unmarshal(r.answer, &o)
				change += o.Change
				paid += o.Price
				dispensed++
			}
		}
	}
	var sum int64
	for _, n := range st.Dispensed {
		sum += int64(n)
	}
	t.Logf("%d requests over %d kills: %d coins acknowledged, %d orders dispensed, log at sequence %d",
		total, rounds+1, coins, dispensed, st.Sequence)
	if st.TotalCoins != coins-change {
		t.Errorf("totalCoins %d, want acknowledged coins %d less change %d", st.TotalCoins, coins, change)
	}
	if st.Inserted != coins-change-paid {
		t.Errorf("inserted %d, want %d", st.Inserted, coins-change-paid)
	}
	if sum != int64(dispensed) || len(st.Pending) != 0 {
		t.Errorf("dispensed %d beverages (%v), acknowledged %d orders; pending %v", sum, st.Dispensed, dispensed, st.Pending)
	}
	if total < 50 || dispensed == 0 {
		t.Errorf("too little traffic to mean anything: %d requests, %d orders", total, dispensed)
	}
}

func canon(t *testing.T, raw []byte) []byte {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("answer %q: %v", raw, err)
	}
	b, _ := json.Marshal(v)
	return b
}

// A bit flip in the middle of the log: the process refuses to serve, exits with the corrupt-log
// code, names the file and the offset, and leaves the bytes as they were.
func TestCorruptLogRefusesToStart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	p := startPod(t, dir)
	for i := 0; i < 20; i++ {
		p.must("POST", "/v1/coins", "", coinsRequest{Count: 1}, 200, nil)
	}
	p.kill()
	seg := filepath.Join(dir, fmt.Sprintf("%016x.log", 1))
	data, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x01
	if err := os.WriteFile(seg, data, 0o600); err != nil {
		t.Fatal(err)
	}

	term := filepath.Join(filepath.Dir(dir), "termination-log")
	cmd := exec.Command(binary, "--data-dir", dir, "--listen", freeAddr(t), "--termination-message-path", term)
	err = cmd.Run()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != contract.ExitCorruptLog {
		t.Fatalf("start on a corrupt log: %v, want exit %d", err, contract.ExitCorruptLog)
	}
	var tm contract.TerminationMessage
	raw, _ := os.ReadFile(term)
	if err := json.Unmarshal(raw, &tm); err != nil {
		t.Fatalf("termination message %q: %v", raw, err)
	}
	if tm.Reason != contract.ReasonCorruptLog || tm.File != seg || tm.Offset <= 0 || tm.Offset > int64(len(data)/2) {
		t.Fatalf("termination message %+v, want CorruptLog in %s before offset %d", tm, seg, len(data)/2)
	}
	if tm.Sequence == 0 || tm.Sequence >= 20 {
		t.Fatalf("termination message %+v: want the last sequence replayed before the damage (1..19)", tm)
	}
	after, _ := os.ReadFile(seg)
	if !bytes.Equal(after, data) {
		t.Fatal("the corrupt log was changed")
	}
	t.Logf("refused: %s", tm.Message)
}

// Two processes never write one log: a second one waits for the lock (a predecessor may still
// be dying), then exits LogLocked; once the first dies within the wait, the second takes over.
func TestLockedLogWaitsThenExits(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	first := startPod(t, dir)
	first.must("POST", "/v1/coins", "k1", coinsRequest{Count: 3}, 200, nil)

	term := filepath.Join(t.TempDir(), "termination-log")
	start := time.Now()
	err := exec.Command(binary, "--data-dir", dir, "--listen", freeAddr(t), "--termination-message-path", term,
		"--lock-wait", "500ms").Run()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != contract.ExitLogLocked {
		t.Fatalf("second writer: %v, want exit %d", err, contract.ExitLogLocked)
	}
	if waited := time.Since(start); waited < 500*time.Millisecond {
		t.Fatalf("gave up after %v, before --lock-wait", waited)
	}
	var tm contract.TerminationMessage
	raw, _ := os.ReadFile(term)
	if err := json.Unmarshal(raw, &tm); err != nil || tm.Reason != contract.ReasonLogLocked {
		t.Fatalf("termination message %q (%v), want LogLocked", raw, err)
	}

	go func() { time.Sleep(300 * time.Millisecond); first.kill() }()
	second := startPod(t, dir, "--lock-wait", "10s")
	if st := second.state(); st.TotalCoins != 3 {
		t.Fatalf("the successor sees %d coins, want 3", st.TotalCoins)
	}
}
