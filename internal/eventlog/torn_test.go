package eventlog

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// batchLog writes singles one-record batches, then one batch of batched records (submitted
// together, made durable by one write and one fdatasync), with payloads of size bytes, and
// returns the segment path and the offset of each record (1-based; offs[n+1] is the end).
func batchLog(t *testing.T, dir string, singles, batched, size int) (string, []int64) {
	t.Helper()
	l, _, _ := mustOpen(t, dir, Options{})
	p := func(i int) []byte { return bytes.Repeat([]byte{byte('a' + i%26)}, size) }
	for i := 1; i <= singles; i++ {
		if _, err := l.Append(typeEvent, p(i)); err != nil {
			t.Fatal(err)
		}
	}
	var last func() error
	for i := singles + 1; i <= singles+batched; i++ {
		_, wait, err := l.Submit(typeEvent, p(i))
		if err != nil {
			t.Fatal(err)
		}
		last = wait
	}
	if last != nil {
		if err := last(); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	offs := []int64{0}
	for i := 1; i <= singles+batched+1; i++ {
		offs = append(offs, int64(i-1)*int64(recordSize(size)))
	}
	return filepath.Join(dir, segmentName(1)), offs
}

// TestTornLastBatch: whatever a power cut can do to the last group commit (issue 9, defect 1)
// is repaired by cutting the log before the first damaged record; the same damage to a batch
// that a later batch follows is refused as corruption, naming the file and the offset.
func TestTornLastBatch(t *testing.T) {
	const singles, batched = 4, 6
	tests := []struct {
		name    string
		size    int // payload bytes
		damage  func(t *testing.T, path string, offs []int64)
		keep    int   // records left after repair; -1: refused
		wantOff int64 // for refusals: offset named, as record index
	}{
		{"88-byte last record across offset 512, second sector zero", 64, func(t *testing.T, path string, offs []int64) {
			// record 6 (the second of the batch) spans [440,528): zero from 512 to its end.
			zeroRange(0, offs[7]-512)(t, path, 512)
		}, 5, 0},
		{"last 20 bytes of the segment zero within its size", 64, func(t *testing.T, path string, offs []int64) {
			zeroRange(0, 20)(t, path, offs[singles+batched+1]-20)
		}, singles + batched - 1, 0},
		{"first record of the batch with a zeroed sector-sized piece", 600, func(t *testing.T, path string, offs []int64) {
			zeroRange(100, 400)(t, path, offs[singles+1])
		}, singles, 0},
		{"first page of the batch lost", 600, func(t *testing.T, path string, offs []int64) {
			zeroRange(0, 4096-offs[singles+1]%4096)(t, path, offs[singles+1])
		}, singles, 0},
		{"first header of the batch garbage", 64, func(t *testing.T, path string, offs []int64) {
			flipByte(t, path, offs[singles+1]+4) // type byte
		}, singles, 0},
		{"batch cut short in its third record", 64, func(t *testing.T, path string, offs []int64) {
			truncateAt(30)(t, path, offs[singles+3])
		}, singles + 2, 0},
		{"middle record of the batch garbage", 64, func(t *testing.T, path string, offs []int64) {
			flipByte(t, path, offs[singles+3]+headerSize+5)
		}, singles + 2, 0},
		{"flip in the single batch before the last is corruption", 64, func(t *testing.T, path string, offs []int64) {
			flipByte(t, path, offs[singles]+headerSize+5)
		}, -1, singles},
		{"zeroed record before the last batch is corruption", 64, func(t *testing.T, path string, offs []int64) {
			zeroRange(0, offs[singles+1]-offs[singles])(t, path, offs[singles])
		}, -1, singles},
		{"torn piece before the last batch is corruption", 600, func(t *testing.T, path string, offs []int64) {
			zeroRange(100, 512)(t, path, offs[2])
		}, -1, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path, offs := batchLog(t, dir, singles, batched, tt.size)
			tt.damage(t, path, offs)
			before, _ := os.ReadFile(path)
			c := &collector{}
			l, st, err := Open(dir, Options{}, c)
			if tt.keep < 0 {
				var ce *CorruptError
				if !errors.As(err, &ce) || !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Open = %v, want a CorruptError", err)
				}
				if ce.File != path || ce.Offset != offs[tt.wantOff] {
					t.Fatalf("error names %s at %d, want %s at %d", ce.File, ce.Offset, path, offs[tt.wantOff])
				}
				if !strings.Contains(err.Error(), "later batch") {
					t.Fatalf("error does not say why: %v", err)
				}
				if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
					t.Fatal("a refused log was changed on disk")
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if len(c.records) != tt.keep || st.TornBytes == 0 {
				t.Fatalf("replayed %d records (torn %d bytes), want %d and a repaired tail", len(c.records), st.TornBytes, tt.keep)
			}
			for i, r := range c.records {
				if r.Seq != uint64(i+1) {
					t.Fatalf("record %d has sequence %d", i, r.Seq)
				}
			}
			if _, err := l.Append(typeEvent, []byte("after")); err != nil {
				t.Fatal(err)
			}
			_ = l.Close()
			_, c, st = mustOpen(t, dir, Options{})
			if len(c.records) != tt.keep+1 || st.TornBytes != 0 {
				t.Fatalf("after repair and one append: %d records, torn %d", len(c.records), st.TornBytes)
			}
		})
	}
}

