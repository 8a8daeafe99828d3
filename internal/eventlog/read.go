package eventlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// readWindow is the bytes a reader holds of a file at a time: reading or replaying the log
// costs this much memory (plus one record, if a record is larger), whatever the size of its
// segments. A variable only so that tests can make records cross windows.
var readWindow = 64 << 10

// ReadOnlyFile is a file opened for reading only.
type ReadOnlyFile interface {
	io.ReaderAt
	io.Closer
}

// ReaderFS is an FS that can open a file read-only, so that readers (Read, ScanFile) stream a
// file through a bounded window instead of reading it whole. The real file system has it; an
// FS without it (a test's file system in memory) is read with ReadFile.
type ReaderFS interface {
	OpenReader(name string) (ReadOnlyFile, error)
}

// OpenReader opens a file read-only.
func (OSFS) OpenReader(name string) (ReadOnlyFile, error) { return os.Open(name) }

// openReader opens path for reading through fsys: streaming if it can, else whole.
func openReader(fsys FS, path string) (ReadOnlyFile, error) {
	if rfs, ok := fsys.(ReaderFS); ok {
		return rfs.OpenReader(path)
	}
	data, err := fsys.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return bytesFile{data}, nil
}

type bytesFile struct{ b []byte }

func (f bytesFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(f.b)) {
		return 0, io.EOF
	}
	n := copy(p, f.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (bytesFile) Close() error { return nil }

// recordReader decodes the records of one file in order through a window of the file, which
// grows only to hold one record larger than it. It leaves the decoding to decodeRecord, and
// only tells a record cut short by the window (read more) from one cut short by the file.
type recordReader struct {
	f       ReadOnlyFile
	path    string
	maxSize int
	buf     []byte // the window: buf[:n] is the file from bufOff
	n       int
	bufOff  int64
	eof     bool  // the window reaches the end of the file
	off     int64 // where the next record starts
}

func newRecordReader(f ReadOnlyFile, path string, maxSize int) *recordReader {
	return &recordReader{f: f, path: path, maxSize: maxSize}
}

// fill loads the window from at.
func (r *recordReader) fill(at int64) error {
	if len(r.buf) == 0 {
		r.buf = make([]byte, readWindow)
	}
	n, err := r.f.ReadAt(r.buf, at)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: reading %s at %d: %w", ErrStorage, r.path, at, err)
	}
	r.n, r.bufOff, r.eof = n, at, n < len(r.buf)
	return nil
}

// peekHeader returns the header-sized bytes at at, from the window (loaded from at if it does
// not hold them). The caller has checked that the file holds them.
func (r *recordReader) peekHeader(at int64) ([]byte, error) {
	if len(r.buf) == 0 || at < r.bufOff || at+headerSize > r.bufOff+int64(r.n) {
		if err := r.fill(at); err != nil {
			return nil, err
		}
		if r.n < headerSize {
			return nil, fmt.Errorf("%w: reading %s at %d: short read", ErrStorage, r.path, at)
		}
	}
	return r.buf[at-r.bufOff : at-r.bufOff+headerSize], nil
}

// next decodes the record at r.off and moves past it. Its errors are decodeRecord's (io.EOF
// at a clean end of the file, errTornRecord for a record the file cuts short), or a storage
// error. The returned payload aliases the window: copy it to keep it past the next call.
func (r *recordReader) next() (Record, error) {
	if r.off < r.bufOff || r.off > r.bufOff+int64(r.n) || len(r.buf) == 0 {
		if err := r.fill(r.off); err != nil {
			return Record{}, err
		}
	}
	for {
		rec, next, err := decodeRecord(r.buf[:r.n], r.off-r.bufOff, r.maxSize)
		if err == nil {
			r.off = r.bufOff + next
			return rec, nil
		}
		// Only a record cut short (or a header that looks like the zeros of the end) can be
		// the window's doing; anything else is what the file holds.
		if r.eof || (!errors.Is(err, errTornRecord) && !errors.Is(err, io.EOF)) {
			return Record{}, err
		}
		if r.off == r.bufOff { // the record is larger than the window: grow it, once per doubling
			limit := recordSize(r.maxSize)
			if len(r.buf) >= limit {
				return Record{}, err
			}
			r.buf = make([]byte, min(2*len(r.buf), limit))
		}
		if err := r.fill(r.off); err != nil {
			return Record{}, err
		}
	}
}

// Read returns up to limit durable records with a sequence after after, oldest first, read from
// the segments on disk (records a snapshot compacted away are gone: the answer then starts at
// the oldest one kept). It does not disturb appends. It streams: its memory is one read window
// and the records it returns, whatever the size of the segments; records at or before after
// are decoded in the window and dropped.
func (l *Log) Read(after uint64, limit int) ([]Record, error) {
	durable := l.Durable()
	segs, _, err := l.listFiles(false)
	if err != nil {
		return nil, err
	}
	start := 0
	for i, s := range segs {
		if s.firstSeq <= after+1 {
			start = i
		}
	}
	var out []Record
	for _, s := range segs[start:] {
		path := filepath.Join(l.dir, s.name)
		f, err := openReader(l.opts.FS, path)
		if errors.Is(err, fs.ErrNotExist) {
			if len(out) > 0 {
				// Compacted away after the answer began: stop here rather than jump over the
				// segment, so that an answer never has a gap; the next page goes on from out's end.
				return out, nil
			}
			continue // compacted away before the answer began: it starts at the oldest one kept
		}
		if err != nil {
			return nil, fmt.Errorf("%w: reading %s: %w", ErrStorage, path, err)
		}
		var done bool
		out, done, err = readSegment(newRecordReader(f, path, l.opts.MaxRecordSize), s.firstSeq, after, durable, limit, out)
		_ = f.Close() // read-only: nothing to lose
		if err != nil || done || len(out) == limit {
			return out, err
		}
	}
	return out, nil
}

