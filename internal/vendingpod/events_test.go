package vendingpod

import (
	"bytes"
	bin "encoding/binary"
	"net/http"
	"runtime"
	"testing"

	"github.com/vendingfleet/vending-operator/internal/eventlog"
	"github.com/vendingfleet/vending-operator/internal/vending"
)

// These tests are of eventlog.Read (internal/eventlog/read.go), the path GET /v1/events takes.

// nopReplayer accepts any log.
type nopReplayer struct{}

func (nopReplayer) RestoreSnapshot(uint64, []byte) error { return nil }
func (nopReplayer) ReplayRecord(eventlog.Record) error   { return nil }

// payloadOf is record seq's payload: its sequence, then filler to size bytes.
func payloadOf(seq uint64, size int) []byte {
	p := bytes.Repeat([]byte{byte(seq)}, max(size, 8))
	bin.LittleEndian.PutUint64(p, seq)
	return p
}

// Read streams through a bounded window: records of every size (larger than the window too)
// straddling window and segment boundaries come back whole, in order, from any starting point.
func TestReadReturnsEveryRecordAcrossWindowsAndSegments(t *testing.T) {
	l, _, err := eventlog.Open(t.TempDir(), eventlog.Options{SegmentSize: 256 << 10}, nopReplayer{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	sizes := []int{1, 13, 100, 4093, 70_000, 65_536 - 24, 300_000, 8, 1_000_001}
	var want [][]byte
	for i := 0; i < 400; i++ {
		size := sizes[i%len(sizes)]
		if i%len(sizes) >= 4 && i > 40 {
			size = 50 // mostly small, with the big ones early on
		}
		p := payloadOf(uint64(i+1), size)
		if _, err := l.Append(recordEvent, p); err != nil {
			t.Fatal(err)
		}
		want = append(want, p)
	}
	for _, after := range []uint64{0, 1, 3, 4, 5, 17, 39, 40, 41, 200, 398, 399, 400, 1000} {
		for _, limit := range []int{1, 7, 1000} {
			recs, err := l.Read(after, limit)
			if err != nil {
				t.Fatal(err)
			}
			wantN := max(0, min(limit, len(want)-int(after)))
			if len(recs) != wantN {
				t.Fatalf("Read(%d, %d): %d records, want %d", after, limit, len(recs), wantN)
			}
			for i, r := range recs {
				seq := after + 1 + uint64(i)
				if r.Seq != seq || !bytes.Equal(r.Payload, want[seq-1]) {
					t.Fatalf("Read(%d, %d)[%d]: sequence %d, %d bytes; want %d, %d bytes", after, limit, i, r.Seq,
						len(r.Payload), seq, len(want[seq-1]))
				}
			}
		}
	}
}

// Defect 3: a page costs the same memory whatever the size of the segment it is read from
// (it used to read every segment whole: 64 MiB per request).
func TestReadMemoryIsIndependentOfSegmentSize(t *testing.T) {
	l, _, err := eventlog.Open(t.TempDir(), eventlog.Options{SegmentSize: 1 << 30}, nopReplayer{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	const n, size = 200_000, 100 // one 24 MiB segment
	var last uint64
	for i := 0; i < n; i++ {
		if last, _, err = l.Submit(recordEvent, payloadOf(uint64(i+1), size)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.WaitDurable(last); err != nil {
		t.Fatal(err)
	}
	const budget = 1 << 20
	for _, after := range []uint64{0, n / 2, n - 1} {
		var before, after2 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		recs, err := l.Read(after, 1)
		runtime.ReadMemStats(&after2)
		if err != nil || len(recs) != 1 || recs[0].Seq != after+1 {
			t.Fatalf("Read(%d, 1): %d records, %v", after, len(recs), err)
		}
		if alloc := after2.TotalAlloc - before.TotalAlloc; alloc > budget {
			t.Fatalf("Read(%d, 1) from a %d MiB segment allocated %d bytes, budget %d", after, n*(size+28)>>20, alloc, budget)
		}
	}
}

// Event reads in progress are bounded: beyond the bound the answer is 503 Busy + Retry-After at
// once, as for a full mailbox.
func TestEventReadsAreBounded(t *testing.T) {
	m := vending.New(vending.DefaultConfig())
	l, _, err := eventlog.Open(t.TempDir(), eventlog.Options{}, replayer{m})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s := newTestServer(make(chan command))
	s.log = l
	h := s.routes(http.NotFoundHandler())
	if rec, _ := do(t, h, "GET", "/v1/events?limit=1", "", nil); rec.Code != 200 {
		t.Fatalf("with a free slot: %d %s", rec.Code, rec.Body)
	}
	for i := 0; i < cap(s.eventReaders); i++ {
		s.eventReaders <- struct{}{} // readers in progress
	}
	rec, e := do(t, h, "GET", "/v1/events?limit=1", "", nil)
	if rec.Code != 503 || e.Error != "Busy" || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("with %d reads in progress: %d %s %v", cap(s.eventReaders), rec.Code, rec.Body, rec.Header())
	}
	<-s.eventReaders
	if rec, _ := do(t, h, "GET", "/v1/events?limit=1", "", nil); rec.Code != 200 {
		t.Fatalf("once a slot is free again: %d %s", rec.Code, rec.Body)
	}
	if cap(s.eventReaders) < 1 || cap(s.eventReaders) > 16 {
		t.Fatalf("bound %d", cap(s.eventReaders))
	}
}
