package eventlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

const (
	headerSize = 24
	alignment  = 8
	sectorSize = 512

	// DefaultMaxRecordSize bounds a record's payload; a larger length is corruption, found
	// before anything is allocated.
	DefaultMaxRecordSize = 16 << 20

	// MaxSnapshotSize bounds a snapshot: it holds the whole state (every order and idempotency
	// key), so it may be far larger than any event.
	MaxSnapshotSize = 1 << 30

	// maxBatchIndex bounds a record's index within its group commit (header bytes 6-7): Submit
	// caps a batch at maxBatchIndex records, so indexes run 0..maxBatchIndex-1 and are exact.
	// The index is still written saturating, and read as a bound (laterBatch), in case a log
	// holds one that is not.
	maxBatchIndex = 0xFFFF
)

// RecordType says what a record holds. Zero is not a type: an all-zero header ends the log.
type RecordType uint8

// Record types used by this package; callers choose their own from 16 up.
const (
	TypeSnapshot RecordType = 1
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Record is one decoded record. Payload aliases the buffer it was decoded from.
type Record struct {
	Seq     uint64
	Type    RecordType
	Payload []byte
}

// Sentinel errors. Corruption errors wrap ErrCorrupt and one of the specific sentinels; use
// errors.As with *CorruptError for the file and offset.
var (
	ErrCorrupt      = errors.New("eventlog: corrupt log")
	ErrCRCMismatch  = errors.New("eventlog: crc mismatch")
	ErrRecordTooBig = errors.New("eventlog: record larger than the maximum")
	ErrSequenceGap  = errors.New("eventlog: sequence gap")
	ErrBadRecord    = errors.New("eventlog: malformed record")
	ErrLocked       = errors.New("eventlog: log is locked by another process")
	ErrClosed       = errors.New("eventlog: log is closed")
	ErrStorage      = errors.New("eventlog: storage failure")
	errTornRecord   = io.ErrUnexpectedEOF
)

// CorruptError says where a log is corrupt.
type CorruptError struct {
	File   string
	Offset int64
	Err    error
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("eventlog: corrupt log: %s at offset %d: %v", e.File, e.Offset, e.Err)
}

// Unwrap lets errors.Is match both ErrCorrupt and the specific cause.
func (e *CorruptError) Unwrap() []error { return []error{ErrCorrupt, e.Err} }

func paddedLen(n int) int { return (n + alignment - 1) &^ (alignment - 1) }

// recordSize is the bytes a record with an n-byte payload takes on disk.
func recordSize(n int) int { return headerSize + paddedLen(n) }

// appendRecord appends the framed record to b, as the first (or only) record of its batch.
func appendRecord(b []byte, seq uint64, typ RecordType, payload []byte) []byte {
	return appendBatchRecord(b, seq, typ, payload, 0)
}

// appendBatchRecord appends the framed record to b, marked as the index-th record (from 0) of
// the group commit it is written in (below maxBatchIndex by Submit's cap; saturating, to be safe).
func appendBatchRecord(b []byte, seq uint64, typ RecordType, payload []byte, index int) []byte {
	start := len(b)
	pad := paddedLen(len(payload)) - len(payload)
	var h [headerSize]byte
	binary.LittleEndian.PutUint32(h[0:4], uint32(len(payload)))
	h[4] = byte(typ)
	h[5] = byte(pad)
	binary.LittleEndian.PutUint16(h[6:8], uint16(min(index, maxBatchIndex)))
	binary.LittleEndian.PutUint64(h[8:16], seq)
	b = append(b, h[:]...)
	b = append(b, payload...)
	b = append(b, make([]byte, pad)...)
	crc := crc32.Update(crc32.Checksum(b[start:start+16], crcTable), crcTable, payload)
	binary.LittleEndian.PutUint32(b[start+16:start+20], crc)
	return b
}

// decodeRecord decodes the record at data[off:]. It returns io.EOF at a clean end (no bytes
// left, or only zeros), errTornRecord when the record is cut short by the end of data, and
// other errors (unwrapped sentinels) for records that cannot be right. Whether a bad record is
// a torn write or corruption is not decided here but by where it is (see laterBatch).
func decodeRecord(data []byte, off int64, maxSize int) (Record, int64, error) {
	rest := data[off:]
	if len(rest) == 0 {
		return Record{}, off, io.EOF
	}
	if len(rest) < headerSize {
		if allZero(rest) {
			return Record{}, off, io.EOF
		}
		return Record{}, off, errTornRecord
	}
	h := rest[:headerSize]
	if allZero(h) {
		if allZero(rest) {
			return Record{}, off, io.EOF
		}
		return Record{}, off, fmt.Errorf("%w: zero header followed by data", ErrBadRecord)
	}
	n := binary.LittleEndian.Uint32(h[0:4])
	if uint64(n) > uint64(maxSize) {
		return Record{}, off, fmt.Errorf("%w: payload of %d bytes, maximum %d", ErrRecordTooBig, n, maxSize)
	}
	typ := RecordType(h[4])
	if typ == 0 || int(h[5]) != paddedLen(int(n))-int(n) {
		return Record{}, off, fmt.Errorf("%w: header %x", ErrBadRecord, h[:8])
	}
	size := recordSize(int(n))
	if len(rest) < size {
		return Record{}, off, errTornRecord
	}
	payload := rest[headerSize : headerSize+int(n)]
	want := binary.LittleEndian.Uint32(h[16:20])
	if got := crc32.Update(crc32.Checksum(h[:16], crcTable), crcTable, payload); got != want {
		return Record{}, off, fmt.Errorf("%w: stored %08x, computed %08x", ErrCRCMismatch, want, got)
	}
	return Record{Seq: binary.LittleEndian.Uint64(h[8:16]), Type: typ, Payload: payload}, off + int64(size), nil
}

// batchIndex is the index within its group commit of the record decoded at data[off:].
func batchIndex(data []byte, off int64) int {
	return int(binary.LittleEndian.Uint16(data[off+6 : off+8]))
}

// laterBatch looks past a bad record at off in the last segment for a valid record written
// by a later group commit than the one in progress at off, whose first sequence was at most
// expected (the sequence the bad record should have had). A power cut can damage only the
// last batch: it is written with one write and one fdatasync, and the next batch is written
// only after that fdatasync returned. So if a later batch's record follows, the bad bytes had
// been made durable before it and were damaged since: corruption. Otherwise (nothing valid
// follows, or only records of the batch in progress) the damage is a torn tail.
//
// A record's batch began at seq-index. Submit's cap keeps the index exact; should a saturated
// one (maxBatchIndex) be found, it says only that the batch began at or before
// seq-maxBatchIndex: when that bound is not at most expected, the record may belong to a later
// batch, and laterBatch says so (refusing a log is recoverable by a human; dropping a durable
// record is not). Logs written before the index existed have 0 there: each record
// its own batch, so any later valid record after the bad one makes it corruption (strict, and
// safe).
//
// It returns the offset and sequence of the first such record, and ok = true if there is one.
func laterBatch(data []byte, off int64, expected uint64) (at int64, seq uint64, ok bool) {
	for p := off + alignment; p+headerSize <= int64(len(data)); {
		h := data[p : p+headerSize]
		n := binary.LittleEndian.Uint32(h[0:4])
		// Cheap checks first: most offsets inside a torn batch hold zeros or payload bytes.
		// The length is bounded by the data, not by the maximum record size: a record whose
		// CRC holds was written by the log, and an oversized one after a bad record must not
		// pass for a torn tail.
		if h[4] == 0 || int(h[5]) != paddedLen(int(n))-int(n) ||
			p+int64(recordSize(int(n))) > int64(len(data)) {
			p += alignment
			continue
		}
		rec, next, err := decodeRecord(data, p, len(data))
		if err != nil {
			p += alignment
			continue
		}
		idx := uint64(batchIndex(data, p))
		if rec.Seq < expected || idx > rec.Seq {
			return p, rec.Seq, true // a sequence that cannot follow: not a torn write either
		}
		if rec.Seq-idx > expected {
			// Its batch began after expected (saturated: may have), so it is a later batch.
			return p, rec.Seq, true
		}
		p = next // a record of the batch in progress: keep looking past it
	}
	return 0, 0, false
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
