// Package vendingpod is the vending machine service: one goroutine (the writer) owns the
// machine's state and its event log; HTTP handlers send it commands through a bounded mailbox
// and wait for durable answers. It is crash-only: there is no shutdown path. A failure writes
// a termination message and exits with the failure's code; the next start replays the log.
package vendingpod

import (
	"errors"
	"fmt"
	"time"

	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/eventlog"
	"github.com/vendingfleet/vending-operator/internal/vending"
)

// RecordEvent is the log record type of vending events (a vending.Event's encoding).
const RecordEvent eventlog.RecordType = 16

const recordEvent = RecordEvent

type commandKind int

const (
	cmdCoins commandKind = iota
	cmdOrder
	cmdOutOfBeans
	cmdRefill
	cmdState
	cmdGetOrder
)

// command is one request for the writer. Its reply is sent once the answer is durable.
type command struct {
	kind     commandKind
	count    int64
	beverage string
	key      string
	orderID  string
	deadline time.Time // zero: none
	reply    chan reply
}

// reply is the writer's answer. Exactly one of err or the result fields is meaningful.
type reply struct {
	err      error
	inserted int64
	seq      uint64
	order    *vending.Order
	state    *stateView
}

// stateView is a copy of the state, taken by the writer, safe to read elsewhere.
type stateView struct {
	inserted, totalCoins, beans, milk int64
	degraded                          bool
	seq                               uint64
	dispensed                         map[string]int64
	pending                           []string
}

// Errors the HTTP layer maps to answers.
var (
	errDeadline = errors.New("vendingpod: deadline exceeded before the command ran")
)

// ack is a reply waiting for its record to be durable. Records become durable in order, so
// one goroutine acknowledges them in order.
type ack struct {
	wait  func() error
	reply chan reply
	msg   reply
}

// writer owns the machine and the log.
type writer struct {
	m        *vending.Machine
	log      *eventlog.Log
	now      func() time.Time
	acks     chan ack
	snapshot func(seq uint64, data []byte) // hands a snapshot to the snapshotter; may drop it
	every    uint64                        // snapshot every this many events
	lastSnap uint64
	fail     func(f Failure) // never returns
}

// Failure is a failure of the process: it is reported and the process exits.
type Failure struct {
	Reason       string
	Message      string
	ExitCode     int
	PendingOrder string
	Sequence     uint64
	File         string
	Offset       int64
}

// submit appends an event, applies it, and returns the function that waits for durability.
func (w *writer) submit(e *vending.Event) func() error {
	seq, wait, err := w.log.Submit(recordEvent, vending.AppendEvent(nil, e))
	if err != nil {
		w.storageFailure(err)
	}
	if err := w.m.Apply(seq, e); err != nil {
		// The writer decided this event from this state: failing to apply it is a bug that must
		// not be acknowledged.
		panic(fmt.Sprintf("vendingpod: applying event %d that the machine decided: %v", seq, err))
	}
	if w.every > 0 && seq-w.lastSnap >= w.every && w.snapshot != nil {
		w.lastSnap = seq
		w.snapshot(seq, w.m.AppendSnapshot(nil))
	}
	return wait
}

// storageFailure reports the last durable sequence: the acknowledger calls it too, and the log's
// counter (unlike the machine, which only the writer goroutine may read) is safe from any goroutine.
func (w *writer) storageFailure(err error) {
	w.fail(Failure{Reason: contract.ReasonStorageFailure, Message: err.Error(), ExitCode: contract.ExitStorageFailure,
		Sequence: w.log.Durable()})
}

// waitState returns a wait for everything applied so far: a replayed idempotent answer must not
// be given before the first answer's record is durable.
func (w *writer) waitState() func() error {
	seq := w.m.State().Seq
	return func() error { return w.log.WaitDurable(seq) }
}

func (w *writer) answer(c command, wait func() error, r reply) {
	if wait == nil {
		c.reply <- r
		return
	}
	w.acks <- ack{wait: wait, reply: c.reply, msg: r}
}

// acknowledger sends replies once their records are durable; a failed wait is a storage
// failure of the process.
func (w *writer) acknowledger() {
	for a := range w.acks {
		if ackBeforeDurable { // only in the deliberately broken build (unsafe_ack.go)
			a.reply <- a.msg
		}
		if err := a.wait(); err != nil {
			w.storageFailure(err)
		}
		if !ackBeforeDurable {
			a.reply <- a.msg
		}
	}
}

// recover brings a replayed machine back into service: the supervisor's restart refills an
// empty hopper (the service guy), then every paid, undispensed order is brewed (the talk's
// postRestart). It returns once all of that is durable.
func (w *writer) recover() error {
	var wait func() error
	if w.m.NeedsRefill() {
		wait = w.submit(w.m.Refill())
	}
	for _, o := range w.m.Pending() {
		e, err := w.m.Brew(o.ID)
		if err != nil {
			return fmt.Errorf("completing pending order %s: %w", o.ID, err)
		}
		wait = w.submit(e)
	}
	if wait != nil {
		return wait()
	}
	return nil
}

// run serves the mailbox forever.
func (w *writer) run(mailbox <-chan command) {
	for c := range mailbox {
		if tooLate(c, w.now(), w.m) {
			c.reply <- reply{err: errDeadline}
			continue
		}
		w.handle(c)
	}
}

