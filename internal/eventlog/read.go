package eventlog

import (
	"fmt"
	"path/filepath"
)

// Read returns up to limit durable records with a sequence after after, oldest first, read from
// the segments on disk (records a snapshot compacted away are gone: the answer then starts at
// the oldest one kept). It does not disturb appends.
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
		data, err := l.opts.FS.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("%w: reading %s: %w", ErrStorage, path, err)
		}
		for off := int64(0); ; {
			rec, next, err := decodeRecord(data, off, l.opts.MaxRecordSize)
			if err != nil || rec.Seq > durable {
				break // the end, or a batch still being written
			}
			if rec.Seq > after {
				out = append(out, rec)
				if len(out) == limit {
					return out, nil
				}
			}
			off = next
		}
	}
	return out, nil
}
