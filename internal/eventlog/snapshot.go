package eventlog

import (
	"fmt"
	"path/filepath"
)

func snapshotName(seq uint64) string {
	return fmt.Sprintf("%s%016x%s", snapshotPrefix, seq, snapshotSuffix)
}

// SaveSnapshot stores data as the state as of seq, once seq is durable (a snapshot never gets
// ahead of the log it summarizes), then removes older snapshots and the segments whose
// records it covers. It is safe to call from any goroutine; snapshots are taken one at a time.
func (l *Log) SaveSnapshot(seq uint64, data []byte) error {
	if len(data) > MaxSnapshotSize {
		return fmt.Errorf("%w: snapshot of %d bytes", ErrRecordTooBig, len(data))
	}
	if err := l.WaitDurable(seq); err != nil {
		return err
	}
	l.snapMu.Lock()
	defer l.snapMu.Unlock()
	if err := l.createFile(snapshotName(seq), appendRecord(nil, seq, TypeSnapshot, data)); err != nil {
		return err
	}
	if m := l.opts.Metrics; m != nil {
		m.Snapshots.Inc()
	}
	return l.compact(seq)
}

// compact removes snapshots older than seq and segments that hold only records up to seq. The
// segment being appended to is never removed.
func (l *Log) compact(seq uint64) error {
	segs, snaps, err := l.listFiles(false)
	if err != nil {
		return err
	}
	var removed []string
	for _, s := range snaps {
		if s.firstSeq < seq {
			removed = append(removed, s.name)
		}
	}
	for i := 0; i+1 < len(segs); i++ {
		if segs[i+1].firstSeq <= seq+1 {
			removed = append(removed, segs[i].name)
		}
	}
	for _, name := range removed {
		if err := l.opts.FS.Remove(filepath.Join(l.dir, name)); err != nil {
			return fmt.Errorf("%w: removing %s: %w", ErrStorage, name, err)
		}
	}
	if len(removed) > 0 {
		l.opts.Logger.Info("Compacted event log", "snapshotSeq", seq, "removed", len(removed))
	}
	return nil
}
