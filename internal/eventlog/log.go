package eventlog

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	segmentSuffix  = ".log"
	snapshotPrefix = "snapshot-"
	snapshotSuffix = ".snap"
	tmpSuffix      = ".tmp"
	lockName       = "LOCK"

	// DefaultSegmentSize is the size past which the log starts a new segment.
	DefaultSegmentSize = 64 << 20
)

// Options configure a Log. The zero value is the real file system with default sizes.
type Options struct {
	FS            FS
	SegmentSize   int64
	MaxRecordSize int
	Logger        *slog.Logger
	Metrics       *Metrics
}

func (o *Options) defaults() {
	if o.FS == nil {
		o.FS = OSFS{}
	}
	if o.SegmentSize <= 0 {
		o.SegmentSize = DefaultSegmentSize
	}
	if o.MaxRecordSize <= 0 {
		o.MaxRecordSize = DefaultMaxRecordSize
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Replayer receives what Open recovers: first the newest snapshot, if any, then every record
// after it, in order. A record's payload is valid only during the call (replay streams the
// segments through a reused window): copy what must outlive it.
type Replayer interface {
	RestoreSnapshot(seq uint64, data []byte) error
	ReplayRecord(r Record) error
}

// ReplayStats says what Open found.
type ReplayStats struct {
	SnapshotSeq  uint64        // sequence the snapshot was taken at (0: none)
	Records      int           // records replayed after it
	LastSeq      uint64        // sequence of the last record
	TornBytes    int64         // bytes truncated from a torn tail
	Duration     time.Duration // time spent opening and replaying
	SegmentCount int
}

// Log is an open event log. Append is safe for concurrent use.
type Log struct {
	dir     string
	opts    Options
	release func() error

	mu       sync.Mutex
	cond     *sync.Cond // broadcast whenever a flush ends
	cur      *batch     // records waiting for the next flush
	flushing bool       // a leader is writing a batch
	nextSeq  uint64
	durable  uint64
	failed   error // sticky: a failed write or fsync poisons the log
	closed   bool

	// owned by the leader of the flush in progress
	seg     File
	segSize int64

	snapMu sync.Mutex // one snapshot at a time
}

type batch struct {
	buf      []byte
	firstSeq uint64
	lastSeq  uint64
	records  int
}

// Open locks dir, replays the newest snapshot and the records after it into r, repairs a torn
// tail, and returns the log ready for appends. Corruption is an error that names the file and
// offset; nothing is changed on disk then.
func Open(dir string, opts Options, r Replayer) (*Log, ReplayStats, error) {
	start := time.Now()
	opts.defaults()
	fs := opts.FS
	var stats ReplayStats
	if err := fs.MkdirAll(dir, 0o750); err != nil {
		return nil, stats, fmt.Errorf("%w: creating %s: %w", ErrStorage, dir, err)
	}
	release, err := fs.Lock(filepath.Join(dir, lockName))
	if err != nil {
		if errors.Is(err, ErrLocked) {
			return nil, stats, fmt.Errorf("%w: %s", ErrLocked, dir)
		}
		return nil, stats, fmt.Errorf("%w: locking %s: %w", ErrStorage, dir, err)
	}
	l := &Log{dir: dir, opts: opts, release: release, cur: &batch{}}
	l.cond = sync.NewCond(&l.mu)
	if err := l.recover(r, &stats); err != nil {
		_ = release()
		return nil, stats, err
	}
	l.nextSeq = stats.LastSeq + 1
	l.durable = stats.LastSeq
	stats.Duration = time.Since(start)
	if m := opts.Metrics; m != nil {
		m.ReplaySeconds.Set(stats.Duration.Seconds())
		m.ReplayedRecords.Set(float64(stats.Records))
	}
	return l, stats, nil
}

type segmentFile struct {
	name     string
	firstSeq uint64
}

// listFiles finds segments and snapshots (sorted by sequence). At recovery (removeTemp) it also
// removes the temp files of creations that a crash interrupted; later, a temp file may be a
// creation in progress.
func (l *Log) listFiles(removeTemp bool) (segs, snaps []segmentFile, err error) {
	entries, err := l.opts.FS.ReadDir(l.dir)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: listing %s: %w", ErrStorage, l.dir, err)
	}
	for _, e := range entries {
		name := e.Name()
		switch {
		case strings.HasSuffix(name, tmpSuffix):
			if !removeTemp {
				continue
			}
			if err := l.opts.FS.Remove(filepath.Join(l.dir, name)); err != nil {
				return nil, nil, fmt.Errorf("%w: removing %s: %w", ErrStorage, name, err)
			}
		case strings.HasSuffix(name, segmentSuffix):
			if seq, err := strconv.ParseUint(strings.TrimSuffix(name, segmentSuffix), 16, 64); err == nil {
				segs = append(segs, segmentFile{name, seq})
			}
		case strings.HasPrefix(name, snapshotPrefix) && strings.HasSuffix(name, snapshotSuffix):
			hex := strings.TrimSuffix(strings.TrimPrefix(name, snapshotPrefix), snapshotSuffix)
			if seq, err := strconv.ParseUint(hex, 16, 64); err == nil {
				snaps = append(snaps, segmentFile{name, seq})
			}
		}
	}
	bySeq := func(s []segmentFile) { sort.Slice(s, func(i, j int) bool { return s[i].firstSeq < s[j].firstSeq }) }
	bySeq(segs)
	bySeq(snaps)
	return segs, snaps, nil
}

func (l *Log) recover(r Replayer, stats *ReplayStats) error {
	segs, snaps, err := l.listFiles(true)
	if err != nil {
		return err
	}
	// Make the directory as this process sees it durable before building on it: a predecessor
	// killed between a file's rename and its directory fsync left a name that only the page
	// cache knows, and records appended to that file would vanish with it in a power cut. The
	// removals of temp files above become durable with it.
	if err := l.opts.FS.SyncDir(l.dir); err != nil {
		return fmt.Errorf("%w: syncing directory %s: %w", ErrStorage, l.dir, err)
	}
	stats.SegmentCount = len(segs)
	if len(snaps) > 0 {
		s := snaps[len(snaps)-1]
		rec, err := l.readSnapshot(s.name)
		if err != nil {
			return err
		}
		if err := r.RestoreSnapshot(rec.Seq, rec.Payload); err != nil {
			return &CorruptError{File: filepath.Join(l.dir, s.name), Offset: 0, Err: err}
		}
		stats.SnapshotSeq, stats.LastSeq = rec.Seq, rec.Seq
	}
	// A segment is needed if it may hold records after the snapshot: the next segment starts
	// after snapshot+1.
	first := 0
	for i := range segs {
		if i+1 < len(segs) && segs[i+1].firstSeq <= stats.SnapshotSeq+1 {
			first = i + 1
		}
	}
	for i := first; i < len(segs); i++ {
		last := i == len(segs)-1
		if err := l.replaySegment(segs[i], last, r, stats); err != nil {
			return err
		}
	}
	if len(segs) == 0 {
		return l.createSegment(stats.LastSeq + 1)
	}
	return nil
}

func (l *Log) readSnapshot(name string) (Record, error) {
	path := filepath.Join(l.dir, name)
	data, err := l.opts.FS.ReadFile(path)
	if err != nil {
		return Record{}, fmt.Errorf("%w: reading %s: %w", ErrStorage, path, err)
	}
	rec, next, err := decodeRecord(data, 0, len(data))
	if err == nil && (rec.Type != TypeSnapshot || next != int64(len(data))) {
		err = fmt.Errorf("%w: not a single snapshot record", ErrBadRecord)
	}
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, errTornRecord) {
			err = fmt.Errorf("%w: snapshot is incomplete", ErrBadRecord)
		}
		return Record{}, &CorruptError{File: path, Offset: 0, Err: err}
	}
	return rec, nil
}

