// Package history records what customers of one vending machine were told, and checks it for
// linearizability with porcupine against a sequential model of the machine: coins, orders,
// change, refusals and idempotency keys. A history the model rejects means some customer was
// told something no sequential machine could have said: an acknowledged coin or order was lost,
// a key was applied twice, a refusal or a total was wrong.
//
// The model is the customer's view of internal/vending: one machine, so inserted coins are
// state shared by every customer (no partitioning is possible). It stays tractable because every
// acknowledged mutation carries the log sequence it was given, and sequences must increase along
// the linearization, which prunes almost every order the checker would otherwise try.
package history

import (
	"fmt"
	"hash/fnv"
)

// Kind is what an operation asked for.
type Kind int

// Operation kinds.
const (
	Coins Kind = iota // POST /v1/coins {count}
	Order             // POST /v1/orders {beverage}
	State             // GET /v1/state
)

func (k Kind) String() string {
	switch k {
	case Coins:
		return "Coins"
	case Order:
		return "Order"
	default:
		return "State"
	}
}

// Input is one request.
type Input struct {
	Kind     Kind
	Key      string // Idempotency-Key; "" for none
	Count    int64  // Coins
	Beverage string // Order
	Price    int64  // Order: the beverage's price on the machine's menu
	// Repeated says the key occurs in more than one operation of the history, so the model must
	// remember its answer (set by Check; keys used once need no memory, which keeps states small).
	Repeated bool
}

// Outcome is how a request ended.
type Outcome int

// Outcomes.
const (
	// Unknown: no answer (a timeout, a connection error, a 5xx, the customer gave up): the
	// request may or may not have taken effect.
	Unknown Outcome = iota
	// OK: 200 with the answer.
	OK
	// NotEnoughCoins: 402, "Please insert [Need] coins".
	NotEnoughCoins
	// Refused: any other 4xx. The model never expects one for the requests customers send.
	Refused
)

func (o Outcome) String() string {
	return [...]string{"unknown", "ok", "NotEnoughCoins", "refused"}[o]
}

// Output is one answer. Which fields mean something depends on the Input's Kind.
type Output struct {
	Outcome   Outcome
	Inserted  int64  // Coins, State: inserted coins after the request
	Seq       uint64 // Coins, Order: the event's sequence; State: the last event's
	OrderID   string // Order
	Change    int64  // Order
	Need      int64  // NotEnoughCoins
	Total     int64  // State: totalCoins
	Dispensed int64  // State: beverages dispensed, all kinds
	Detail    string // Refused: the error; for humans only
}

// machine is the model's state. It is never mutated: steps return copies.
type machine struct {
	inserted, total, dispensed int64
	// lastSeq bounds the sequence of the next event: every acknowledged event after this point
	// must have a greater one.
	lastSeq uint64
	keys    *keyRecord // answers of repeated keys, newest first (a persistent list)
	// nkeys and keysHash identify the set of keys' answers whatever order they were added in:
	// two orders of the same requests reach the same state, and the checker's cache must see
	// that, or its search on a rejected history grows exponentially.
	nkeys    int
	keysHash uint64
}

// keyRecord is the first answer of a key, which every retry must get again.
type keyRecord struct {
	key  string
	kind Kind
	out  Output
	// seqKnown is false when the first request's outcome was unknown: the model knows its
	// effect (it is deterministic from the state) but not the sequence the log gave it.
	seqKnown bool
	next     *keyRecord
}

func (m machine) lookup(key string) *keyRecord {
	for r := m.keys; r != nil; r = r.next {
		if r.key == key {
			return r
		}
	}
	return nil
}

func (m machine) remember(in Input, out Output, seqKnown bool) machine {
	if in.Repeated {
		r := &keyRecord{key: in.Key, kind: in.Kind, out: out, seqKnown: seqKnown, next: m.keys}
		m.keys, m.nkeys, m.keysHash = r, m.nkeys+1, m.keysHash+r.hash()
	}
	return m
}

// effect is what the machine does with a request it has not seen: the state after it and the
// answer it gives (without its sequence, which the log decides). Pure, the heart of the model.
func effect(m machine, in Input) (machine, Output) {
	switch in.Kind {
	case Coins:
		m.inserted += in.Count
		m.total += in.Count
		return m, Output{Outcome: OK, Inserted: m.inserted}
	case Order:
		if m.inserted < in.Price {
			return m, Output{Outcome: NotEnoughCoins, Need: in.Price - m.inserted}
		}
		change := m.inserted - in.Price
		m.inserted = 0
		m.total -= change
		m.dispensed++
		return m, Output{Outcome: OK, Change: change}
	}
	return m, Output{Outcome: OK, Inserted: m.inserted, Total: m.total, Dispensed: m.dispensed}
}

