package vending

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
)

// Kind is the type of an event.
type Kind uint8

// Event kinds. Values are stored in the log: never renumber.
const (
	KindCoinsInserted     Kind = 1
	KindOrderPlaced       Kind = 2
	KindBeverageDispensed Kind = 3
	KindBeansEmptied      Kind = 4
	KindRefilled          Kind = 5
	// KindOrderRejected records a keyed selection that was refused (not enough coins, out of
	// milk, not on the menu), so that a retry with the same key gets the same refusal instead
	// of a beverage paid for with coins inserted since. It changes nothing else.
	KindOrderRejected Kind = 6
)

func (k Kind) String() string {
	switch k {
	case KindCoinsInserted:
		return "CoinsInserted"
	case KindOrderPlaced:
		return "OrderPlaced"
	case KindBeverageDispensed:
		return "BeverageDispensed"
	case KindBeansEmptied:
		return "BeansEmptied"
	case KindRefilled:
		return "Refilled"
	case KindOrderRejected:
		return "OrderRejected"
	}
	return fmt.Sprintf("Kind(%d)", k)
}

// Event is one fact in the log. Only the fields of its kind are set.
type Event struct {
	Kind     Kind
	Count    int64  // CoinsInserted
	Key      string // CoinsInserted, OrderPlaced, OrderRejected: the idempotency key, if any
	OrderID  string // OrderPlaced, BeverageDispensed
	Beverage string // OrderPlaced, OrderRejected
	Reason   string // OrderRejected: the rejection's reason and message, as answered
	Message  string // OrderRejected
	Price    int64  // OrderPlaced
	Change   int64  // OrderPlaced
	UsesMilk bool   // OrderPlaced
	Beans    int64  // Refilled: levels after the refill
	Milk     int64  // Refilled
}

// ErrBadEncoding means bytes that passed the log's checksum do not decode: a bug or a log
// written by an incompatible version, never something to skip.
var ErrBadEncoding = errors.New("vending: bad event encoding")

// AppendEvent appends the binary encoding of e to b: the kind, then the kind's fields as
// varints and length-prefixed strings. Compact on purpose: replay speed is start-up time.
func AppendEvent(b []byte, e *Event) []byte {
	b = append(b, byte(e.Kind))
	switch e.Kind {
	case KindCoinsInserted:
		b = binary.AppendVarint(b, e.Count)
		b = appendString(b, e.Key)
	case KindOrderPlaced:
		b = appendString(b, e.OrderID)
		b = appendString(b, e.Beverage)
		b = binary.AppendVarint(b, e.Price)
		b = binary.AppendVarint(b, e.Change)
		b = appendBool(b, e.UsesMilk)
		b = appendString(b, e.Key)
	case KindBeverageDispensed:
		b = appendString(b, e.OrderID)
	case KindRefilled:
		b = binary.AppendVarint(b, e.Beans)
		b = binary.AppendVarint(b, e.Milk)
	case KindOrderRejected:
		b = appendString(b, e.Key)
		b = appendString(b, e.Beverage)
		b = appendString(b, e.Reason)
		b = appendString(b, e.Message)
	}
	return b
}

// DecodeEvent decodes what AppendEvent wrote, all of it.
func DecodeEvent(b []byte) (*Event, error) {
	d := decoder{b: b}
	e := &Event{Kind: Kind(d.byte())}
	switch e.Kind {
	case KindCoinsInserted:
		e.Count = d.varint()
		e.Key = d.string()
	case KindOrderPlaced:
		e.OrderID = d.string()
		e.Beverage = d.string()
		e.Price = d.varint()
		e.Change = d.varint()
		e.UsesMilk = d.bool()
		e.Key = d.string()
	case KindBeverageDispensed:
		e.OrderID = d.string()
	case KindBeansEmptied:
	case KindRefilled:
		e.Beans = d.varint()
		e.Milk = d.varint()
	case KindOrderRejected:
		e.Key = d.string()
		e.Beverage = d.string()
		e.Reason = d.string()
		e.Message = d.string()
	default:
		return nil, fmt.Errorf("%w: unknown kind %d", ErrBadEncoding, e.Kind)
	}
	if err := d.finish(); err != nil {
		return nil, err
	}
	return e, nil
}

// snapshotVersion changes whenever the snapshot layout does. Version 2 added the refusals of
// keyed selections to the key records; version 3 added what retention needs: each dispensed
// order's dispense sequence and the horizon of expired orders. Versions 1 and 2 are still read.
const snapshotVersion = 3

