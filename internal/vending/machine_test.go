package vending

import (
	"errors"
	"reflect"
	"testing"
)

// step decides one command and applies its event, as the single writer does.
type step func(t *testing.T, m *Machine) error

func coins(n int64, key string) step {
	return func(t *testing.T, m *Machine) error {
		e, _, err := m.InsertCoins(n, key)
		return apply(t, m, e, err)
	}
}

func order(bev, key string) step {
	return func(t *testing.T, m *Machine) error {
		e, _, err := m.Select(bev, key)
		if err != nil || e == nil {
			_ = apply(t, m, e, nil) // a keyed refusal is recorded
			return err
		}
		if err := apply(t, m, e, nil); err != nil {
			return err
		}
		b, err := m.Brew(e.OrderID)
		return apply(t, m, b, err)
	}
}

func outOfBeans(t *testing.T, m *Machine) error { return apply(t, m, m.TriggerOutOfBeans(), nil) }

func apply(t *testing.T, m *Machine, e *Event, err error) error {
	t.Helper()
	if err != nil || e == nil {
		return err
	}
	if aerr := m.Apply(m.State().Seq+1, e); aerr != nil {
		t.Fatalf("apply %v: %v", e.Kind, aerr)
	}
	return nil
}

func TestMachine(t *testing.T) {
	tests := []struct {
		name       string
		steps      []step
		wantErr    string // Rejection reason, or "failure"
		wantMsg    string
		inserted   int64
		total      int64
		dispensed  map[string]int64
		degraded   bool
		pendingLen int
	}{
		{name: "talk 1: happy path, 2 coins buy an Espresso",
			steps: []step{coins(2, ""), order("Espresso", "")}, total: 2, dispensed: map[string]int64{"Espresso": 1}},
		{name: "talk 2: user error, 1 coin is not enough for a Latte",
			steps: []step{coins(1, ""), order("Latte", "")}, wantErr: RejectNotEnoughCoins, wantMsg: "Please insert [1] coins",
			inserted: 1, total: 1, dispensed: map[string]int64{}},
		{name: "talk 3: system failure, empty hopper fails the brew after the order is placed",
			steps: []step{coins(1, ""), coins(1, ""), outOfBeans, order("Latte", "")}, wantErr: "failure",
			total: 2, dispensed: map[string]int64{}, pendingLen: 1},
		{name: "excess coins come back as change",
			steps: []step{coins(5, ""), order("BlackCoffee", "")}, total: 2, dispensed: map[string]int64{"BlackCoffee": 1}},
		{name: "unknown beverage is rejected",
			steps: []step{coins(2, ""), order("Mocha", "")}, wantErr: RejectUnknownBeverage, inserted: 2, total: 2, dispensed: map[string]int64{}},
		{name: "zero coins is rejected",
			steps: []step{coins(0, "")}, wantErr: RejectBadCount, dispensed: map[string]int64{}},
		{name: "absurd count is rejected",
			steps: []step{coins(MaxCoinsPerInsert+1, "")}, wantErr: RejectBadCount, dispensed: map[string]int64{}},
		{name: "retried insert with the same key counts once",
			steps: []step{coins(1, "k1"), coins(1, "k1")}, inserted: 1, total: 1, dispensed: map[string]int64{}},
		{name: "key reused for another amount is refused",
			steps: []step{coins(1, "k1"), coins(2, "k1")}, wantErr: RejectKeyReused, inserted: 1, total: 1, dispensed: map[string]int64{}},
		{name: "retried order with the same key dispenses once",
			steps: []step{coins(4, ""), order("Espresso", "o1"), order("Espresso", "o1")}, total: 2, dispensed: map[string]int64{"Espresso": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := New(DefaultConfig())
			var err error
			for _, s := range tt.steps {
				if err = s(t, m); err != nil {
					break
				}
			}
			switch {
			case tt.wantErr == "failure":
				if !errors.Is(err, ErrOutOfCoffeeBeans) {
					t.Fatalf("err = %v, want ErrOutOfCoffeeBeans", err)
				}
			case tt.wantErr != "":
				var r *Rejection
				if !errors.As(err, &r) || r.Reason != tt.wantErr {
					t.Fatalf("err = %v, want rejection %s", err, tt.wantErr)
				}
				if tt.wantMsg != "" && r.Message != tt.wantMsg {
					t.Fatalf("message = %q, want %q", r.Message, tt.wantMsg)
				}
			case err != nil:
				t.Fatalf("unexpected error: %v", err)
			}
			st := m.State()
			if st.Inserted != tt.inserted || st.TotalCoins != tt.total {
				t.Errorf("inserted, total = %d, %d; want %d, %d", st.Inserted, st.TotalCoins, tt.inserted, tt.total)
			}
			if !reflect.DeepEqual(st.Dispensed, tt.dispensed) {
				t.Errorf("dispensed = %v, want %v", st.Dispensed, tt.dispensed)
			}
			if got := len(m.Pending()); got != tt.pendingLen {
				t.Errorf("pending = %d, want %d", got, tt.pendingLen)
			}
		})
	}
}

