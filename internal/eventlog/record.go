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

// appendRecord appends the framed record to b.
func appendRecord(b []byte, seq uint64, typ RecordType, payload []byte) []byte {
	start := len(b)
	pad := paddedLen(len(payload)) - len(payload)
	var h [headerSize]byte
	binary.LittleEndian.PutUint32(h[0:4], uint32(len(payload)))
	h[4] = byte(typ)
	h[5] = byte(pad)
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
// other errors (unwrapped sentinels) for records that cannot be right. A CRC mismatch on the
// final record that looks like a torn sector write is reported as errTornRecord.
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
	if typ == 0 || int(h[5]) != paddedLen(int(n))-int(n) || h[6] != 0 || h[7] != 0 {
		return Record{}, off, fmt.Errorf("%w: header %x", ErrBadRecord, h[:8])
	}
	size := recordSize(int(n))
	if len(rest) < size {
		return Record{}, off, errTornRecord
	}
	payload := rest[headerSize : headerSize+int(n)]
	want := binary.LittleEndian.Uint32(h[16:20])
	if got := crc32.Update(crc32.Checksum(h[:16], crcTable), crcTable, payload); got != want {
		if len(rest) == size && hasZeroSector(data, off, off+int64(size)) {
			return Record{}, off, errTornRecord
		}
		return Record{}, off, fmt.Errorf("%w: stored %08x, computed %08x", ErrCRCMismatch, want, got)
	}
	return Record{Seq: binary.LittleEndian.Uint64(h[8:16]), Type: typ, Payload: payload}, off + int64(size), nil
}

// hasZeroSector says whether one whole disk sector inside [from, to) of data is zero: what a
// write torn by power loss leaves behind (as etcd's decoder checks).
func hasZeroSector(data []byte, from, to int64) bool {
	for s := (from + sectorSize - 1) / sectorSize * sectorSize; s+sectorSize <= to; s += sectorSize {
		if allZero(data[s : s+sectorSize]) {
			return true
		}
	}
	return false
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