func (l *Log) replaySegment(s segmentFile, last bool, r Replayer, stats *ReplayStats) error {
	path := filepath.Join(l.dir, s.name)
	f, err := openReader(l.opts.FS, path)
	if err != nil {
		return fmt.Errorf("%w: reading %s: %w", ErrStorage, path, err)
	}
	defer func() { _ = f.Close() }()
	// The common case streams the segment through a bounded window, so that replay costs the
	// state, not the segment's size. Anything else than a whole record or a clean end the
	// window confirms (a bad record, zeros the window cannot see past) is decided on the whole
	// file by replayWhole: the rare path, where memory matters less than the right answer.
	rr := newRecordReader(f, path, l.opts.MaxRecordSize)
	expected := s.firstSeq // the sequence of the record at rr.off
	for {
		off := rr.off
		rec, err := rr.next()
		switch {
		case err == nil:
			if err := l.replayRecord(path, off, rec, r, stats); err != nil {
				return err
			}
			expected = rec.Seq + 1
			continue
		case errors.Is(err, io.EOF) && rr.eof:
			if last {
				return l.openSegmentForAppend(path, off)
			}
			return nil
		case errors.Is(err, ErrStorage):
			return err
		}
		return l.replayWhole(path, off, expected, last, r, stats)
	}
}

