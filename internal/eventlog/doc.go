// Package eventlog is an append-only, checksummed, segmented log on a directory (the vending
// pod's PersistentVolumeClaim). It is the error kernel's memory: Append returns only once a
// record is durable, so whatever a client was told has happened survives SIGKILL and power loss.
//
// # Files
//
//	<dir>/LOCK                          flock(2): one writer per log, or the history forks
//	<dir>/0000000000000001.log          segment, named by the sequence of its first record
//	<dir>/00000000000f4241.log          ...
//	<dir>/snapshot-00000000000f4240.snap  state as of a sequence; older segments may go
//
// New files are created as <name>.tmp, fsynced, renamed into place and the directory fsynced,
// so a crash leaves either no file or a whole one.
//
// # Record framing
//
// Every record starts on an 8-byte boundary. Integers are little-endian.
//
//	0               4       5       6               8
//	+---------------+-------+-------+---------------+
//	| payload len   | type  | pad   | reserved (0)  |
//	+---------------+-------+-------+---------------+
//	| sequence (uint64)                             |  8
//	+---------------+-------------------------------+
//	| CRC32-C       | reserved (0)                  |  16
//	+---------------+-------------------------------+
//	| payload ... (len bytes) | pad zero bytes      |  24
//	+-------------------------+---------------------+
//
// The CRC (Castagnoli) covers header bytes 0-15 and the payload. The payload is padded with
// zeros to a multiple of 8. An all-zero header marks the end of the log. The payload length is
// checked against MaxRecordSize before anything is allocated.
//
// # Recovery
//
// Open loads the newest snapshot, then replays the records after it, checking that sequences
// follow each other. What it finds decides what it does:
//
//   - a torn tail (the last record of the last segment runs past the end of the file, or fails
//     its CRC where a whole 512-byte sector of it is zeros, as a write cut off by power loss
//     leaves it): the record was never acknowledged, since Append waits for fsync. It is
//     truncated away, the truncation fsynced, logged and counted.
//   - anything else that fails (a CRC mismatch before the tail, a sequence gap, an oversized or
//     untyped record, a bad snapshot): corruption. Open refuses with an error that names the
//     file and the offset, and keeps every byte for a human to look at. Acknowledged facts are
//     never dropped to make a log readable.
//
// # Durability and group commit
//
// Appenders encode their record into the current batch and wait. A waiter that finds no flush
// in progress becomes the leader: it writes the whole batch with one write and one fdatasync,
// then wakes every appender in it; records that arrive meanwhile form the next batch. A lone
// writer pays one fsync per record and no hand-off to another goroutine; many writers share
// each fsync. Submit lets a single writer pipeline: it applies its record at once and
// acknowledges it when WaitDurable returns (records become durable in sequence order).
//
// A failed write or fsync poisons the log: every later Append fails, and the caller is
// expected to exit (after a failed fsync the page cache can no longer be trusted, so retrying
// and pretending would be a lie).
package eventlog
