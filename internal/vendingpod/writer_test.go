package vendingpod

import (
	"encoding/json"
	"net/http"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vendingfleet/vending-operator/internal/eventlog"
	"github.com/vendingfleet/vending-operator/internal/vending"
)

// gateFS is the real file system whose fdatasyncs, once armed, wait for the test: records stay
// submitted but not durable for as long as the test wants.
type gateFS struct {
	eventlog.OSFS
	armed   atomic.Bool
	entered chan struct{} // a sync is waiting
	release chan struct{} // let one sync through
}

type gateFile struct {
	eventlog.File
	fs *gateFS
}

func (f gateFile) Sync() error {
	if f.fs.armed.Load() {
		f.fs.entered <- struct{}{}
		<-f.fs.release
	}
	return f.File.Sync()
}

func (g *gateFS) OpenFile(name string, flag int, perm os.FileMode) (eventlog.File, error) {
	f, err := g.OSFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return gateFile{f, g}, nil
}

// startWriter runs a writer with an unbuffered mailbox on a fresh log: a send returns only
// once the writer took the command, which lets tests order what happens without sleeping.
func startWriter(t *testing.T, fs eventlog.FS, now func() time.Time) (*writer, *eventlog.Log, chan command) {
	t.Helper()
	m := vending.New(vending.DefaultConfig())
	l, _, err := eventlog.Open(t.TempDir(), eventlog.Options{FS: fs}, replayer{m})
	if err != nil {
		t.Fatal(err)
	}
	w := &writer{m: m, log: l, now: now, acks: make(chan ack, 16),
		fail: func(f Failure) { t.Errorf("writer failed: %+v", f); select {} }}
	mailbox := make(chan command)
	go w.acknowledger()
	go w.run(mailbox)
	t.Cleanup(func() { close(mailbox) })
	return w, l, mailbox
}

// Defect 2: GET /v1/state reports only durable state. Coins are submitted and their fdatasync
// held back; a state read sent meanwhile must not be answered until the coins are durable, and
// what it reports then is durable.
func TestStateReportsOnlyDurableState(t *testing.T) {
	fs := &gateFS{entered: make(chan struct{}), release: make(chan struct{})}
	_, l, mailbox := startWriter(t, fs, time.Now)
	fs.armed.Store(true)

	coins := command{kind: cmdCoins, count: 3, reply: make(chan reply, 1)}
	mailbox <- coins
	<-fs.entered // the coins' group commit is in its fdatasync, not durable yet
	state := command{kind: cmdState, reply: make(chan reply, 1)}
	mailbox <- state
	// The writer is done with the state command once it takes the next one.
	mailbox <- command{kind: cmdState, reply: make(chan reply, 1)}
	select {
	case r := <-state.reply:
		t.Fatalf("state answered with %d coins at sequence %d while only sequence %d is durable",
			r.state.totalCoins, r.state.seq, l.Durable())
	default:
	}
	fs.armed.Store(false)
	close(fs.release)
	r := <-state.reply
	if r.state.totalCoins != 3 || r.state.seq != 1 || l.Durable() < r.state.seq {
		t.Fatalf("state %+v, durable %d", r.state, l.Durable())
	}
	if c := <-coins.reply; c.err != nil || c.inserted != 3 {
		t.Fatalf("coins: %+v", c)
	}
}