// sameAnswer says whether got is the answer want (a key's first answer) again.
func sameAnswer(kind Kind, want, got Output, seqKnown bool) bool {
	if want.Outcome != got.Outcome {
		return false
	}
	seqOK := !seqKnown || want.Seq == got.Seq
	switch {
	case got.Outcome == NotEnoughCoins:
		return want.Need == got.Need
	case kind == Coins:
		return want.Inserted == got.Inserted && seqOK
	case kind == Order:
		return want.Change == got.Change && seqOK && (!seqKnown || want.OrderID == got.OrderID)
	}
	return false
}

// step returns every state the machine can be in after answering in with out, from m; none if
// it cannot answer that.
func step(m machine, in Input, out Output) []machine {
	if in.Kind == State {
		if out.Outcome == Unknown {
			return []machine{m}
		}
		_, want := effect(m, in)
		if out.Outcome != OK || out.Inserted != want.Inserted || out.Total != want.Total ||
			out.Dispensed != want.Dispensed || out.Seq < m.lastSeq {
			return nil
		}
		m.lastSeq = out.Seq
		return []machine{m}
	}
	if in.Key != "" {
		if r := m.lookup(in.Key); r != nil {
			// A retry: the first answer again, nothing done twice.
			if out.Outcome == Unknown || (r.kind == in.Kind && sameAnswer(in.Kind, r.out, out, r.seqKnown)) {
				return []machine{m}
			}
			return nil
		}
	}
	next, want := effect(m, in)
	if out.Outcome == Unknown {
		// It may not have happened, or it happened with the answer the state decides.
		return []machine{m, next.remember(in, want, false)}
	}
	if !sameAnswer(in.Kind, want, out, false) {
		return nil
	}
	if out.Outcome == OK {
		// An acknowledged event has a sequence past every event before it.
		if out.Seq <= m.lastSeq {
			return nil
		}
		next.lastSeq = out.Seq
	}
	return []machine{next.remember(in, out, true)}
}

// equal compares the key records as a set through a sum of 64-bit hashes of each record (as
// Knossos memoizes states by hash): two different sets compare equal only on a collision.
func equal(a, b machine) bool {
	return a.inserted == b.inserted && a.total == b.total && a.dispensed == b.dispensed &&
		a.lastSeq == b.lastSeq && a.nkeys == b.nkeys && a.keysHash == b.keysHash
}

func hash(m machine) uint64 {
	h := fnv.New64a()
	_, _ = fmt.Fprintf(h, "%d/%d/%d/%d/%d/%d", m.inserted, m.total, m.dispensed, m.lastSeq, m.nkeys, m.keysHash)
	return h.Sum64()
}

func (r *keyRecord) hash() uint64 {
	h := fnv.New64a()
	_, _ = fmt.Fprintf(h, "%s/%d/%+v/%t", r.key, r.kind, r.out, r.seqKnown)
	return h.Sum64()
}

// Describe renders an operation for the visualization.
func Describe(in Input, out Output) string {
	var call string
	switch in.Kind {
	case Coins:
		call = fmt.Sprintf("Coins(%d)", in.Count)
	case Order:
		call = fmt.Sprintf("Order(%s)", in.Beverage)
	default:
		call = "State()"
	}
	if in.Key != "" {
		call += " [" + in.Key + "]"
	}
	var ans string
	switch {
	case out.Outcome == Unknown:
		ans = "unknown"
	case out.Outcome == NotEnoughCoins:
		ans = fmt.Sprintf("insert %d", out.Need)
	case out.Outcome == Refused:
		ans = "refused: " + out.Detail
	case in.Kind == Coins:
		ans = fmt.Sprintf("inserted=%d seq=%d", out.Inserted, out.Seq)
	case in.Kind == Order:
		ans = fmt.Sprintf("%s change=%d seq=%d", out.OrderID, out.Change, out.Seq)
	default:
		ans = fmt.Sprintf("inserted=%d total=%d dispensed=%d seq=%d", out.Inserted, out.Total, out.Dispensed, out.Seq)
	}
	return call + " -> " + ans
}

func describeState(m machine) string {
	return fmt.Sprintf("inserted=%d total=%d dispensed=%d lastSeq=%d", m.inserted, m.total, m.dispensed, m.lastSeq)
}
