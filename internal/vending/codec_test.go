package vending

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

var sampleEvents = []*Event{
	{Kind: KindCoinsInserted, Count: 2, Key: "k-1"},
	{Kind: KindOrderPlaced, OrderID: "o-2", Beverage: "Latte", Price: 2, Change: 1, UsesMilk: true, Key: "order-1"},
	{Kind: KindBeverageDispensed, OrderID: "o-2"},
	{Kind: KindBeansEmptied},
	{Kind: KindRefilled, Beans: 100, Milk: 50},
}

func TestEventRoundTrip(t *testing.T) {
	for _, e := range sampleEvents {
		got, err := DecodeEvent(AppendEvent(nil, e))
		if err != nil {
			t.Fatalf("%v: %v", e.Kind, err)
		}
		if !reflect.DeepEqual(got, e) {
			t.Fatalf("round trip: got %+v, want %+v", got, e)
		}
	}
}

func TestDecodeEventRejectsGarbage(t *testing.T) {
	for _, b := range [][]byte{nil, {0}, {99}, {byte(KindCoinsInserted)}, append(AppendEvent(nil, sampleEvents[0]), 0)} {
		if _, err := DecodeEvent(b); !errors.Is(err, ErrBadEncoding) {
			t.Errorf("DecodeEvent(%x) err = %v, want ErrBadEncoding", b, err)
		}
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	m := New(DefaultConfig())
	for i, e := range sampleEvents[:3] {
		if err := m.Apply(uint64(i+1), e); err != nil {
			t.Fatal(err)
		}
	}
	snap := m.AppendSnapshot(nil)
	r := New(DefaultConfig())
	if err := r.RestoreSnapshot(snap); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(r.State(), m.State()) {
		t.Fatalf("restored %+v, want %+v", r.State(), m.State())
	}
	if !bytes.Equal(r.AppendSnapshot(nil), snap) {
		t.Fatal("snapshot encoding is not deterministic")
	}
	if err := r.RestoreSnapshot(snap[:len(snap)-1]); !errors.Is(err, ErrBadEncoding) {
		t.Fatalf("truncated snapshot: %v", err)
	}
}

// FuzzDecodeEvent: no input makes the decoder panic or allocate beyond its input, and what
// decodes re-encodes to the same bytes.
func FuzzDecodeEvent(f *testing.F) {
	for _, e := range sampleEvents {
		f.Add(AppendEvent(nil, e))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeEvent(b)
		if err != nil {
			return
		}
		if got := AppendEvent(nil, e); !bytes.Equal(got, b) && canonical(b) {
			t.Fatalf("re-encoding %x gave %x", b, got)
		}
	})
}

// canonical: varints have more than one encoding (padded with 0x80 bytes); only minimal
// encodings must round-trip byte for byte.
func canonical(b []byte) bool {
	e, err := DecodeEvent(b)
	return err == nil && len(AppendEvent(nil, e)) == len(b)
}

func FuzzRestoreSnapshot(f *testing.F) {
	m := New(DefaultConfig())
	for i, e := range sampleEvents[:3] {
		_ = m.Apply(uint64(i+1), e)
	}
	f.Add(m.AppendSnapshot(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = New(DefaultConfig()).RestoreSnapshot(b)
	})
}