// replayWhole replays a segment from off on with the file read whole, and decides what a
// record that does not decode means (badRecord).
func (l *Log) replayWhole(path string, off int64, expected uint64, last bool, r Replayer, stats *ReplayStats) error {
	data, err := l.opts.FS.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%w: reading %s: %w", ErrStorage, path, err)
	}
	for {
		rec, next, err := decodeRecord(data, off, l.opts.MaxRecordSize)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return l.badRecord(path, data, off, expected, last, err, stats)
		}
		if err := l.replayRecord(path, off, rec, r, stats); err != nil {
			return err
		}
		expected = rec.Seq + 1
		off = next
	}
	if last {
		return l.openSegmentForAppend(path, off)
	}
	return nil
}

// replayRecord hands a decoded record at off to the replayer, unless the snapshot covers it,
// checking that sequences follow each other.
func (l *Log) replayRecord(path string, off int64, rec Record, r Replayer, stats *ReplayStats) error {
	switch {
	case rec.Seq <= stats.SnapshotSeq:
		// Covered by the snapshot; the segment just was not compacted yet.
	case rec.Seq != stats.LastSeq+1:
		return &CorruptError{File: path, Offset: off,
			Err: fmt.Errorf("%w: record %d follows %d", ErrSequenceGap, rec.Seq, stats.LastSeq)}
	default:
		if err := r.ReplayRecord(rec); err != nil {
			return &CorruptError{File: path, Offset: off, Err: err}
		}
		stats.Records++
		stats.LastSeq = rec.Seq
	}
	return nil
}

// badRecord decides what a record that does not decode at off means. In the last segment,
// unless a record of a later batch follows (laterBatch), it is the torn tail of the batch a
// power cut interrupted: repaired. Anywhere else it is corruption: a segment is closed only
// after its last batch was fsynced, and a new one is created (and its directory fsynced)
// before any batch is written into it.
func (l *Log) badRecord(path string, data []byte, off int64, expected uint64, last bool, err error, stats *ReplayStats) error {
	if last && errors.Is(err, ErrRecordTooBig) {
		if rec, _, whole := decodeRecord(data, off, len(data)); whole == nil {
			// Whole and checksummed, only larger than this log accepts (it was opened with a
			// smaller MaxRecordSize): written and synced, not torn. Never cut it.
			return &CorruptError{File: path, Offset: off, Err: fmt.Errorf("%w (record %d is whole)", err, rec.Seq)}
		}
	}
	if last {
		at, seq, later := laterBatch(data, off, expected)
		if !later {
			return l.repairTornTail(path, data, off, stats)
		}
		err = fmt.Errorf("%w (record %d of a later batch follows at offset %d, so this one had been made durable)",
			err, seq, at)
	} else if errors.Is(err, errTornRecord) {
		err = fmt.Errorf("%w: record cut short before the last segment", ErrBadRecord)
	}
	return &CorruptError{File: path, Offset: off, Err: err}
}

// repairTornTail truncates the last segment after its last whole record. What is cut was
// never acknowledged: Append returns only after fsync, and a power cut can only damage the
// batch that was being written when it struck (see badRecord).
func (l *Log) repairTornTail(path string, data []byte, off int64, stats *ReplayStats) error {
	stats.TornBytes = int64(len(data)) - off
	l.opts.Logger.Warn("Truncating torn tail of event log", "file", path, "offset", off, "bytes", stats.TornBytes)
	if m := l.opts.Metrics; m != nil {
		m.TornTailRepairs.Inc()
	}
	return l.openSegmentForAppend(path, off)
}

