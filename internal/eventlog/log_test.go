package eventlog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"syscall"
	"testing"
)

const typeEvent RecordType = 16

// collector is a Replayer that keeps what it was given.
type collector struct {
	snapSeq  uint64
	snapData []byte
	records  []Record
}

func (c *collector) RestoreSnapshot(seq uint64, data []byte) error {
	c.snapSeq, c.snapData = seq, append([]byte(nil), data...)
	return nil
}

func (c *collector) ReplayRecord(r Record) error {
	r.Payload = append([]byte(nil), r.Payload...)
	c.records = append(c.records, r)
	return nil
}

func payload(i int) []byte { return []byte(fmt.Sprintf("event-%d", i)) }

func mustOpen(t *testing.T, dir string, opts Options) (*Log, *collector, ReplayStats) {
	t.Helper()
	c := &collector{}
	l, st, err := Open(dir, opts, c)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return l, c, st
}

func appendN(t *testing.T, l *Log, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		seq, err := l.Append(typeEvent, payload(i))
		if err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
		if seq != uint64(i) {
			t.Fatalf("Append %d got sequence %d", i, seq)
		}
	}
}

func checkRecords(t *testing.T, c *collector, from, to int) {
	t.Helper()
	if len(c.records) != to-from+1 {
		t.Fatalf("replayed %d records, want %d (%d..%d)", len(c.records), to-from+1, from, to)
	}
	for i, r := range c.records {
		want := from + i
		if r.Seq != uint64(want) || !bytes.Equal(r.Payload, payload(want)) || r.Type != typeEvent {
			t.Fatalf("record %d = seq %d %q, want %d %q", i, r.Seq, r.Payload, want, payload(want))
		}
	}
}

func TestAppendAndReplay(t *testing.T) {
	dir := t.TempDir()
	l, _, _ := mustOpen(t, dir, Options{})
	appendN(t, l, 1, 100)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l, c, st := mustOpen(t, dir, Options{})
	defer l.Close()
	checkRecords(t, c, 1, 100)
	if st.LastSeq != 100 || st.TornBytes != 0 {
		t.Fatalf("stats %+v", st)
	}
	appendN(t, l, 101, 1) // appends continue the sequence
}

func TestConcurrentAppendersShareSyncs(t *testing.T) {
	dir := t.TempDir()
	m := NewMetrics(nil)
	l, _, _ := mustOpen(t, dir, Options{Metrics: m})
	const writers, each = 32, 50
	var wg sync.WaitGroup
	seqs := make(chan uint64, writers*each)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				seq, err := l.Append(typeEvent, []byte("x"))
				if err != nil {
					t.Error(err)
					return
				}
				seqs <- seq
			}
		}()
	}
	wg.Wait()
	close(seqs)
	var got []int
	for s := range seqs {
		got = append(got, int(s))
	}
	sort.Ints(got)
	for i, s := range got {
		if s != i+1 {
			t.Fatalf("sequences not dense: %v", got)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	_, c, _ := mustOpen(t, dir, Options{})
	if len(c.records) != writers*each {
		t.Fatalf("replayed %d, want %d", len(c.records), writers*each)
	}
}

func TestSegmentsSnapshotsAndCompaction(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentSize: 512} // a few records per segment
	l, _, _ := mustOpen(t, dir, opts)
	appendN(t, l, 1, 100)
	segs, _, _ := l.listFiles(false)
	if len(segs) < 5 {
		t.Fatalf("only %d segments with a 512-byte limit", len(segs))
	}
	if err := l.SaveSnapshot(60, []byte("state@60")); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 101, 10)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	after, snaps, _ := (&Log{dir: dir, opts: Options{FS: OSFS{}}}).listFiles(false)
	if len(after) >= len(segs) || len(snaps) != 1 {
		t.Fatalf("compaction left %d of %d segments and %d snapshots", len(after), len(segs), len(snaps))
	}
	// Replay crosses the snapshot and the segment boundaries.
	l, c, st := mustOpen(t, dir, opts)
	defer l.Close()
	if c.snapSeq != 60 || string(c.snapData) != "state@60" || st.SnapshotSeq != 60 {
		t.Fatalf("snapshot %d %q", c.snapSeq, c.snapData)
	}
	checkRecords(t, c, 61, 110)
}

func TestSnapshotWithoutLaterRecords(t *testing.T) {
	dir := t.TempDir()
	l, _, _ := mustOpen(t, dir, Options{SegmentSize: 256})
	appendN(t, l, 1, 20)
	if err := l.SaveSnapshot(20, []byte("all")); err != nil {
		t.Fatal(err)
	}
	_ = l.Close()
	l, c, st := mustOpen(t, dir, Options{SegmentSize: 256})
	if len(c.records) != 0 || st.LastSeq != 20 {
		t.Fatalf("records %d last %d", len(c.records), st.LastSeq)
	}
	appendN(t, l, 21, 1)
	_ = l.Close()
}

