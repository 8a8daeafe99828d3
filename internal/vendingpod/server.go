package vendingpod

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/eventlog"
	"github.com/vendingfleet/vending-operator/internal/vending"
)

// maxBodyBytes bounds a request body: every request of this API fits in a few dozen bytes.
const maxBodyBytes = 4 << 10

// maxEventsPage bounds one page of GET /v1/events.
const maxEventsPage = 1000

// maxEventReaders bounds the GET /v1/events requests reading the log at once. Each streams
// through a small window (memory is bounded per reader), but scans up to a segment of CPU and
// I/O outside the mailbox: beyond this, readers are told to come back (503 Busy).
const maxEventReaders = 4

// server is the HTTP shell around the writer.
type server struct {
	mailbox      chan command
	eventReaders chan struct{} // a slot per GET /v1/events in progress
	log          *eventlog.Log
	menu         map[string]int
	enableFaults bool
	ready        atomic.Bool
	requests     *prometheus.CounterVec
	now          func() time.Time
}

// apiError is the body of every error reply.
type apiError struct {
	Error   string `json:"error"`
	Message string `json:"message"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, reason, format string, args ...any) {
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, status, apiError{Error: reason, Message: fmt.Sprintf(format, args...)})
}

// rejectionStatus maps the machine's validation errors to HTTP statuses.
var rejectionStatus = map[string]int{
	vending.RejectNotEnoughCoins:  http.StatusPaymentRequired,
	vending.RejectUnknownBeverage: http.StatusBadRequest,
	vending.RejectOutOfMilk:       http.StatusConflict,
	vending.RejectBadCount:        http.StatusBadRequest,
	vending.RejectKeyReused:       http.StatusUnprocessableEntity,
	vending.RejectBadKey:          http.StatusBadRequest,
	vending.RejectUnknownOrder:    http.StatusNotFound,
	vending.RejectOrderExpired:    http.StatusGone,
}

// methodOf names the method of each fixed path, for 405 answers.
var methodOf = map[string]string{
	"/v1/coins": http.MethodPost, "/v1/orders": http.MethodPost, "/v1/state": http.MethodGet,
	"/v1/events": http.MethodGet, "/v1/refill": http.MethodPost, "/v1/faults/out-of-beans": http.MethodPost,
}

func (s *server) routes(metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/coins", s.instrument("coins", s.postCoins))
	mux.HandleFunc("POST /v1/orders", s.instrument("orders", s.postOrder))
	mux.HandleFunc("GET /v1/orders/{id}", s.instrument("order", s.getOrder))
	mux.HandleFunc("GET /v1/state", s.instrument("state", s.getState))
	mux.HandleFunc("GET /v1/events", s.instrument("events", s.getEvents))
	mux.HandleFunc("POST /v1/refill", s.instrument("refill", s.postRefill))
	mux.HandleFunc("POST /v1/faults/out-of-beans", s.instrument("fault", s.postOutOfBeans))
	mux.HandleFunc("GET "+contract.PathHealthz, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "alive"})
	})
	mux.HandleFunc("GET "+contract.PathReadyz, func(w http.ResponseWriter, _ *http.Request) {
		if !s.ready.Load() {
			writeError(w, http.StatusServiceUnavailable, "NotReady", "replaying the event log")
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.Handle("GET /metrics", metrics)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if allow, ok := methodOf[r.URL.Path]; ok {
			w.Header().Set("Allow", allow)
			writeError(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "%s %s: use %s", r.Method, r.URL.Path, allow)
			return
		}
		writeError(w, http.StatusNotFound, "NotFound", "no route for %s %s", r.Method, r.URL.Path)
	})
	return mux
}

// statusRecorder remembers the status a handler wrote, for the requests metric.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (s *server) instrument(route string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		h(rec, r)
		s.requests.WithLabelValues(route, strconv.Itoa(rec.status)).Inc()
	}
}

// decodeBody decodes exactly one JSON object with known fields, within the size limit.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("more than one JSON value")
	}
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			err = errors.New("trailing data after the JSON object")
		}
	}
	var tooBig *http.MaxBytesError
	switch {
	case err == nil:
		return true
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, "RequestTooLarge", "body is larger than %d bytes", maxBodyBytes)
	default:
		writeError(w, http.StatusBadRequest, "MalformedRequest", "%v", err)
	}
	return false
}

// deadline reads the Request-Timeout header: a Go duration ("500ms") or whole seconds.
func deadline(r *http.Request, now time.Time) (time.Time, error) {
	v := r.Header.Get("Request-Timeout")
	if v == "" {
		return time.Time{}, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		secs, serr := strconv.Atoi(v)
		if serr != nil {
			return time.Time{}, fmt.Errorf("Request-Timeout %q is neither a duration nor seconds", v)
		}
		d = time.Duration(secs) * time.Second
	}
	if d <= 0 {
		return time.Time{}, fmt.Errorf("Request-Timeout %q must be positive", v)
	}
	return now.Add(d), nil
}

// send puts a command in the mailbox and waits for the writer's durable answer. A full mailbox
// answers No at once (503 + Retry-After): back pressure instead of an unbounded queue.
func (s *server) send(w http.ResponseWriter, r *http.Request, c command) (reply, bool) {
	if !s.ready.Load() {
		writeError(w, http.StatusServiceUnavailable, "NotReady", "replaying the event log")
		return reply{}, false
	}
	dl, err := deadline(r, s.now())
	if err != nil {
		writeError(w, http.StatusBadRequest, "InvalidRequestTimeout", "%v", err)
		return reply{}, false
	}
	c.deadline = dl
	c.key = r.Header.Get("Idempotency-Key")
	c.reply = make(chan reply, 1)
	select {
	case s.mailbox <- c:
	default:
		writeError(w, http.StatusServiceUnavailable, "Busy", "the machine's mailbox is full; retry later")
		return reply{}, false
	}
	// The command is in the mailbox and will run: wait for its answer even if the client goes
	// away, so that the answer is consistent with what happened (a retry with the same key
	// gets it).
	rep := <-c.reply
	if rep.err != nil {
		var rej *vending.Rejection
		switch {
		case errors.As(rep.err, &rej):
			writeError(w, rejectionStatus[rej.Reason], rej.Reason, "%s", rej.Message)
		case errors.Is(rep.err, errDeadline):
			writeError(w, http.StatusServiceUnavailable, "DeadlineExceeded",
				"the request's deadline passed before the machine got to it; nothing was done")
		default:
			writeError(w, http.StatusInternalServerError, "InternalError", "%v", rep.err)
		}
		return reply{}, false
	}
	return rep, true
}

type coinsRequest struct {
	Count int64 `json:"count"`
}

type coinsResponse struct {
	Inserted int64  `json:"inserted"`
	Sequence uint64 `json:"sequence"`
}

func (s *server) postCoins(w http.ResponseWriter, r *http.Request) {
	var req coinsRequest
	if !decodeBody(w, r, &req) {
		return
	}
	rep, ok := s.send(w, r, command{kind: cmdCoins, count: req.Count})
	if ok {
		writeJSON(w, http.StatusOK, coinsResponse{Inserted: rep.inserted, Sequence: rep.seq})
	}
}

type orderRequest struct {
	Beverage string `json:"beverage"`
}

type orderResponse struct {
	OrderID  string `json:"orderId"`
	Beverage string `json:"beverage"`
	Change   int64  `json:"change"`
	Price    int64  `json:"price"`
	Status   string `json:"status"`
	Sequence uint64 `json:"sequence"`
}

func toOrderResponse(o *vending.Order) orderResponse {
	return orderResponse{OrderID: o.ID, Beverage: o.Beverage, Change: o.Change, Price: o.Price,
		Status: string(o.Status), Sequence: o.Seq}
}

func (s *server) postOrder(w http.ResponseWriter, r *http.Request) {
	var req orderRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if req.Beverage == "" {
		writeError(w, http.StatusBadRequest, "MalformedRequest", "beverage is required")
		return
	}
	rep, ok := s.send(w, r, command{kind: cmdOrder, beverage: req.Beverage})
	if ok {
		writeJSON(w, http.StatusOK, toOrderResponse(rep.order))
	}
}

func (s *server) getOrder(w http.ResponseWriter, r *http.Request) {
	rep, ok := s.send(w, r, command{kind: cmdGetOrder, orderID: r.PathValue("id")})
	if ok {
		writeJSON(w, http.StatusOK, toOrderResponse(rep.order))
	}
}

func (s *server) stateJSON(v *stateView) contract.State {
	st := contract.State{
		Inserted: v.inserted, TotalCoins: v.totalCoins, Beans: v.beans, Milk: v.milk,
		Degraded: v.degraded, Sequence: v.seq, Menu: s.menu, Dispensed: map[string]int{}, Pending: v.pending,
	}
	for k, n := range v.dispensed {
		st.Dispensed[k] = int(n)
	}
	if st.Pending == nil {
		st.Pending = []string{}
	}
	return st
}

func (s *server) getState(w http.ResponseWriter, r *http.Request) {
	rep, ok := s.send(w, r, command{kind: cmdState})
	if ok {
		writeJSON(w, http.StatusOK, s.stateJSON(rep.state))
	}
}

func (s *server) postRefill(w http.ResponseWriter, r *http.Request) {
	rep, ok := s.send(w, r, command{kind: cmdRefill})
	if ok {
		writeJSON(w, http.StatusOK, s.stateJSON(rep.state))
	}
}

func (s *server) postOutOfBeans(w http.ResponseWriter, r *http.Request) {
	if !s.enableFaults {
		writeError(w, http.StatusNotFound, "NotFound", "fault injection is off (start with --enable-faults)")
		return
	}
	rep, ok := s.send(w, r, command{kind: cmdOutOfBeans})
	if ok {
		writeJSON(w, http.StatusAccepted, map[string]any{"armed": "OutOfCoffeeBeans", "sequence": rep.seq})
	}
}

func (s *server) getEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	after, limit := uint64(0), 100
	var err error
	if v := q.Get("after"); v != "" {
		if after, err = strconv.ParseUint(v, 10, 64); err != nil {
			writeError(w, http.StatusBadRequest, "MalformedRequest", "after must be a sequence number")
			return
		}
	}
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > maxEventsPage {
			writeError(w, http.StatusBadRequest, "MalformedRequest", "limit must be between 1 and %d", maxEventsPage)
			return
		}
	}
	select {
	case s.eventReaders <- struct{}{}:
		defer func() { <-s.eventReaders }()
	default:
		writeError(w, http.StatusServiceUnavailable, "Busy", "%d event reads are in progress; retry later", cap(s.eventReaders))
		return
	}
	recs, err := s.log.Read(after, limit)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "InternalError", "%v", err)
		return
	}
	out := make([]contract.Event, 0, len(recs))
	for _, rec := range recs {
		e, err := vending.DecodeEvent(rec.Payload)
		if err != nil {
			writeError(w, http.StatusInternalServerError, "InternalError", "event %d: %v", rec.Seq, err)
			return
		}
		out = append(out, e.View(rec.Seq))
	}
	next := after
	if len(out) > 0 {
		next = out[len(out)-1].Sequence
	}
	writeJSON(w, http.StatusOK, map[string]any{"events": out, "next": next})
}

// menuString renders a menu for logs.
func menuString(menu map[string]vending.Item) string {
	parts := make([]string, 0, len(menu))
	for name, it := range menu {
		p := fmt.Sprintf("%s=%d", name, it.Price)
		if it.UsesMilk {
			p += ":milk"
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ",")
}
