package vending

import (
	"bytes"
	"encoding/binary"
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
	{Kind: KindOrderRejected, Key: "order-2", Beverage: "Latte", Reason: RejectNotEnoughCoins, Message: "Please insert [2] coins"},
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
	for i, e := range sampleEvents {
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
	for i, e := range sampleEvents {
		_ = m.Apply(uint64(i+1), e)
	}
	f.Add(m.AppendSnapshot(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = New(DefaultConfig()).RestoreSnapshot(b)
	})
}

// Snapshots written before refusals were recorded (version 1) are still read.
func TestSnapshotVersion1IsRead(t *testing.T) {
	m := New(DefaultConfig())
	if err := m.Apply(1, sampleEvents[0]); err != nil { // 2 coins with key k-1
		t.Fatal(err)
	}
	v1 := []byte{1}
	v1 = binary.AppendUvarint(v1, 1)
	for _, v := range []int64{2, 2, 100, 50} { // inserted, total, beans, milk
		v1 = binary.AppendVarint(v1, v)
	}
	v1 = binary.AppendUvarint(v1, 0) // orders
	v1 = binary.AppendUvarint(v1, 0) // dispensed
	v1 = binary.AppendUvarint(v1, 1) // keys
	v1 = appendString(v1, "k-1")
	v1 = append(v1, byte(KindCoinsInserted))
	v1 = binary.AppendVarint(v1, 2)
	v1 = binary.AppendVarint(v1, 2)
	v1 = binary.AppendUvarint(v1, 1)
	v1 = appendString(v1, "")
	r := New(DefaultConfig())
	if err := r.RestoreSnapshot(v1); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(r.State(), m.State()) {
		t.Fatalf("restored %+v, want %+v", r.State(), m.State())
	}
}
