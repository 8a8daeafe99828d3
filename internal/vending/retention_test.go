package vending

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
)

// retentionWorkload drives a machine the way customers and the writer do, recording every
// event: keyed and unkeyed inserts, keyed and unkeyed orders (some refused), retries of old
// keys, and now and then an empty hopper that leaves an order pending until a refill.
func retentionWorkload(t *testing.T, cfg Config, events int, check func(m *Machine)) (*Machine, []*Event) {
	t.Helper()
	m := New(cfg)
	var log []*Event
	rec := func(e *Event) {
		t.Helper()
		if err := m.Apply(m.State().Seq+1, e); err != nil {
			t.Fatal(err)
		}
		log = append(log, e)
		check(m)
	}
	rng := rand.New(rand.NewPCG(9, 9))
	bevs := []string{"BlackCoffee", "Latte", "Espresso", "Mocha"}
	for i := 0; len(log) < events; i++ {
		key := ""
		if rng.IntN(4) != 0 {
			key = fmt.Sprintf("k-%d", i)
		}
		if rng.IntN(10) == 0 && i > 10 { // a retry of an older key
			key = fmt.Sprintf("k-%d", i-1-rng.IntN(min(i, 200)))
		}
		switch r := rng.IntN(20); {
		case r < 9:
			if e, _, err := m.InsertCoins(int64(1+rng.IntN(3)), key); err == nil && e != nil {
				rec(e)
			}
		case r < 18:
			e, _, err := m.Select(bevs[rng.IntN(len(bevs))], key)
			if e == nil {
				continue
			}
			rec(e)
			if err != nil { // a recorded refusal
				continue
			}
			b, err := m.Brew(e.OrderID)
			if err != nil { // out of beans: pending until the refill
				rec(m.Refill())
				b, err = m.Brew(e.OrderID)
				if err != nil {
					t.Fatal(err)
				}
			}
			rec(b)
		case r < 19:
			rec(m.TriggerOutOfBeans())
		default:
			rec(m.Refill())
		}
	}
	return m, log
}