func TestSecondWriterIsRefused(t *testing.T) {
	dir := t.TempDir()
	l, _, _ := mustOpen(t, dir, Options{})
	defer l.Close()
	if _, _, err := Open(dir, Options{}, &collector{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
}

// corruptFunc damages the log file at path around offset off.
type corruptFunc func(t *testing.T, path string, off int64)

func truncateAt(delta int64) corruptFunc {
	return func(t *testing.T, path string, off int64) {
		if err := os.Truncate(path, off+delta); err != nil {
			t.Fatal(err)
		}
	}
}

func flipByte(t *testing.T, path string, off int64) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func zeroRange(from, n int64) corruptFunc {
	return func(t *testing.T, path string, off int64) {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt(make([]byte, n), off+from); err != nil {
			t.Fatal(err)
		}
	}
}

func appendBytes(b []byte) corruptFunc {
	return func(t *testing.T, path string, _ int64) {
		f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.Write(b); err != nil {
			t.Fatal(err)
		}
	}
}

// recordOffset is the offset of the i-th record (1-based) of a single-segment log of
// payload(i) records.
func recordOffset(i int) int64 {
	var off int64
	for j := 1; j < i; j++ {
		off += int64(recordSize(len(payload(j))))
	}
	return off
}

func TestRecovery(t *testing.T) {
	const n = 10
	last := recordOffset(n)
	tests := []struct {
		name      string
		at        int64 // where the damage is done
		corrupt   corruptFunc
		wantErr   error // nil: repaired
		wantLast  int   // records left after repair
		wantTorn  bool
		wantBytes bool // bytes on disk unchanged (refused)
	}{
		{name: "torn tail: last record cut in its payload", at: last, corrupt: truncateAt(headerSize + 3), wantLast: n - 1, wantTorn: true},
		{name: "torn tail: last record cut in its header", at: last, corrupt: truncateAt(5), wantLast: n - 1, wantTorn: true},
		{name: "partial record appended after the last", at: last, corrupt: appendBytes([]byte{9, 0, 0, 0, 16}), wantLast: n, wantTorn: true},
		{name: "zeros after the last record are the end", at: last, corrupt: appendBytes(make([]byte, 100)), wantLast: n},
		{name: "bit flip in the middle is corruption", at: recordOffset(4) + headerSize, corrupt: flipByte, wantErr: ErrCRCMismatch, wantBytes: true},
		// The last record is the last batch: a flipped bit there is what a torn write leaves.
		{name: "bit flip in the last record is a torn tail", at: last + headerSize, corrupt: flipByte, wantLast: n - 1, wantTorn: true},
		{name: "bit flip in the record before the last is corruption", at: recordOffset(n-1) + headerSize, corrupt: flipByte, wantErr: ErrCRCMismatch, wantBytes: true},
		{name: "bit flip in a sequence is a crc mismatch", at: recordOffset(3) + 8, corrupt: flipByte, wantErr: ErrCRCMismatch, wantBytes: true},
		{name: "zeroed header mid-log is corruption", at: recordOffset(5), corrupt: zeroRange(0, headerSize), wantErr: ErrBadRecord, wantBytes: true},
		{name: "huge length is refused before allocating", at: recordOffset(2) + 3, corrupt: flipByte, wantErr: ErrRecordTooBig, wantBytes: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			l, _, _ := mustOpen(t, dir, Options{})
			appendN(t, l, 1, n)
			_ = l.Close()
			path := filepath.Join(dir, segmentName(1))
			tt.corrupt(t, path, tt.at)
			before, _ := os.ReadFile(path)

			c := &collector{}
			l, st, err := Open(dir, Options{}, c)
			if tt.wantErr != nil {
				var ce *CorruptError
				if !errors.Is(err, ErrCorrupt) || !errors.Is(err, tt.wantErr) || !errors.As(err, &ce) {
					t.Fatalf("Open err = %v, want corruption %v", err, tt.wantErr)
				}
				if ce.File != path {
					t.Fatalf("error names %s, want %s", ce.File, path)
				}
				after, _ := os.ReadFile(path)
				if tt.wantBytes && !bytes.Equal(before, after) {
					t.Fatal("a refused log was changed on disk")
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			checkRecords(t, c, 1, tt.wantLast)
			if (st.TornBytes > 0) != tt.wantTorn {
				t.Fatalf("torn bytes %d, want torn=%v", st.TornBytes, tt.wantTorn)
			}
			appendN(t, l, tt.wantLast+1, 2) // the repaired log takes appends
			_ = l.Close()
			_, c, _ = mustOpen(t, dir, Options{})
			checkRecords(t, c, 1, tt.wantLast+2)
		})
	}
}

// A record torn by power loss: the file has its full length but a sector of it is zeros.
func TestTornSectorAtTailIsRepaired(t *testing.T) {
	dir := t.TempDir()
	l, _, _ := mustOpen(t, dir, Options{})
	appendN(t, l, 1, 3)
	big := make([]byte, 3000)
	for i := range big {
		big[i] = 0xAB
	}
	if _, err := l.Append(typeEvent, big); err != nil {
		t.Fatal(err)
	}
	_ = l.Close()
	path := filepath.Join(dir, segmentName(1))
	// zero the second full sector of the big record
	zeroRange(1024-recordOffset(4), sectorSize)(t, path, recordOffset(4))
	l, c, st := mustOpen(t, dir, Options{})
	defer l.Close()
	checkRecords(t, c, 1, 3)
	if st.TornBytes == 0 {
		t.Fatal("torn sector not repaired")
	}
}

func TestCorruptSnapshotRefuses(t *testing.T) {
	dir := t.TempDir()
	l, _, _ := mustOpen(t, dir, Options{})
	appendN(t, l, 1, 5)
	if err := l.SaveSnapshot(5, []byte("state")); err != nil {
		t.Fatal(err)
	}
	_ = l.Close()
	flipByte(t, filepath.Join(dir, snapshotName(5)), headerSize+1)
	if _, _, err := Open(dir, Options{}, &collector{}); !errors.Is(err, ErrCRCMismatch) {
		t.Fatalf("Open with corrupt snapshot: %v", err)
	}
}

func TestSequenceGapIsCorruption(t *testing.T) {
	dir := t.TempDir()
	l, _, _ := mustOpen(t, dir, Options{})
	appendN(t, l, 1, 3)
	_ = l.Close()
	// A record with sequence 7 appended by hand.
	appendBytes(appendRecord(nil, 7, typeEvent, []byte("x")))(t, filepath.Join(dir, segmentName(1)), 0)
	if _, _, err := Open(dir, Options{}, &collector{}); !errors.Is(err, ErrSequenceGap) {
		t.Fatalf("Open: %v, want ErrSequenceGap", err)
	}
}

// faultFS injects failures into the segment files' writes and syncs.
type faultFS struct {
	OSFS
	mu        sync.Mutex
	writeErr  error
	shortBy   int
	syncErr   error
	failAfter int // succeed this many writes first
}

type faultFile struct {
	File
	fs *faultFS
}

func (f *faultFS) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	file, err := f.OSFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return faultFile{file, f}, nil
}

func (f faultFile) Write(p []byte) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.fs.failAfter > 0 {
		f.fs.failAfter--
		return f.File.Write(p)
	}
	if f.fs.writeErr != nil {
		return 0, f.fs.writeErr
	}
	if f.fs.shortBy > 0 && len(p) > f.fs.shortBy {
		n, err := f.File.Write(p[:len(p)-f.fs.shortBy])
		if err != nil {
			return n, err
		}
		return n, nil
	}
	return f.File.Write(p)
}

func (f faultFile) Sync() error {
	f.fs.mu.Lock()
	err := f.fs.syncErr
	f.fs.mu.Unlock()
	if err != nil {
		return err
	}
	return f.File.Sync()
}

func TestStorageFaultsPoisonTheLog(t *testing.T) {
	tests := []struct {
		name  string
		fault func(*faultFS)
		cause error
	}{
		{"ENOSPC on write", func(f *faultFS) { f.writeErr = syscall.ENOSPC }, syscall.ENOSPC},
		{"short write", func(f *faultFS) { f.shortBy = 7 }, nil},
		{"failed fsync", func(f *faultFS) { f.syncErr = syscall.EIO }, syscall.EIO},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			fs := &faultFS{}
			l, _, _ := mustOpen(t, dir, Options{FS: fs})
			appendN(t, l, 1, 3)
			fs.mu.Lock()
			tt.fault(fs)
			fs.mu.Unlock()
			_, err := l.Append(typeEvent, payload(4))
			if !errors.Is(err, ErrStorage) || (tt.cause != nil && !errors.Is(err, tt.cause)) {
				t.Fatalf("Append under fault: %v", err)
			}
			// Poisoned: no retry-and-pretend, even once the fault is gone.
			fs.mu.Lock()
			fs.writeErr, fs.shortBy, fs.syncErr = nil, 0, nil
			fs.mu.Unlock()
			if _, err := l.Append(typeEvent, payload(4)); !errors.Is(err, ErrStorage) {
				t.Fatalf("Append after a failure: %v, want the sticky storage error", err)
			}
			_ = l.Close()
			// A new process finds every acknowledged record; an unacknowledged torn one is cut.
			l, c, _ := mustOpen(t, dir, Options{})
			defer l.Close()
			if len(c.records) < 3 {
				t.Fatalf("lost acknowledged records: %d", len(c.records))
			}
			checkRecords(t, c, 1, len(c.records))
		})
	}
}