// Defect 7: a keyed retry of a request that was done gets the recorded answer even when its
// Request-Timeout has passed before the writer got to it; only new work is refused late.
func TestLateRetryOfDoneRequestGetsItsAnswer(t *testing.T) {
	var late atomic.Bool // the writer's clock jumps an hour ahead: every deadline has passed
	now := func() time.Time {
		if late.Load() {
			return time.Now().Add(time.Hour)
		}
		return time.Now()
	}
	m := vending.New(vending.DefaultConfig())
	l, _, err := eventlog.Open(t.TempDir(), eventlog.Options{}, replayer{m})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	mailbox := make(chan command, 1)
	w := &writer{m: m, log: l, acks: make(chan ack, 1), now: now}
	go w.acknowledger()
	go w.run(mailbox)
	defer close(mailbox)
	h := newTestServer(mailbox).routes(http.NotFoundHandler())

	first, _ := do(t, h, "POST", "/v1/coins", `{"count":2}`, map[string]string{"Idempotency-Key": "k1"})
	firstOrder, _ := do(t, h, "POST", "/v1/orders", `{"beverage":"Espresso"}`, map[string]string{"Idempotency-Key": "o1"})
	if first.Code != 200 || firstOrder.Code != 200 {
		t.Fatalf("first answers: %d %s, %d %s", first.Code, first.Body, firstOrder.Code, firstOrder.Body)
	}
	late.Store(true)
	seq := m.State().Seq
	for _, tc := range []struct{ path, body, key, want string }{
		{"/v1/coins", `{"count":2}`, "k1", first.Body.String()},
		{"/v1/orders", `{"beverage":"Espresso"}`, "o1", firstOrder.Body.String()},
	} {
		rec, e := do(t, h, "POST", tc.path, tc.body, map[string]string{"Idempotency-Key": tc.key, "Request-Timeout": "1m"})
		if rec.Code != 200 || !sameJSON(t, rec.Body.String(), tc.want) {
			t.Fatalf("late retry of %s: %d %s (%s), want the first answer %s", tc.key, rec.Code, rec.Body, e.Error, tc.want)
		}
	}
	// New work past its deadline is still refused, keyed or not, and leaves no trace.
	for _, key := range []string{"k2", ""} {
		rec, e := do(t, h, "POST", "/v1/coins", `{"count":1}`, map[string]string{"Idempotency-Key": key, "Request-Timeout": "1m"})
		if rec.Code != 503 || e.Error != "DeadlineExceeded" {
			t.Fatalf("late new request (key %q): %d %s", key, rec.Code, rec.Body)
		}
	}
	if m.State().Seq != seq {
		t.Fatalf("late requests changed the state: sequence %d, was %d", m.State().Seq, seq)
	}
}

func sameJSON(t *testing.T, a, b string) bool {
	t.Helper()
	var x, y any
	if json.Unmarshal([]byte(a), &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		t.Fatalf("not JSON: %q %q", a, b)
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return string(xa) == string(ya)
}

// Retention over HTTP: an order past the horizon answers 410 OrderExpired, by id and to a
// retry of the key that placed it; an id never issued stays 404.
func TestExpiredOrderAnswers410(t *testing.T) {
	cfg := vending.DefaultConfig()
	cfg.Retention = vending.Retention{Keys: 10, Orders: 1}
	m := vending.New(cfg)
	l, _, err := eventlog.Open(t.TempDir(), eventlog.Options{}, replayer{m})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	mailbox := make(chan command, 1)
	w := &writer{m: m, log: l, acks: make(chan ack, 1), now: time.Now}
	go w.acknowledger()
	go w.run(mailbox)
	defer close(mailbox)
	h := newTestServer(mailbox).routes(http.NotFoundHandler())
	var first orderResponse
	for i, key := range []string{"first", "second"} {
		do(t, h, "POST", "/v1/coins", `{"count":2}`, nil)
		rec, _ := do(t, h, "POST", "/v1/orders", `{"beverage":"Espresso"}`, map[string]string{"Idempotency-Key": key})
		if rec.Code != 200 {
			t.Fatalf("order %s: %d %s", key, rec.Code, rec.Body)
		}
		if i == 0 {
			_ = json.Unmarshal(rec.Body.Bytes(), &first)
		}
	}
	if rec, e := do(t, h, "GET", "/v1/orders/"+first.OrderID, "", nil); rec.Code != http.StatusGone || e.Error != vending.RejectOrderExpired {
		t.Fatalf("GET the expired order %s: %d %s", first.OrderID, rec.Code, rec.Body)
	}
	if rec, e := do(t, h, "POST", "/v1/orders", `{"beverage":"Espresso"}`, map[string]string{"Idempotency-Key": "first"}); rec.Code != http.StatusGone || e.Error != vending.RejectOrderExpired {
		t.Fatalf("retry of the expired order's key: %d %s", rec.Code, rec.Body)
	}
	if rec, e := do(t, h, "GET", "/v1/orders/o-999", "", nil); rec.Code != 404 || e.Error != vending.RejectUnknownOrder {
		t.Fatalf("GET an id never issued: %d %s", rec.Code, rec.Body)
	}
}