// tooLate says whether a command is refused because its deadline passed before the writer got
// to it: new work is not done late. A retry whose idempotency key is already recorded is not
// new work: it was done, and it gets the recorded answer rather than "nothing was done".
func tooLate(c command, now time.Time, m *vending.Machine) bool {
	if c.deadline.IsZero() || !now.After(c.deadline) {
		return false
	}
	retry := (c.kind == cmdCoins || c.kind == cmdOrder) && m.KnowsKey(c.key)
	return !retry
}

func (w *writer) handle(c command) {
	switch c.kind {
	case cmdCoins:
		e, res, err := w.m.InsertCoins(c.count, c.key)
		switch {
		case err != nil:
			w.answer(c, nil, reply{err: err})
		case res != nil:
			w.answer(c, w.waitState(), reply{inserted: res.Inserted, seq: res.Seq})
		default:
			wait := w.submit(e)
			w.answer(c, wait, reply{inserted: w.m.State().Inserted, seq: w.m.State().Seq})
		}
	case cmdOrder:
		w.order(c)
	case cmdOutOfBeans:
		wait := w.submit(w.m.TriggerOutOfBeans())
		w.answer(c, wait, reply{seq: w.m.State().Seq})
	case cmdRefill:
		wait := w.submit(w.m.Refill())
		w.answer(c, wait, reply{state: w.view()})
	case cmdState:
		// The state applied so far may include events whose group commit has not finished:
		// answer it only once they are durable, so nobody (the operator's status.totalCoins)
		// is told of coins a crash could still take back.
		w.answer(c, w.waitState(), reply{state: w.view()})
	case cmdGetOrder:
		o, ok := w.m.Order(c.orderID)
		if !ok && w.m.Expired(c.orderID) {
			w.answer(c, w.waitState(), reply{err: &vending.Rejection{Reason: vending.RejectOrderExpired,
				Message: fmt.Sprintf("order %s is past the retention horizon (if it existed, it was dispensed)", c.orderID)}})
			return
		}
		if !ok {
			w.answer(c, nil, reply{err: &vending.Rejection{Reason: vending.RejectUnknownOrder,
				Message: fmt.Sprintf("no order %q", c.orderID)}})
			return
		}
		cp := *o
		w.answer(c, w.waitState(), reply{order: &cp})
	}
}

// order places an order (durably, before brewing) and brews it. An empty hopper is the talk's
// OutOfCoffeeBeansFailure: once the order is durable the process dies, and the restart
// completes it.
func (w *writer) order(c command) {
	e, res, err := w.m.Select(c.beverage, c.key)
	switch {
	case err != nil && e != nil: // a keyed refusal: answered once it is recorded
		w.answer(c, w.submit(e), reply{err: err})
		return
	case err != nil && c.key != "": // maybe a retry of a refusal: answered once that is durable
		w.answer(c, w.waitState(), reply{err: err})
		return
	case err != nil:
		w.answer(c, nil, reply{err: err})
		return
	case res != nil:
		o, _ := w.m.Order(res.OrderID)
		cp := *o
		w.answer(c, w.waitState(), reply{order: &cp})
		return
	}
	placed := w.submit(e)
	brew, err := w.m.Brew(e.OrderID)
	if errors.Is(err, vending.ErrOutOfCoffeeBeans) {
		if werr := placed(); werr != nil {
			w.storageFailure(werr)
		}
		w.fail(Failure{
			Reason: contract.ReasonOutOfCoffeeBeans,
			Message: fmt.Sprintf("out of coffee beans brewing %s for order %s; "+
				"the order is persisted and completes after the restart", e.Beverage, e.OrderID),
			ExitCode:     contract.ExitOutOfCoffeeBeans,
			PendingOrder: e.OrderID,
			Sequence:     w.m.State().Seq,
		})
	}
	if err != nil {
		panic(fmt.Sprintf("vendingpod: brewing the order just placed: %v", err))
	}
	wait := w.submit(brew)
	o, _ := w.m.Order(e.OrderID)
	cp := *o
	w.answer(c, wait, reply{order: &cp})
}

func (w *writer) view() *stateView {
	st := w.m.State()
	v := &stateView{
		inserted: st.Inserted, totalCoins: st.TotalCoins, beans: st.Beans, milk: st.Milk,
		degraded: w.m.Degraded(), seq: st.Seq, dispensed: make(map[string]int64, len(st.Dispensed)),
	}
	for k, n := range st.Dispensed {
		v.dispensed[k] = n
	}
	for _, o := range w.m.Pending() {
		v.pending = append(v.pending, o.ID)
	}
	return v
}

// replayer feeds the log's snapshot and records into the machine.
type replayer struct{ m *vending.Machine }

func (r replayer) RestoreSnapshot(seq uint64, data []byte) error {
	if err := r.m.RestoreSnapshot(data); err != nil {
		return err
	}
	if got := r.m.State().Seq; got != seq {
		return fmt.Errorf("snapshot at sequence %d holds state of sequence %d", seq, got)
	}
	return nil
}

func (r replayer) ReplayRecord(rec eventlog.Record) error {
	if rec.Type != recordEvent {
		return fmt.Errorf("unexpected record type %d", rec.Type)
	}
	e, err := vending.DecodeEvent(rec.Payload)
	if err != nil {
		return err
	}
	return r.m.Apply(rec.Seq, e)
}
