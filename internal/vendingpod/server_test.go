package vendingpod

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vendingfleet/vending-operator/internal/eventlog"
	"github.com/vendingfleet/vending-operator/internal/vending"
)

// newTestServer is the HTTP shell with a mailbox nobody reads (unless a test does): it shows
// what the shell answers by itself.
func newTestServer(mailbox chan command) *server {
	s := &server{
		mailbox: mailbox, menu: map[string]int{"Espresso": 2}, now: time.Now,
		eventReaders: make(chan struct{}, maxEventReaders),
		requests:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "r"}, []string{"route", "code"}),
	}
	s.ready.Store(true)
	return s
}

func do(t *testing.T, h http.Handler, method, path, body string, header map[string]string) (*httptest.ResponseRecorder, apiError) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	for k, v := range header {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var e apiError
	_ = json.Unmarshal(rec.Body.Bytes(), &e)
	return rec, e
}

func TestBadRequestsAreRefusedWithJSON(t *testing.T) {
	h := newTestServer(make(chan command)).routes(http.NotFoundHandler())
	tests := []struct {
		name, method, path, body string
		header                   map[string]string
		status                   int
		reason                   string
	}{
		{"malformed JSON", "POST", "/v1/coins", `{"count":`, nil, 400, "MalformedRequest"},
		{"unknown field", "POST", "/v1/coins", `{"count":1,"bonus":5}`, nil, 400, "MalformedRequest"},
		{"two values", "POST", "/v1/coins", `{"count":1}{"count":1}`, nil, 400, "MalformedRequest"},
		{"wrong type", "POST", "/v1/coins", `{"count":"two"}`, nil, 400, "MalformedRequest"},
		{"body too large", "POST", "/v1/coins", `{"count":1,` + strings.Repeat(" ", maxBodyBytes) + `}`, nil, 413, "RequestTooLarge"},
		{"missing beverage", "POST", "/v1/orders", `{}`, nil, 400, "MalformedRequest"},
		{"bad timeout", "POST", "/v1/coins", `{"count":1}`, map[string]string{"Request-Timeout": "soon"}, 400, "InvalidRequestTimeout"},
		{"negative timeout", "POST", "/v1/coins", `{"count":1}`, map[string]string{"Request-Timeout": "-1s"}, 400, "InvalidRequestTimeout"},
		{"faults off", "POST", "/v1/faults/out-of-beans", ``, nil, 404, "NotFound"},
		{"wrong method", "GET", "/v1/coins", ``, nil, 405, "MethodNotAllowed"},
		{"unknown path", "GET", "/v2/coins", ``, nil, 404, "NotFound"},
		{"bad page", "GET", "/v1/events?limit=0", ``, nil, 400, "MalformedRequest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec, e := do(t, h, tt.method, tt.path, tt.body, tt.header)
			if rec.Code != tt.status || e.Error != tt.reason || e.Message == "" {
				t.Fatalf("%d %s, want %d %s", rec.Code, rec.Body, tt.status, tt.reason)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Fatalf("content type %q", ct)
			}
		})
	}
}

// A full mailbox answers No at once, with Retry-After: back pressure, not an unbounded queue.
func TestFullMailboxAnswers503(t *testing.T) {
	h := newTestServer(make(chan command)).routes(http.NotFoundHandler()) // unbuffered, unread: always full
	rec, e := do(t, h, "POST", "/v1/coins", `{"count":1}`, nil)
	if rec.Code != 503 || e.Error != "Busy" || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("%d %s %v", rec.Code, rec.Body, rec.Header())
	}
}

func TestNotReadyAnswers503(t *testing.T) {
	s := newTestServer(make(chan command, 1))
	s.ready.Store(false)
	h := s.routes(http.NotFoundHandler())
	for _, path := range []string{"/readyz", "/v1/state"} {
		if rec, e := do(t, h, "GET", path, "", nil); rec.Code != 503 || e.Error != "NotReady" {
			t.Fatalf("%s: %d %s", path, rec.Code, rec.Body)
		}
	}
	if rec, _ := do(t, h, "GET", "/healthz", "", nil); rec.Code != 200 {
		t.Fatalf("healthz while replaying: %d", rec.Code)
	}
}

// Expired work is refused, not done late: the writer checks the deadline before it acts.
func TestExpiredDeadlineIsRefused(t *testing.T) {
	l, _, err := eventlog.Open(t.TempDir(), eventlog.Options{}, replayer{vending.New(vending.DefaultConfig())})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	mailbox := make(chan command, 1)
	m := vending.New(vending.DefaultConfig())
	// The writer's clock is an hour ahead of the shell's: every deadline has passed when it looks.
	w := &writer{m: m, log: l, acks: make(chan ack, 1), now: func() time.Time { return time.Now().Add(time.Hour) }}
	go w.acknowledger()
	go w.run(mailbox)
	h := newTestServer(mailbox).routes(http.NotFoundHandler())
	rec, e := do(t, h, "POST", "/v1/coins", `{"count":1}`, map[string]string{"Request-Timeout": "1m"})
	if rec.Code != 503 || e.Error != "DeadlineExceeded" {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	// Without a deadline the same request is done, and the refused one left no trace.
	rec, _ = do(t, h, "POST", "/v1/coins", `{"count":1}`, nil)
	if rec.Code != 200 || m.State().Seq != 1 || m.State().Inserted != 1 {
		t.Fatalf("%d %s, state %+v", rec.Code, rec.Body, m.State())
	}
	close(mailbox)
}

func TestParseMenu(t *testing.T) {
	m, err := ParseMenu("BlackCoffee=2, Latte=3:milk")
	if err != nil || len(m) != 2 || m["Latte"].Price != 3 || !m["Latte"].UsesMilk || m["BlackCoffee"].UsesMilk {
		t.Fatalf("%v %v", m, err)
	}
	for _, bad := range []string{"", "Latte", "Latte=0", "Latte=x", "Latte=2:sugar", "A=1,A=2", "=2"} {
		if _, err := ParseMenu(bad); err == nil {
			t.Errorf("ParseMenu(%q) accepted", bad)
		}
	}
}

// FuzzRequestDecoding: whatever the body, the shell answers with a status and JSON, and never
// hands the writer a command with an invalid count type.
func FuzzRequestDecoding(f *testing.F) {
	for _, s := range []string{`{"count":2}`, `{"beverage":"Latte"}`, `{"count":1e400}`, `[]`, `null`, `{"count":2}x`, "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		mailbox := make(chan command, 1)
		h := newTestServer(mailbox).routes(http.NotFoundHandler())
		go func() {
			for c := range mailbox {
				c.reply <- reply{order: nil, err: errDeadline}
			}
		}()
		for _, path := range []string{"/v1/coins", "/v1/orders"} {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("POST", path, strings.NewReader(body)))
			if rec.Code < 200 || rec.Code > 599 || !json.Valid(rec.Body.Bytes()) {
				t.Fatalf("%s %q: %d %q", path, body, rec.Code, rec.Body)
			}
		}
		close(mailbox)
	})
}