// readSegment appends to out the records of one segment after after and at most durable,
// until out holds limit. done says that the answer ends here: the durable records end in this
// segment. A record that does not decode where a durable record must be (its sequence would be
// at most durable: written and fsynced) is corruption, reported, never skipped: an answer has
// no gaps. Past durable it is the batch being written: the end.
func readSegment(r *recordReader, firstSeq, after, durable uint64, limit int, out []Record) ([]Record, bool, error) {
	expected := firstSeq // the sequence of the record at r.off
	for {
		rec, err := r.next()
		switch {
		case errors.Is(err, ErrStorage):
			return out, true, err
		case err == nil && rec.Seq > durable:
			return out, true, nil // a batch still being written
		case err == nil:
			if rec.Seq > after {
				rec.Payload = append([]byte(nil), rec.Payload...)
				out = append(out, rec)
				if len(out) == limit {
					return out, true, nil
				}
			}
			expected = rec.Seq + 1
			continue
		case errors.Is(err, io.EOF) && r.eof:
			return out, false, nil // the end of this segment: the next one goes on
		case expected > durable:
			return out, true, nil // the batch being written, torn by the write in flight
		}
		return out, true, &CorruptError{File: r.path, Offset: r.off, Err: err}
	}
}

// FileInfo describes one file of a log directory, for tools that inspect a log without opening
// it (cmd/vendinglog).
type FileInfo struct {
	Name     string
	Snapshot bool   // a snapshot; else a segment
	FirstSeq uint64 // a segment's first sequence; a snapshot's sequence
	Size     int64
}

// ListFiles lists the segments, then the snapshots, of the log in dir, by sequence. It only
// reads: it takes no lock and changes nothing, so it works on a log another process holds and
// on a quarantined one.
func ListFiles(dir string) ([]FileInfo, error) {
	l := &Log{dir: dir, opts: Options{FS: OSFS{}}}
	segs, snaps, err := l.listFiles(false)
	if err != nil {
		return nil, err
	}
	var out []FileInfo
	for i, group := range [][]segmentFile{segs, snaps} {
		for _, s := range group {
			fi := FileInfo{Name: s.name, Snapshot: i == 1, FirstSeq: s.firstSeq, Size: -1}
			if st, err := os.Stat(filepath.Join(dir, s.name)); err == nil {
				fi.Size = st.Size()
			}
			out = append(out, fi)
		}
	}
	return out, nil
}

// ScanFile decodes the records of one segment or snapshot file in order from offset from (0:
// the start; else where a record starts, such as one FindRecord found), read-only, through a
// bounded window, and calls fn with each record and its offset (the payload is valid only
// during the call). It returns the offset where it stopped: the end of the records and nil, or
// the offset of the first record that does not decode and a *CorruptError naming it (whose Err
// is io.ErrUnexpectedEOF for a record the file cuts short, as a torn write leaves it). An error
// from fn stops the scan and is returned as is. maxSize bounds a payload (0: the default).
func ScanFile(path string, from int64, maxSize int, fn func(off int64, rec Record) error) (int64, error) {
	if maxSize <= 0 {
		maxSize = DefaultMaxRecordSize
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrStorage, err)
	}
	defer func() { _ = f.Close() }()
	r := newRecordReader(f, path, maxSize)
	r.off = from
	for {
		at := r.off
		rec, err := r.next()
		switch {
		case errors.Is(err, io.EOF):
			return at, nil
		case errors.Is(err, ErrStorage):
			return at, err
		case err != nil:
			return at, &CorruptError{File: path, Offset: at, Err: err}
		}
		if err := fn(at, rec); err != nil {
			return at, err
		}
	}
}

// FindRecord looks in path, from offset from on (8-byte aligned), for the first offset where a
// whole record decodes: after damage, where readable records resume. It reads only.
func FindRecord(path string, from int64, maxSize int) (off int64, rec Record, found bool, err error) {
	if maxSize <= 0 {
		maxSize = DefaultMaxRecordSize
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, Record{}, false, fmt.Errorf("%w: %w", ErrStorage, err)
	}
	defer func() { _ = f.Close() }()
	st, err := f.Stat()
	if err != nil {
		return 0, Record{}, false, fmt.Errorf("%w: %w", ErrStorage, err)
	}
	r := newRecordReader(f, path, maxSize)
	from = (from + alignment - 1) &^ (alignment - 1)
	for p := from; p+headerSize <= st.Size(); p += alignment {
		// Cheap checks on the header first: in a damaged region most offsets hold garbage, and
		// a garbage length must not make the reader grow its window and read megabytes for it.
		h, err := r.peekHeader(p)
		if err != nil {
			return 0, Record{}, false, err
		}
		if n := binary.LittleEndian.Uint32(h[0:4]); h[4] == 0 || int(h[5]) != paddedLen(int(n))-int(n) ||
			uint64(n) > uint64(maxSize) || p+int64(recordSize(int(n))) > st.Size() {
			continue
		}
		r.off = p
		rec, err := r.next()
		if errors.Is(err, ErrStorage) {
			return 0, Record{}, false, err
		}
		if err == nil {
			rec.Payload = append([]byte(nil), rec.Payload...)
			return p, rec, true, nil
		}
	}
	return 0, Record{}, false, nil
}