// TestLaterBatch is the decision alone: which valid records after a bad one prove that it had
// been made durable.
func TestLaterBatch(t *testing.T) {
	rec := func(seq uint64, idx int) []byte {
		return appendBatchRecord(nil, seq, typeEvent, []byte("payload!"), idx)
	}
	bad := make([]byte, 32) // a zero header followed by data, at offset 0, expected sequence 10
	bad[27] = 1
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name  string
		data  []byte
		later bool
	}{
		{"nothing follows", bad, false},
		{"zeros follow", cat(bad, make([]byte, 100)), false},
		{"the rest of the batch that began at the bad record", cat(bad, rec(11, 1), rec(12, 2)), false},
		{"the rest of a batch that began before it", cat(bad, rec(11, 4)), false},
		{"a later batch", cat(bad, rec(11, 0)), true},
		{"the batch, then a later one", cat(bad, rec(11, 1), rec(12, 0)), true},
		{"an old-format record (index 0) after the bad one", cat(bad, rec(12, 0)), true},
		{"a stale sequence", cat(bad, rec(9, 0)), true},
		{"saturated index reaching back to the batch", cat(bad, rec(10+maxBatchIndex, maxBatchIndex)), false},
		{"saturated index that may be a later batch", cat(bad, rec(11+maxBatchIndex, maxBatchIndex)), true},
		{"index larger than its sequence", cat(bad, rec(11, 12)), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, later := laterBatch(tt.data, 0, 10)
			if later != tt.later {
				t.Fatalf("laterBatch = %v, want %v", later, tt.later)
			}
		})
	}
}