// openSegmentForAppend opens the last segment, cuts anything after size (a torn tail, or zeros)
// and makes the cut durable before the first append.
func (l *Log) openSegmentForAppend(path string, size int64) error {
	f, err := l.opts.FS.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("%w: opening %s: %w", ErrStorage, path, err)
	}
	if err := f.Truncate(size); err != nil {
		_ = f.Close()
		return fmt.Errorf("%w: truncating %s at %d: %w", ErrStorage, path, size, err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("%w: syncing %s: %w", ErrStorage, path, err)
	}
	if _, err := f.Seek(size, io.SeekStart); err != nil {
		_ = f.Close()
		return fmt.Errorf("%w: seeking %s: %w", ErrStorage, path, err)
	}
	l.seg, l.segSize = f, size
	return nil
}

// createFile writes data to name through a temp file: write, fsync, rename, fsync the directory.
func (l *Log) createFile(name string, data []byte) error {
	fs := l.opts.FS
	path := filepath.Join(l.dir, name)
	tmp := path + tmpSuffix
	f, err := fs.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("%w: creating %s: %w", ErrStorage, tmp, err)
	}
	if n, err := f.Write(data); err != nil || n != len(data) {
		_ = f.Close()
		return fmt.Errorf("%w: writing %s: wrote %d of %d bytes: %v", ErrStorage, tmp, n, len(data), err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("%w: syncing %s: %w", ErrStorage, tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("%w: closing %s: %w", ErrStorage, tmp, err)
	}
	if err := fs.Rename(tmp, path); err != nil {
		return fmt.Errorf("%w: renaming %s: %w", ErrStorage, tmp, err)
	}
	if err := fs.SyncDir(l.dir); err != nil {
		return fmt.Errorf("%w: syncing directory %s: %w", ErrStorage, l.dir, err)
	}
	return nil
}

func segmentName(firstSeq uint64) string { return fmt.Sprintf("%016x%s", firstSeq, segmentSuffix) }

// createSegment starts a new, empty segment whose first record will be firstSeq.
func (l *Log) createSegment(firstSeq uint64) error {
	name := segmentName(firstSeq)
	if err := l.createFile(name, nil); err != nil {
		return err
	}
	if l.seg != nil {
		if err := l.seg.Close(); err != nil {
			return fmt.Errorf("%w: closing segment: %w", ErrStorage, err)
		}
	}
	return l.openSegmentForAppend(filepath.Join(l.dir, name), 0)
}

// Append adds a record and returns its sequence once the record is durable.
func (l *Log) Append(typ RecordType, payload []byte) (uint64, error) {
	seq, wait, err := l.Submit(typ, payload)
	if err != nil {
		return 0, err
	}
	return seq, wait()
}

// Submit adds a record to the next group commit and returns at once with the record's
// sequence and a function that waits until it is durable. Records become durable in
// sequence order: when wait returns nil, every earlier record is durable too. A single
// writer can so pipeline its records and still acknowledge each only once it is safe.
func (l *Log) Submit(typ RecordType, payload []byte) (uint64, func() error, error) {
	if typ == 0 {
		return 0, nil, fmt.Errorf("%w: record type 0", ErrBadRecord)
	}
	if len(payload) > l.opts.MaxRecordSize {
		return 0, nil, fmt.Errorf("%w: %d bytes", ErrRecordTooBig, len(payload))
	}
	l.mu.Lock()
	if err := l.unusable(); err != nil {
		l.mu.Unlock()
		return 0, nil, err
	}
	// A batch holds at most maxBatchIndex records, so that every record's index within its
	// batch is exact and recovery can always tell a torn batch from a later one: past that,
	// the submitter leads (or waits for) a flush of the full batch first.
	for l.cur.records >= maxBatchIndex {
		if l.flushing {
			l.cond.Wait()
		} else {
			l.flushLocked()
		}
		if err := l.unusable(); err != nil {
			l.mu.Unlock()
			return 0, nil, err
		}
	}
	seq := l.nextSeq
	l.nextSeq++
	b := l.cur
	if b.records == 0 {
		b.firstSeq = seq
	}
	b.buf = appendBatchRecord(b.buf, seq, typ, payload, b.records)
	b.lastSeq = seq
	b.records++
	l.mu.Unlock()
	return seq, func() error { return l.WaitDurable(seq) }, nil
}

func (l *Log) unusable() error {
	if l.failed != nil {
		return l.failed
	}
	if l.closed {
		return ErrClosed
	}
	return nil
}

// WaitDurable blocks until seq is durable, or the log failed. Waiters drive the group commit:
// one that finds no flush in progress becomes the leader, takes every record submitted so far
// as one batch, writes it with one write and one fdatasync, and wakes the others; records
// submitted meanwhile wait for the next leader. A lone writer so pays no hand-off to another
// goroutine, and many writers share each fsync (as LevelDB's writer queue does).
func (l *Log) WaitDurable(seq uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.durable < seq {
		if l.failed != nil {
			return l.failed
		}
		if seq >= l.nextSeq {
			return fmt.Errorf("eventlog: sequence %d was never submitted", seq)
		}
		if l.flushing {
			l.cond.Wait()
			continue
		}
		l.flushLocked()
	}
	return nil
}

// flushLocked writes the current batch as the leader. It is called with l.mu held, releases it
// for the I/O and holds it again on return.
func (l *Log) flushLocked() {
	b := l.cur
	if b.records == 0 {
		return
	}
	l.cur = &batch{}
	l.flushing = true
	l.mu.Unlock()
	err := l.writeBatch(b)
	l.mu.Lock()
	l.flushing = false
	if err != nil && l.failed == nil {
		l.failed = err
	}
	if l.failed == nil {
		l.durable = b.lastSeq
	}
	l.cond.Broadcast()
}

func (l *Log) writeBatch(b *batch) error {
	if l.segSize > 0 && l.segSize+int64(len(b.buf)) > l.opts.SegmentSize {
		if err := l.createSegment(b.firstSeq); err != nil {
			return err
		}
	}
	start := time.Now()
	durableSize := l.segSize
	n, err := l.seg.Write(b.buf)
	l.segSize += int64(n)
	if err == nil && n != len(b.buf) {
		err = io.ErrShortWrite
	}
	if err != nil {
		l.cutBack(durableSize)
		return fmt.Errorf("%w: writing %d records at sequence %d: %w", ErrStorage, b.records, b.firstSeq, err)
	}
	if err := l.seg.Sync(); err != nil {
		l.cutBack(durableSize)
		return fmt.Errorf("%w: fdatasync after sequence %d: %w", ErrStorage, b.lastSeq, err)
	}
	if m := l.opts.Metrics; m != nil {
		m.FsyncSeconds.Observe(time.Since(start).Seconds())
		m.Appends.Add(float64(b.records))
		m.BatchRecords.Observe(float64(b.records))
	}
	return nil
}

// cutBack removes a batch whose write or fdatasync failed from the segment, before the failure
// is reported. After a failed fdatasync the kernel marks the pages clean although the disk may
// not hold them, and keeps serving them: a process restarted without a power loss would
// replay records nobody was told are durable, and build on them, and a later power cut would
// take them away from under what was built. Truncating drops them from the page cache.
//
// The truncation is not fsynced here: the next Open truncates and fsyncs the last segment
// before its first append, and a power cut before that leaves the failed batch (whatever of
// it reached the disk) as the last batch of the log, which is a torn tail or unacknowledged
// records, never something built on. If the truncation fails as well, the log is poisoned all
// the same, but the next process on this machine may replay the batch from the page cache and
// build on it; a power cut after that makes the batch a damaged region that later batches
// follow, so the log refuses to open (CorruptError) rather than lose records silently.
func (l *Log) cutBack(size int64) {
	if err := l.seg.Truncate(size); err != nil {
		l.opts.Logger.Error("Could not cut a failed batch off the event log", "offset", size, "err", err)
		return
	}
	l.segSize = size
}

// Durable returns the sequence of the last durable record.
func (l *Log) Durable() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.durable
}

// Err returns the error that poisoned the log, if any.
func (l *Log) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failed
}

// Close writes what was submitted, then releases the log. Crash-only programs need not call it;
// tests and benchmarks do.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	for l.flushing {
		l.cond.Wait()
	}
	if l.failed == nil {
		l.flushLocked()
	}
	l.closed = true
	l.mu.Unlock()
	l.snapMu.Lock()
	defer l.snapMu.Unlock()
	err := l.seg.Close()
	if rerr := l.release(); err == nil {
		err = rerr
	}
	return err
}