func TestRecordSizeLimit(t *testing.T) {
	l, _, _ := mustOpen(t, t.TempDir(), Options{MaxRecordSize: 64})
	defer l.Close()
	if _, err := l.Append(typeEvent, make([]byte, 65)); !errors.Is(err, ErrRecordTooBig) {
		t.Fatalf("oversized append: %v", err)
	}
}

// FuzzDecodeRecord: no input panics, allocates past the input or loops.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(appendRecord(nil, 1, typeEvent, []byte("hello")))
	f.Add(appendRecord(appendRecord(nil, 1, typeEvent, nil), 2, typeEvent, make([]byte, 600)))
	f.Add(make([]byte, headerSize))
	f.Fuzz(func(t *testing.T, data []byte) {
		var off int64
		for i := 0; i < len(data); i++ {
			r, next, err := decodeRecord(data, off, 1<<20)
			if err != nil {
				return
			}
			if next <= off || next > int64(len(data)) || len(r.Payload) > len(data) {
				t.Fatalf("decode advanced from %d to %d of %d", off, next, len(data))
			}
			if binary.LittleEndian.Uint32(data[off:]) != uint32(len(r.Payload)) {
				t.Fatal("payload length mismatch")
			}
			off = next
		}
	})
}

// countingReplayer counts records and keeps nothing, so that Open's own memory shows.
type countingReplayer struct{ n int }

