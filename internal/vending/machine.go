// Package vending is the pure vending machine of the talk's demo: commands become events (or a
// rejection, or a failure), events become state. It does no I/O and reads no clock; the event
// log and the HTTP server are shells around it. The coin ledger and the pending orders are the
// error kernel: everything that can go wrong (brewing) is decided here, but happens outside.
package vending

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// MaxCoinsPerInsert bounds one insert: a real coin slot takes a handful at a time, and an
// absurd count is a client bug, not money.
const MaxCoinsPerInsert = 100

// MaxKeyLength bounds an idempotency key.
const MaxKeyLength = 128

// Item is one beverage on the menu.
type Item struct {
	Price    int64
	UsesMilk bool
}

// Config is what the machine sells and what a full machine holds.
type Config struct {
	Menu         map[string]Item
	BeanCapacity int64
	MilkCapacity int64
	Retention    Retention
}

// Retention bounds what the machine remembers of finished work, so that its state, its
// snapshots and its replay stay bounded however long it serves. It is counted in events, never
// in wall-clock time: eviction happens inside Apply, in sequence order, so a replay of the same
// log with the same retention rebuilds exactly the state the live machine had. Pending orders
// are never evicted. Zero keeps everything (the behaviour before retention existed).
type Retention struct {
	// Keys is how many idempotency keys are remembered: the most recently recorded ones. A
	// retry with a key older than that runs as a new request.
	Keys int
	// Orders is how many dispensed orders are remembered: the most recently dispensed ones.
	// An older order id answers OrderExpired, not UnknownOrder.
	Orders int
}

// DefaultRetention keeps the last 100,000 keys and dispensed orders: days of a busy machine,
// for about 37 MiB of heap and a 6 MiB snapshot whatever the machine served (BENCHMARKS.md,
// 10M keyed requests), well inside the pod's 256 MiB memory limit.
var DefaultRetention = Retention{Keys: 100_000, Orders: 100_000}

// DefaultConfig is the talk's machine: three beverages at 2 coins.
func DefaultConfig() Config {
	return Config{
		Menu: map[string]Item{
			"BlackCoffee": {Price: 2},
			"Latte":       {Price: 2, UsesMilk: true},
			"Espresso":    {Price: 2},
		},
		BeanCapacity: 100,
		MilkCapacity: 50,
	}
}

// Validate reports a config the machine cannot run with.
func (c Config) Validate() error {
	if len(c.Menu) == 0 {
		return errors.New("vending: empty menu")
	}
	for name, it := range c.Menu {
		if name == "" || it.Price <= 0 {
			return fmt.Errorf("vending: menu item %q: price must be > 0", name)
		}
	}
	if c.BeanCapacity <= 0 || c.MilkCapacity < 0 {
		return errors.New("vending: bean capacity must be > 0 and milk capacity >= 0")
	}
	if c.Retention.Keys < 0 || c.Retention.Orders < 0 {
		return errors.New("vending: retention counts must be >= 0 (0: keep everything)")
	}
	return nil
}

// Rejection is a validation error: it goes back to the client, changes nothing and is never a
// failure of the machine.
type Rejection struct {
	Reason  string // NotEnoughCoins, UnknownBeverage, OutOfMilk, ...
	Message string
}

func (r *Rejection) Error() string { return "vending: " + r.Reason + ": " + r.Message }

// Rejection reasons.
const (
	RejectNotEnoughCoins  = "NotEnoughCoins"
	RejectUnknownBeverage = "UnknownBeverage"
	RejectOutOfMilk       = "OutOfMilk"
	RejectBadCount        = "InvalidCount"
	RejectKeyReused       = "IdempotencyKeyReused"
	RejectBadKey          = "InvalidIdempotencyKey"
	RejectUnknownOrder    = "UnknownOrder"
	// RejectOrderExpired: the order was dispensed and is past the retention horizon; the
	// machine no longer knows its details. It is not "unknown": something was done.
	RejectOrderExpired = "OrderExpired"
)