// TestDamageBeforeTheLastSegmentIsCorruption: every segment but the last was whole before the
// next was created, so any damage there is corruption, even where it would be a torn tail in
// the last segment; the error names the file and the offset, and nothing is changed on disk.
func TestDamageBeforeTheLastSegmentIsCorruption(t *testing.T) {
	tests := []struct {
		name    string
		damage  corruptFunc
		wantErr error
		at      int // record (1-based) of the first segment where the damage is done
		named   int // segment named by the error: 0 the first, 1 the second
	}{
		{"flip in the last record of a segment", func(t *testing.T, path string, off int64) {
			flipByte(t, path, off+headerSize+1)
		}, ErrCRCMismatch, 0, 0},
		{"segment cut short in its last record", truncateAt(headerSize + 2), ErrBadRecord, 0, 0},
		{"zeroed header then data", zeroRange(0, headerSize), ErrBadRecord, 1, 0},
		// Zeros read as the end of the first segment: the second then does not follow it.
		{"last record zeroed", zeroRange(0, int64(recordSize(len(payload(1))))), ErrSequenceGap, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			opts := Options{SegmentSize: 200}
			l, _, _ := mustOpen(t, dir, opts)
			appendN(t, l, 1, 30)
			_ = l.Close()
			segs, _, _ := (&Log{dir: dir, opts: Options{FS: OSFS{}}}).listFiles(false)
			if len(segs) < 3 {
				t.Fatalf("%d segments", len(segs))
			}
			first := filepath.Join(dir, segs[0].name)
			n := int(segs[1].firstSeq - segs[0].firstSeq) // records in the first segment
			rec := n                                      // its last record, unless tt.at says
			if tt.at > 0 {
				rec = tt.at
			}
			off := recordOffset(rec)
			tt.damage(t, first, off)
			before, _ := os.ReadFile(first)
			_, _, err := Open(dir, opts, &collector{})
			var ce *CorruptError
			if !errors.As(err, &ce) || !errors.Is(err, tt.wantErr) {
				t.Fatalf("Open = %v, want a CorruptError with %v", err, tt.wantErr)
			}
			wantFile, wantOff := first, off
			if tt.named == 1 {
				wantFile, wantOff = filepath.Join(dir, segs[1].name), 0
			}
			if ce.File != wantFile || ce.Offset != wantOff {
				t.Fatalf("error names %s at %d, want %s at %d", ce.File, ce.Offset, wantFile, wantOff)
			}
			if after, _ := os.ReadFile(first); !bytes.Equal(before, after) {
				t.Fatal("a refused log was changed on disk")
			}
		})
	}
}

// TestCorruptSnapshotNamesIt: a damaged snapshot is refused with its file and offset 0, whatever
// the damage (a crash cannot damage one: it is fsynced before its rename).
func TestCorruptSnapshotNamesIt(t *testing.T) {
	for _, tt := range []struct {
		name   string
		damage corruptFunc
	}{
		{"flipped bit", flipByte},
		{"cut short", truncateAt(3)},
		{"zeroed payload", zeroRange(0, 5)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			l, _, _ := mustOpen(t, dir, Options{})
			appendN(t, l, 1, 5)
			if err := l.SaveSnapshot(5, []byte("state")); err != nil {
				t.Fatal(err)
			}
			_ = l.Close()
			path := filepath.Join(dir, snapshotName(5))
			tt.damage(t, path, headerSize)
			_, _, err := Open(dir, Options{}, &collector{})
			var ce *CorruptError
			if !errors.As(err, &ce) || ce.File != path || ce.Offset != 0 {
				t.Fatalf("Open = %v, want a CorruptError naming %s", err, path)
			}
		})
	}
}

// TestDamageUnderTheSnapshotBeforeTheLastBatch: a record that the snapshot covers but that is
// still in the last segment is judged against its own sequence, not the snapshot's: damage to
// it, followed by the batch that began right after the snapshot, is corruption, not a torn
// tail (cutting there would drop that acknowledged batch).
func TestDamageUnderTheSnapshotBeforeTheLastBatch(t *testing.T) {
	dir := t.TempDir()
	l, _, _ := mustOpen(t, dir, Options{})
	appendN(t, l, 1, 8)
	if err := l.SaveSnapshot(8, []byte("state@8")); err != nil {
		t.Fatal(err)
	}
	var wait func() error
	for i := 9; i <= 12; i++ { // one group commit: 9..12
		_, w, err := l.Submit(typeEvent, payload(i))
		if err != nil {
			t.Fatal(err)
		}
		wait = w
	}
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	_ = l.Close()
	path := filepath.Join(dir, segmentName(1))
	// Record 8, the last the snapshot covers: the batch after it began at 9.
	flipByte(t, path, recordOffset(8)+headerSize)
	_, _, err := Open(dir, Options{}, &collector{})
	var ce *CorruptError
	if !errors.As(err, &ce) || ce.File != path || ce.Offset != recordOffset(8) {
		t.Fatalf("Open = %v, want a CorruptError at record 8 (offset %d)", err, recordOffset(8))
	}
}