func (*countingReplayer) RestoreSnapshot(uint64, []byte) error { return nil }
func (c *countingReplayer) ReplayRecord(Record) error          { c.n++; return nil }

// Replay streams a segment through the readers' window: opening a log costs the state it
// rebuilds, not the size of its last segment (64 MiB by default, in a pod limited to 256 MiB).
func TestReplayMemoryIsIndependentOfSegmentSize(t *testing.T) {
	dir := t.TempDir()
	l, _, err := Open(dir, Options{SegmentSize: 1 << 30}, &countingReplayer{})
	if err != nil {
		t.Fatal(err)
	}
	const n, size = 200_000, 100 // one 24 MiB segment
	var last uint64
	p := bytes.Repeat([]byte{'x'}, size)
	for i := 0; i < n; i++ {
		if last, _, err = l.Submit(16, p); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.WaitDurable(last); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	r := &countingReplayer{}
	l, st, err := Open(dir, Options{SegmentSize: 1 << 30}, r)
	runtime.ReadMemStats(&after)
	if err != nil || r.n != n || st.LastSeq != n {
		t.Fatalf("replayed %d records up to %d: %v", r.n, st.LastSeq, err)
	}
	defer l.Close()
	const budget = 2 << 20
	alloc := after.TotalAlloc - before.TotalAlloc
	if alloc > budget {
		t.Fatalf("Open of a %d MiB segment allocated %d bytes, budget %d", n*(size+28)>>20, alloc, budget)
	}
	t.Logf("Open of a %d MiB segment allocated %d KiB", n*(size+28)>>20, alloc>>10)
}

// A Read never jumps over a record it cannot decode: where a durable record must be, the
// damage is reported (file and offset), not skipped into an answer with a gap.
func TestReadReportsDamageInsteadOfAGap(t *testing.T) {
	dir := t.TempDir()
	l, _, err := Open(dir, Options{SegmentSize: 256}, &countingReplayer{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := 1; i <= 40; i++ {
		if _, err := l.Append(16, payload(i)); err != nil {
			t.Fatal(err)
		}
	}
	seg := filepath.Join(dir, segmentName(1))
	data, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	data[headerSize+recordSize(len(payload(1)))] ^= 0x40 // the second record's payload
	if err := os.WriteFile(seg, data, 0o640); err != nil {
		t.Fatal(err)
	}
	recs, err := l.Read(0, 1000)
	var ce *CorruptError
	if !errors.As(err, &ce) || ce.File != seg {
		seqs := make([]uint64, 0, len(recs))
		for _, r := range recs {
			seqs = append(seqs, r.Seq)
		}
		t.Fatalf("Read over a damaged record: %v, records %v; want a CorruptError naming %s", err, seqs, seg)
	}
	if len(recs) != 1 || recs[0].Seq != 1 {
		t.Fatalf("records before the damage: %d, want only record 1", len(recs))
	}
	if recs, err := l.Read(20, 5); err != nil || len(recs) != 5 || recs[0].Seq != 21 {
		t.Fatalf("a page after the damaged segment: %d records, %v", len(recs), err)
	}
}