func reject(reason, format string, args ...any) *Rejection {
	return &Rejection{Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// ErrOutOfCoffeeBeans is a failure, not a rejection: a brew found the hopper empty. The order
// is already persisted; the process dies and its supervisor's restart refills the beans.
var ErrOutOfCoffeeBeans = errors.New("vending: out of coffee beans")

// OrderStatus is where an order is.
type OrderStatus string

// Order statuses.
const (
	OrderPending   OrderStatus = "pending"
	OrderDispensed OrderStatus = "dispensed"
)

// Order is one paid selection.
type Order struct {
	ID       string
	Beverage string
	Price    int64
	Change   int64
	UsesMilk bool
	Status   OrderStatus
	Seq      uint64 // sequence of the OrderPlaced event
	DoneSeq  uint64 // sequence of the BeverageDispensed event (0: pending): retention's order
}

// keyRecord is what an idempotency key did the first time, so that a retry returns it.
type keyRecord struct {
	Kind     Kind
	Count    int64  // CoinsInserted: the request's count (to detect reuse with another body)
	Inserted int64  // CoinsInserted: coins inserted after it
	Seq      uint64 // the event's sequence
	OrderID  string // OrderPlaced
	Beverage string // OrderPlaced, OrderRejected: what was asked for; OrderRejected: the answer
	Reason   string
	Message  string
}

// State is everything the log's events add up to.
type State struct {
	Seq        uint64 // sequence of the last applied event
	Inserted   int64  // coins inserted toward the next order
	TotalCoins int64  // coins in the machine: kept for orders plus inserted, less change given
	Beans      int64
	Milk       int64
	Orders     map[string]*Order
	Dispensed  map[string]int64
	// ExpiredThrough is the placement sequence of the newest order retention evicted: an order
	// id "o-N" with N at or below it that is not in Orders has expired (or never existed; the
	// machine can no longer tell).
	ExpiredThrough uint64
	keys           map[string]keyRecord
	pending        map[string]*Order // the orders not yet dispensed: a handful, while Orders grows
}

// Machine is the state plus the config it runs with. It is not safe for concurrent use: one
// goroutine owns it (the single writer).
type Machine struct {
	cfg Config
	st  State
	// The retention queues, oldest first: keys in the order they were recorded, dispensed
	// orders in the order they were dispensed. Derived from the state (rebuilt at restore).
	keyQ, doneQ fifo
}

// New returns a full machine with no history.
func New(cfg Config) *Machine {
	return &Machine{cfg: cfg, st: State{
		Beans:     cfg.BeanCapacity,
		Milk:      cfg.MilkCapacity,
		Orders:    map[string]*Order{},
		Dispensed: map[string]int64{},
		keys:      map[string]keyRecord{},
		pending:   map[string]*Order{},
	}}
}

// Config returns the machine's config.
func (m *Machine) Config() Config { return m.cfg }

// State returns the current state. Its maps are the machine's own: read, never write.
func (m *Machine) State() *State { return &m.st }

// Degraded says the machine serves only part of its menu: it is out of milk, and still sells
// what needs none (the escalator that became stairs).
func (m *Machine) Degraded() bool {
	if m.st.Milk > 0 {
		return false
	}
	for _, it := range m.cfg.Menu {
		if it.UsesMilk {
			return true
		}
	}
	return false
}

// Pending lists the orders paid for but not dispensed, oldest first.
func (m *Machine) Pending() []*Order {
	out := make([]*Order, 0, len(m.st.pending))
	for _, o := range m.st.pending {
		out = append(out, o)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Seq < out[j].Seq })
	return out
}

// Order returns an order by id.
func (m *Machine) Order(id string) (*Order, bool) {
	o, ok := m.st.Orders[id]
	return o, ok
}

// KnowsKey says whether a non-empty idempotency key is remembered: its request was done and
// a retry gets the recorded answer.
func (m *Machine) KnowsKey(key string) bool {
	_, ok := m.st.keys[key]
	return ok && key != ""
}

// Expired says whether an order id is one retention forgot: "o-N" with N at or below the
// horizon, no longer in Orders.
func (m *Machine) Expired(id string) bool {
	if _, ok := m.st.Orders[id]; ok {
		return false
	}
	n, err := strconv.ParseUint(strings.TrimPrefix(id, "o-"), 10, 64)
	return err == nil && strings.HasPrefix(id, "o-") && n > 0 && n <= m.st.ExpiredThrough
}

// Retained returns how many idempotency keys and orders (pending or dispensed) the machine
// holds: what retention bounds.
func (m *Machine) Retained() (keys, orders int) { return len(m.st.keys), len(m.st.Orders) }

func expiredOrder(id string) *Rejection {
	return reject(RejectOrderExpired, "order %s was dispensed and is past the retention horizon; its details are no longer kept", id)
}

// KeyResult is what a replayed idempotency key returns.
type KeyResult struct {
	Inserted int64  // for InsertCoins
	Seq      uint64 // the first request's sequence
	OrderID  string // for Select
}

func validKey(key string) error {
	if len(key) > MaxKeyLength {
		return reject(RejectBadKey, "Idempotency-Key is longer than %d bytes", MaxKeyLength)
	}
	return nil
}

// InsertCoins decides Coins(n). A key already seen returns its first result and no event.
func (m *Machine) InsertCoins(count int64, key string) (*Event, *KeyResult, error) {
	if count <= 0 || count > MaxCoinsPerInsert {
		return nil, nil, reject(RejectBadCount, "count must be between 1 and %d, got %d", MaxCoinsPerInsert, count)
	}
	if err := validKey(key); err != nil {
		return nil, nil, err
	}
	if rec, ok := m.st.keys[key]; ok && key != "" {
		if rec.Kind != KindCoinsInserted || rec.Count != count {
			return nil, nil, reject(RejectKeyReused, "Idempotency-Key %q was used for another request", key)
		}
		return nil, &KeyResult{Inserted: rec.Inserted, Seq: rec.Seq}, nil
	}
	return &Event{Kind: KindCoinsInserted, Count: count, Key: key}, nil, nil
}

// Select decides Selection(beverage): with enough coins it places an order (persisted before
// brewing), otherwise it rejects with the talk's "Please insert [N] coins". A keyed refusal is
// returned with an OrderRejected event to record before answering: the key's answer is then
// that refusal for good, even once enough coins are inserted.
func (m *Machine) Select(beverage, key string) (*Event, *KeyResult, error) {
	if err := validKey(key); err != nil {
		return nil, nil, err
	}
	if rec, ok := m.st.keys[key]; ok && key != "" {
		o := m.st.Orders[rec.OrderID]
		asked := rec.Beverage
		if asked == "" && o != nil { // recorded before key records kept the beverage
			asked = o.Beverage
		}
		switch {
		case rec.Kind == KindOrderRejected && rec.Beverage == beverage:
			return nil, nil, &Rejection{Reason: rec.Reason, Message: rec.Message}
		case rec.Kind == KindOrderPlaced && o != nil && asked == beverage:
			return nil, &KeyResult{OrderID: rec.OrderID, Seq: rec.Seq}, nil
		case rec.Kind == KindOrderPlaced && o == nil && (asked == beverage || asked == ""):
			// The key is remembered, its order no longer: it was dispensed (pending orders are
			// never evicted). Say so rather than run it again or call it unknown.
			return nil, nil, expiredOrder(rec.OrderID)
		}
		return nil, nil, reject(RejectKeyReused, "Idempotency-Key %q was used for another request", key)
	}
	if rej := m.refusal(beverage); rej != nil {
		if key == "" {
			return nil, nil, rej
		}
		return &Event{Kind: KindOrderRejected, Key: key, Beverage: beverage, Reason: rej.Reason, Message: rej.Message}, nil, rej
	}
	item := m.cfg.Menu[beverage]
	seq := m.st.Seq + 1
	return &Event{
		Kind:     KindOrderPlaced,
		OrderID:  fmt.Sprintf("o-%d", seq),
		Beverage: beverage,
		Price:    item.Price,
		Change:   m.st.Inserted - item.Price,
		UsesMilk: item.UsesMilk,
		Key:      key,
	}, nil, nil
}

// refusal is why a selection cannot be served now, or nil.
func (m *Machine) refusal(beverage string) *Rejection {
	item, ok := m.cfg.Menu[beverage]
	switch {
	case !ok:
		return reject(RejectUnknownBeverage, "%q is not on the menu", beverage)
	case item.UsesMilk && m.st.Milk <= 0:
		return reject(RejectOutOfMilk, "out of milk: %s is not available, beverages without milk are", beverage)
	case m.st.Inserted < item.Price:
		return reject(RejectNotEnoughCoins, "Please insert [%d] coins", item.Price-m.st.Inserted)
	}
	return nil
}

// Brew decides the brewing of a pending order. An empty hopper is a failure.
func (m *Machine) Brew(orderID string) (*Event, error) {
	o, ok := m.st.Orders[orderID]
	if !ok || o.Status != OrderPending {
		return nil, reject(RejectUnknownOrder, "no pending order %q", orderID)
	}
	if m.st.Beans <= 0 {
		return nil, fmt.Errorf("%w: order %s", ErrOutOfCoffeeBeans, orderID)
	}
	return &Event{Kind: KindBeverageDispensed, OrderID: orderID}, nil
}

// TriggerOutOfBeans is the talk's TriggerOutOfCoffeeBeansFailure: the hopper runs empty.
func (m *Machine) TriggerOutOfBeans() *Event { return &Event{Kind: KindBeansEmptied} }

// Refill restocks beans and milk to capacity (the service guy's visit).
func (m *Machine) Refill() *Event {
	return &Event{Kind: KindRefilled, Beans: m.cfg.BeanCapacity, Milk: m.cfg.MilkCapacity}
}

// NeedsRefill says the hopper is empty. A restarted machine checks it before it serves: the
// supervisor's restart brings the service guy (Refill), then every order that was paid for but
// not dispensed is brewed (the talk's postRestart resubmitting the pending order).
func (m *Machine) NeedsRefill() bool { return m.st.Beans <= 0 }

// Apply adds one event to the state. Events come from the log, so they were valid when decided;
// Apply checks only what would corrupt the state (sequence gaps, unknown orders).
func (m *Machine) Apply(seq uint64, e *Event) error {
	if seq != m.st.Seq+1 {
		return fmt.Errorf("vending: event sequence %d does not follow %d", seq, m.st.Seq)
	}
	switch e.Kind {
	case KindCoinsInserted:
		m.st.Inserted += e.Count
		m.st.TotalCoins += e.Count
		if e.Key != "" {
			m.st.keys[e.Key] = keyRecord{Kind: KindCoinsInserted, Count: e.Count, Inserted: m.st.Inserted, Seq: seq}
		}
	case KindOrderPlaced:
		m.st.Inserted = 0
		m.st.TotalCoins -= e.Change
		o := &Order{
			ID: e.OrderID, Beverage: e.Beverage, Price: e.Price, Change: e.Change,
			UsesMilk: e.UsesMilk, Status: OrderPending, Seq: seq,
		}
		m.st.Orders[e.OrderID] = o
		m.st.pending[e.OrderID] = o
		if e.Key != "" {
			m.st.keys[e.Key] = keyRecord{Kind: KindOrderPlaced, OrderID: e.OrderID, Beverage: e.Beverage, Seq: seq}
		}
	case KindBeverageDispensed:
		o, ok := m.st.Orders[e.OrderID]
		if !ok {
			return fmt.Errorf("vending: event %d dispenses unknown order %q", seq, e.OrderID)
		}
		o.Status = OrderDispensed
		o.DoneSeq = seq
		delete(m.st.pending, o.ID)
		if m.cfg.Retention.Orders > 0 {
			m.doneQ.push(seq, o.ID)
		}
		m.st.Beans--
		if o.UsesMilk {
			m.st.Milk--
		}
		m.st.Dispensed[o.Beverage]++
	case KindBeansEmptied:
		m.st.Beans = 0
	case KindRefilled:
		m.st.Beans, m.st.Milk = e.Beans, e.Milk
	case KindOrderRejected:
		m.st.keys[e.Key] = keyRecord{Kind: KindOrderRejected, Seq: seq, Beverage: e.Beverage, Reason: e.Reason, Message: e.Message}
	default:
		return fmt.Errorf("vending: event %d has unknown kind %d", seq, e.Kind)
	}
	if e.Key != "" && e.Kind != KindBeverageDispensed && m.cfg.Retention.Keys > 0 {
		m.keyQ.push(seq, e.Key)
	}
	m.st.Seq = seq
	m.retain()
	return nil
}

// retain evicts the oldest keys and dispensed orders beyond the retention counts. It runs in
// Apply, so it is a function of the log alone: the live machine and any replay agree.
func (m *Machine) retain() {
	if n := m.cfg.Retention.Keys; n > 0 {
		for len(m.st.keys) > n && m.keyQ.len() > 0 {
			it := m.keyQ.pop()
			// A stale entry: the key was forgotten and recorded again since.
			if r, ok := m.st.keys[it.id]; ok && r.Seq == it.seq {
				delete(m.st.keys, it.id)
			}
		}
	}
	if n := m.cfg.Retention.Orders; n > 0 {
		for len(m.st.Orders)-len(m.st.pending) > n && m.doneQ.len() > 0 {
			it := m.doneQ.pop()
			if o, ok := m.st.Orders[it.id]; ok && o.DoneSeq == it.seq {
				delete(m.st.Orders, it.id)
				m.st.ExpiredThrough = max(m.st.ExpiredThrough, o.Seq)
			}
		}
	}
}

// fifo is a queue of (sequence, id), oldest first.
type fifo struct {
	items []fifoItem
	head  int
}

type fifoItem struct {
	seq uint64
	id  string
}

func (q *fifo) len() int { return len(q.items) - q.head }

func (q *fifo) push(seq uint64, id string) { q.items = append(q.items, fifoItem{seq, id}) }

func (q *fifo) pop() fifoItem {
	it := q.items[q.head]
	q.items[q.head] = fifoItem{}
	q.head++
	// Reclaim the popped front once it is most of the slice: amortized O(1), bounded memory.
	if q.head >= 1024 && q.head*2 >= len(q.items) {
		q.items = append([]fifoItem(nil), q.items[q.head:]...)
		q.head = 0
	}
	return it
}

// rebuildQueues derives the retention queues from a restored state: keys by the sequence
// they were recorded at, dispensed orders by the sequence they were dispensed at (the order
// Apply pushed them in). A dimension kept whole (retention 0) has no queue.
func (m *Machine) rebuildQueues() {
	m.keyQ, m.doneQ = fifo{}, fifo{}
	if m.cfg.Retention.Keys > 0 {
		m.rebuildKeyQueue()
	}
	if m.cfg.Retention.Orders > 0 {
		m.rebuildDoneQueue()
	}
}

func (m *Machine) rebuildKeyQueue() {
	keys := make([]fifoItem, 0, len(m.st.keys))
	for k, r := range m.st.keys {
		keys = append(keys, fifoItem{r.Seq, k})
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].seq < keys[j].seq })
	m.keyQ.items = keys
}

func (m *Machine) rebuildDoneQueue() {
	done := make([]fifoItem, 0, len(m.st.Orders)-len(m.st.pending))
	for id, o := range m.st.Orders {
		if o.Status == OrderDispensed {
			done = append(done, fifoItem{o.DoneSeq, id})
		}
	}
	sort.Slice(done, func(i, j int) bool {
		if done[i].seq != done[j].seq {
			return done[i].seq < done[j].seq
		}
		return done[i].id < done[j].id
	})
	m.doneQ.items = done
}