// The talk's third test, across a restart: the order was persisted before brewing; replaying
// the events into a fresh machine, refilling and brewing the pending order dispenses the
// Latte exactly once, and no coin is lost.
func TestRecoveryCompletesPendingOrder(t *testing.T) {
	m := New(DefaultConfig())
	var log []*Event
	rec := func(e *Event, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		log = append(log, e)
		if err := m.Apply(m.State().Seq+1, e); err != nil {
			t.Fatal(err)
		}
	}
	e, _, err := m.InsertCoins(2, "c")
	rec(e, err)
	rec(m.TriggerOutOfBeans(), nil)
	e, _, err = m.Select("Latte", "latte-1")
	rec(e, err)
	if _, err := m.Brew(e.OrderID); !errors.Is(err, ErrOutOfCoffeeBeans) {
		t.Fatalf("brew: %v, want out of beans", err)
	}

	// Restart: a new process replays the log.
	r := New(DefaultConfig())
	for i, e := range log {
		if err := r.Apply(uint64(i+1), e); err != nil {
			t.Fatal(err)
		}
	}
	if !r.NeedsRefill() {
		t.Fatal("restarted machine does not need a refill")
	}
	if err := r.Apply(r.State().Seq+1, r.Refill()); err != nil {
		t.Fatal(err)
	}
	for _, o := range r.Pending() {
		b, err := r.Brew(o.ID)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Apply(r.State().Seq+1, b); err != nil {
			t.Fatal(err)
		}
	}
	// The customer's retry with the same key finds the dispensed Latte, and nothing new.
	ev, res, err := r.Select("Latte", "latte-1")
	if err != nil || ev != nil || res == nil {
		t.Fatalf("retry: event %v result %v err %v", ev, res, err)
	}
	if o, _ := r.Order(res.OrderID); o.Status != OrderDispensed || o.Beverage != "Latte" {
		t.Fatalf("order = %+v", o)
	}
	if r.State().Dispensed["Latte"] != 1 || r.State().TotalCoins != 2 {
		t.Fatalf("dispensed %v total %d", r.State().Dispensed, r.State().TotalCoins)
	}
}

func TestOutOfMilkDegrades(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MilkCapacity = 1
	m := New(cfg)
	for _, s := range []step{coins(2, ""), order("Latte", ""), coins(2, "")} {
		if err := s(t, m); err != nil {
			t.Fatal(err)
		}
	}
	if !m.Degraded() {
		t.Fatal("not degraded with no milk")
	}
	var r *Rejection
	if err := order("Latte", "")(t, m); !errors.As(err, &r) || r.Reason != RejectOutOfMilk {
		t.Fatalf("latte without milk: %v", err)
	}
	if err := order("Espresso", "")(t, m); err != nil {
		t.Fatalf("espresso without milk: %v", err)
	}
	if err := apply(t, m, m.Refill(), nil); err != nil || m.Degraded() {
		t.Fatalf("refill: %v degraded=%v", err, m.Degraded())
	}
}

func TestApplyRefusesSequenceGap(t *testing.T) {
	m := New(DefaultConfig())
	if err := m.Apply(2, &Event{Kind: KindBeansEmptied}); err == nil {
		t.Fatal("applied event 2 to an empty machine")
	}
}

// A keyed refusal is the key's answer for good: coins inserted since do not turn a retry into a
// beverage, also after a replay of the log.
func TestKeyedRefusalIsRemembered(t *testing.T) {
	m := New(DefaultConfig())
	var log []*Event
	record := func(e *Event) {
		t.Helper()
		if e != nil {
			log = append(log, e)
			if err := m.Apply(m.State().Seq+1, e); err != nil {
				t.Fatal(err)
			}
		}
	}
	e, _, _ := m.InsertCoins(1, "")
	record(e)
	e, _, err1 := m.Select("Latte", "k")
	if e == nil || e.Kind != KindOrderRejected {
		t.Fatalf("a keyed refusal must come with its record, got %+v", e)
	}
	record(e)
	e, _, _ = m.InsertCoins(5, "")
	record(e)
	for _, mm := range []*Machine{m, replay(t, log)} {
		e, res, err2 := mm.Select("Latte", "k")
		var r1, r2 *Rejection
		if e != nil || res != nil || !errors.As(err1, &r1) || !errors.As(err2, &r2) || *r1 != *r2 {
			t.Fatalf("retry: event %+v result %+v err %v; first answer %v", e, res, err2, err1)
		}
		if r2.Message != "Please insert [1] coins" {
			t.Fatalf("retry message %q", r2.Message)
		}
		if _, _, err := mm.Select("Espresso", "k"); !isRejection(err, RejectKeyReused) {
			t.Fatalf("the key with another beverage: %v", err)
		}
	}
	if _, _, err := m.Select("Latte", ""); err != nil {
		t.Fatalf("without a key the order is served now: %v", err)
	}
}

func replay(t *testing.T, log []*Event) *Machine {
	t.Helper()
	m := New(DefaultConfig())
	for i, e := range log {
		b := AppendEvent(nil, e)
		d, err := DecodeEvent(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Apply(uint64(i+1), d); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

func isRejection(err error, reason string) bool {
	var r *Rejection
	return errors.As(err, &r) && r.Reason == reason
}