func replayFrom(t *testing.T, cfg Config, snap []byte, log []*Event, from int) *Machine {
	t.Helper()
	m := New(cfg)
	if snap != nil {
		if err := m.RestoreSnapshot(snap); err != nil {
			t.Fatal(err)
		}
	}
	for i := from; i < len(log); i++ {
		d, err := DecodeEvent(AppendEvent(nil, log[i]))
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Apply(uint64(i+1), d); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// Retention keeps the keys and the dispensed orders bounded while the log grows, never evicts a
// pending order, and is decided by the log alone: a replay from scratch and a replay from any
// snapshot rebuild exactly the live machine's state, and go on evicting the same things.
func TestRetentionIsBoundedAndReplaysIdentically(t *testing.T) {
	cfg := DefaultConfig()
	cfg.BeanCapacity = 7 // empty hoppers now and then
	cfg.Retention = Retention{Keys: 50, Orders: 30}
	maxKeys, maxOrders := 0, 0
	m, log := retentionWorkload(t, cfg, 20_000, func(m *Machine) {
		keys, orders := m.Retained()
		maxKeys, maxOrders = max(maxKeys, keys), max(maxOrders, orders)
		if keys > cfg.Retention.Keys || orders-len(m.st.pending) > cfg.Retention.Orders {
			t.Fatalf("at %d: %d keys, %d orders (%d pending), retention %+v", m.st.Seq, keys, orders,
				len(m.st.pending), cfg.Retention)
		}
		for id := range m.st.pending {
			if m.st.Orders[id] == nil {
				t.Fatalf("pending order %s was evicted", id)
			}
		}
	})
	if maxKeys != cfg.Retention.Keys || maxOrders < cfg.Retention.Orders || m.st.ExpiredThrough == 0 {
		t.Fatalf("the workload never reached the bounds: %d keys, %d orders, horizon %d", maxKeys, maxOrders, m.st.ExpiredThrough)
	}
	live := m.AppendSnapshot(nil)
	if got := replayFrom(t, cfg, nil, log, 0).AppendSnapshot(nil); !bytes.Equal(got, live) {
		t.Fatal("a replay from scratch differs from the live machine")
	}
	// Snapshots taken along the way, then the rest of the log: the same state, so the queues
	// rebuilt from a snapshot evict what the live machine evicted.
	for _, at := range []int{1, 777, 5_000, 12_345, 19_999} {
		mid := replayFrom(t, cfg, nil, log[:at], 0)
		if got := replayFrom(t, cfg, mid.AppendSnapshot(nil), log, at).AppendSnapshot(nil); !bytes.Equal(got, live) {
			t.Fatalf("a replay from the snapshot at %d differs from the live machine", at)
		}
		// Event by event after the snapshot: the restored machine evicts what the live one does.
		restored := replayFrom(t, cfg, mid.AppendSnapshot(nil), nil, 0)
		for i := at; i < min(at+200, len(log)); i++ {
			for _, mm := range []*Machine{mid, restored} {
				if err := mm.Apply(uint64(i+1), log[i]); err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(mid.AppendSnapshot(nil), restored.AppendSnapshot(nil)) {
				t.Fatalf("after the snapshot at %d, event %d: the restored machine differs from the live one", at, i+1)
			}
		}
	}
	// Without retention the same log keeps everything: the bound is retention's doing.
	cfg.Retention = Retention{}
	if keys, _ := replayFrom(t, cfg, nil, log, 0).Retained(); keys <= 50 {
		t.Fatalf("without retention only %d keys", keys)
	}
}

// What a retry gets once retention forgot something.
func TestRetryAfterRetention(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Retention = Retention{Keys: 3, Orders: 2}
	m := New(cfg)
	step := func(e *Event, err error) {
		t.Helper()
		if err != nil || e == nil {
			t.Fatalf("event %+v err %v", e, err)
		}
		if err := m.Apply(m.State().Seq+1, e); err != nil {
			t.Fatal(err)
		}
	}
	insert := func(n int64, key string) { e, _, err := m.InsertCoins(n, key); step(e, err) }
	placeAndBrew := func(key string) string {
		e, _, err := m.Select("Espresso", key)
		step(e, err)
		b, err := m.Brew(e.OrderID)
		step(b, err)
		return e.OrderID
	}
	insert(2, "coins-1")
	first := placeAndBrew("order-1") // o-2
	insert(2, "")
	second := placeAndBrew("") // o-4
	insert(2, "")
	placeAndBrew("") // o-6: three dispensed orders, retention 2: o-2 is gone
	if _, ok := m.Order(first); ok || !m.Expired(first) || m.Expired(second) || m.Expired("o-99") || m.Expired("x-1") {
		t.Fatalf("after eviction: order %s kept=%v expired=%v; %s expired=%v", first, ok, m.Expired(first), second, m.Expired(second))
	}
	// The key of the evicted order is still remembered: its retry is told the order expired,
	// never run again, never called unknown.
	if e, res, err := m.Select("Espresso", "order-1"); e != nil || res != nil || !isRejection(err, RejectOrderExpired) {
		t.Fatalf("retry of an order key whose order expired: %+v %+v %v", e, res, err)
	}
	if _, _, err := m.Select("Latte", "order-1"); !isRejection(err, RejectKeyReused) {
		t.Fatalf("the same key with another beverage: %v", err)
	}
	// Three more keys push coins-1 and order-1 out: their retries run as new requests.
	insert(1, "a")
	insert(1, "b")
	insert(1, "c")
	if m.KnowsKey("coins-1") || m.KnowsKey("order-1") || !m.KnowsKey("c") {
		t.Fatal("retention kept the wrong keys")
	}
	if e, res, err := m.InsertCoins(2, "coins-1"); e == nil || res != nil || err != nil {
		t.Fatalf("a forgotten key runs as a new request: %+v %+v %v", e, res, err)
	}
	// A pending order is never evicted, however many orders are dispensed after it.
	step(m.TriggerOutOfBeans(), nil)
	e, _, err := m.Select("Espresso", "")
	step(e, err)
	pending := e.OrderID
	step(m.Refill(), nil)
	for i := 0; i < 5; i++ {
		insert(2, "")
		placeAndBrew("")
	}
	if o, ok := m.Order(pending); !ok || o.Status != OrderPending {
		t.Fatalf("pending order %s: %+v %v", pending, o, ok)
	}
}

// A version 2 snapshot (before retention) with a dispensed order is still read, and the
// restored machine evicts in the order the live one would.
func TestSnapshotVersion2IsRead(t *testing.T) {
	cfg := DefaultConfig()
	m := New(cfg)
	for i, e := range []*Event{
		{Kind: KindCoinsInserted, Count: 2, Key: "k-1"},
		{Kind: KindOrderPlaced, OrderID: "o-2", Beverage: "Espresso", Price: 2, Key: "k-2"},
		{Kind: KindBeverageDispensed, OrderID: "o-2"},
	} {
		if err := m.Apply(uint64(i+1), e); err != nil {
			t.Fatal(err)
		}
	}
	v2 := []byte{2}
	v2 = binary.AppendUvarint(v2, 3)
	for _, v := range []int64{0, 2, 99, 50} {
		v2 = binary.AppendVarint(v2, v)
	}
	v2 = binary.AppendUvarint(v2, 1) // orders
	v2 = appendString(v2, "o-2")
	v2 = appendString(v2, "Espresso")
	v2 = binary.AppendVarint(v2, 2)
	v2 = binary.AppendVarint(v2, 0)
	v2 = appendBool(v2, false)
	v2 = appendBool(v2, true)
	v2 = binary.AppendUvarint(v2, 2)
	v2 = binary.AppendUvarint(v2, 1) // dispensed
	v2 = appendString(v2, "Espresso")
	v2 = binary.AppendVarint(v2, 1)
	v2 = binary.AppendUvarint(v2, 2) // keys
	for _, k := range []struct {
		key             string
		kind            Kind
		count, inserted int64
		seq             uint64
		orderID, bev    string
	}{{"k-1", KindCoinsInserted, 2, 2, 1, "", ""}, {"k-2", KindOrderPlaced, 0, 0, 2, "o-2", "Espresso"}} {
		v2 = appendString(v2, k.key)
		v2 = append(v2, byte(k.kind))
		v2 = binary.AppendVarint(v2, k.count)
		v2 = binary.AppendVarint(v2, k.inserted)
		v2 = binary.AppendUvarint(v2, k.seq)
		v2 = appendString(v2, k.orderID)
		v2 = appendString(v2, k.bev)
		v2 = appendString(v2, "")
		v2 = appendString(v2, "")
	}
	r := New(cfg)
	if err := r.RestoreSnapshot(v2); err != nil {
		t.Fatal(err)
	}
	// Version 2 did not record the dispense sequence: it is taken to be the placement's, so
	// the restored order differs from the live one only there.
	r.st.Orders["o-2"].DoneSeq = m.st.Orders["o-2"].DoneSeq
	if !bytes.Equal(r.AppendSnapshot(nil), m.AppendSnapshot(nil)) {
		t.Fatalf("restored %+v, want %+v", r.State(), m.State())
	}
}