// AppendSnapshot appends the whole state (orders, coins, idempotency keys) to b, in a
// deterministic order.
func (m *Machine) AppendSnapshot(b []byte) []byte {
	s := &m.st
	b = append(b, snapshotVersion)
	b = binary.AppendUvarint(b, s.Seq)
	for _, v := range []int64{s.Inserted, s.TotalCoins, s.Beans, s.Milk} {
		b = binary.AppendVarint(b, v)
	}
	b = binary.AppendUvarint(b, s.ExpiredThrough)
	ids := make([]string, 0, len(s.Orders))
	for id := range s.Orders {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	b = binary.AppendUvarint(b, uint64(len(ids)))
	for _, id := range ids {
		o := s.Orders[id]
		b = appendString(b, o.ID)
		b = appendString(b, o.Beverage)
		b = binary.AppendVarint(b, o.Price)
		b = binary.AppendVarint(b, o.Change)
		b = appendBool(b, o.UsesMilk)
		b = appendBool(b, o.Status == OrderDispensed)
		b = binary.AppendUvarint(b, o.Seq)
		b = binary.AppendUvarint(b, o.DoneSeq)
	}
	bevs := make([]string, 0, len(s.Dispensed))
	for k := range s.Dispensed {
		bevs = append(bevs, k)
	}
	sort.Strings(bevs)
	b = binary.AppendUvarint(b, uint64(len(bevs)))
	for _, k := range bevs {
		b = appendString(b, k)
		b = binary.AppendVarint(b, s.Dispensed[k])
	}
	keys := make([]string, 0, len(s.keys))
	for k := range s.keys {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		r := s.keys[k]
		b = appendString(b, k)
		b = append(b, byte(r.Kind))
		b = binary.AppendVarint(b, r.Count)
		b = binary.AppendVarint(b, r.Inserted)
		b = binary.AppendUvarint(b, r.Seq)
		b = appendString(b, r.OrderID)
		b = appendString(b, r.Beverage)
		b = appendString(b, r.Reason)
		b = appendString(b, r.Message)
	}
	return b
}

// RestoreSnapshot replaces the machine's state with a snapshot's.
func (m *Machine) RestoreSnapshot(b []byte) error {
	d := decoder{b: b}
	version := d.byte()
	if (version < 1 || version > snapshotVersion) && d.err == nil {
		return fmt.Errorf("%w: snapshot version %d, want 1 to %d", ErrBadEncoding, version, snapshotVersion)
	}
	// The maps are sized from the counts as they are read: growing a map of 100,000 keys one
	// insert at a time was half of a restart's replay (a restart in place is a customer waiting).
	s := State{pending: map[string]*Order{}}
	s.Seq = d.uvarint()
	s.Inserted, s.TotalCoins, s.Beans, s.Milk = d.varint(), d.varint(), d.varint(), d.varint()
	if version >= 3 {
		s.ExpiredThrough = d.uvarint()
	}
	n := d.count()
	s.Orders = make(map[string]*Order, n)
	for ; n > 0 && d.err == nil; n-- {
		o := &Order{ID: d.string(), Beverage: d.string(), Price: d.varint(), Change: d.varint(), UsesMilk: d.bool()}
		o.Status = OrderPending
		if d.bool() {
			o.Status = OrderDispensed
		}
		o.Seq = d.uvarint()
		switch {
		case version >= 3:
			o.DoneSeq = d.uvarint()
		case o.Status == OrderDispensed:
			// Before version 3: orders were dispensed in the order they were placed (the single
			// writer brews each order right after placing it, and pending ones before serving).
			o.DoneSeq = o.Seq
		}
		s.Orders[o.ID] = o
		if o.Status == OrderPending {
			s.pending[o.ID] = o
		}
	}
	n = d.count()
	s.Dispensed = make(map[string]int64, n)
	for ; n > 0 && d.err == nil; n-- {
		k := d.string()
		s.Dispensed[k] = d.varint()
	}
	n = d.count()
	s.keys = make(map[string]keyRecord, n)
	for ; n > 0 && d.err == nil; n-- {
		k := d.string()
		r := keyRecord{Kind: Kind(d.byte()), Count: d.varint(), Inserted: d.varint(), Seq: d.uvarint(), OrderID: d.string()}
		if version >= 2 {
			r.Beverage, r.Reason, r.Message = d.string(), d.string(), d.string()
		}
		s.keys[k] = r
	}
	if err := d.finish(); err != nil {
		return err
	}
	m.st = s
	m.rebuildQueues()
	return nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

// decoder reads what the append helpers wrote; the first error sticks and later reads are
// zero values, so decoding code stays linear.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: truncated or malformed %s", ErrBadEncoding, what)
	}
}

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) < 1 {
		d.fail("byte")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) bool() bool {
	switch d.byte() {
	case 0:
		return false
	case 1:
		return true
	}
	d.fail("bool")
	return false
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads a collection length, bounded by the bytes left so that a corrupt length cannot
// make the decoder allocate or loop beyond the input.
func (d *decoder) count() int {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail("count")
		return 0
	}
	return int(n)
}

func (d *decoder) string() string {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)) {
		d.fail("string")
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func (d *decoder) finish() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%w: %d trailing bytes", ErrBadEncoding, len(d.b))
	}
	return d.err
}
