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
//	| payload len   | type  | pad   | batch index   |
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
// The batch index (uint16) is the record's position, from 0, in the group commit it was
// written by (a batch holds at most 65535 records, so it is exact): the batch began at
// sequence-index. Logs written before it
// existed have 0 there (every record its own batch), which is still valid and only makes
// recovery stricter; a log written with batch indexes is refused as malformed by older
// versions, not misread.
//
// # Recovery
//
// Open loads the newest snapshot, then replays the records after it, checking that sequences
// follow each other. It streams each segment through a 64 KiB window, so that opening a log
// costs the state it rebuilds, not its segments' size; only a record that does not decode
// makes it read that segment whole, to decide what the damage is. The rule that decides between a torn tail and corruption is where a
// power cut can do damage: only in the last batch, the one write that was not yet followed by
// a successful fdatasync. A batch goes into one segment with one write and one fdatasync, and
// the next batch is written only after that fdatasync returned; a new segment is created, and
// its directory fsynced, before the first batch goes into it, so every segment but the last
// is whole.
//
//   - a torn tail: in the last segment, a record that does not decode (cut short by the end of
//     the file, a CRC mismatch, zeros or garbage in its header, zeros where data was) and after
//     which no valid record of a later batch follows. Records of the same batch may follow (a
//     page of the batch written before an earlier one): they were not acknowledged either,
//     since no record of a batch is acknowledged before its fdatasync. The segment is cut before
//     the bad record, the cut fsynced, logged and counted. This holds whatever the record size
//     and wherever the damage falls (a whole sector, a few bytes, the first page of a batch).
//   - corruption: a bad record followed by a valid record of a later batch (whose batch began
//     after the sequence the bad record should have had: the bad bytes had been made durable
//     before that batch was written), any bad record before the last segment, a sequence gap,
//     an oversized or untyped record, a bad snapshot. Open refuses with an error that names the
//     file and the offset, and keeps every byte for a human to look at. Acknowledged facts are
//     never dropped to make a log readable.
//
// A batch holds at most 65535 records (Submit flushes a full one first), so the index never
// saturates in logs written now. Should a saturated index be found, it proves only that its
// batch began at least 65535 records earlier; when that does not reach back to the bad record,
// the record may be of a later batch, and Open refuses (a human can recover a refused log; a
// dropped durable record is gone). A record longer than MaxRecordSize whose checksum holds is
// whole, not torn (the log was opened with a smaller maximum than it was written with): Open
// refuses, never cuts it.
//
// Before replaying, Open fsyncs the directory: a predecessor killed between a new segment's
// rename and its directory fsync left a name only the page cache knows, and what this process
// appends to that segment would vanish with the name in a power cut.
//
// What this rule cannot tell apart, or assumes:
//
//   - damage to the last batch after its fdatasync (a bit rotted on disk in the newest records)
//     looks like a torn write and is cut, as PostgreSQL and SQLite end their logs at the first
//     bad record of the tail. Disks report unreadable sectors as errors, which Open does not
//     hide (ErrStorage).
//   - powersafe overwrite (SQLite's term): a power cut while a sector is written damages only
//     the bytes being written, not the earlier, durable bytes that share the sector with them
//     (records are 8-byte aligned, so a batch usually starts inside the previous batch's last
//     sector). A disk that garbles a whole sector can take the tail of an acknowledged batch
//     with it; Open then refuses (or cuts records that were acknowledged). Padding every batch
//     to a sector would remove the assumption at up to 511 bytes per fdatasync.
//   - a failed fdatasync inside Open itself (the truncation of a torn tail, after a predecessor
//     was killed between a batch's write and its fdatasync) returns ErrStorage without cutting
//     the batch back: Open cannot tell, from the page cache, which of the replayed records
//     reached the disk, and cutting ones that had been acknowledged would lose them. A restart
//     on the same machine may then build on that batch, and a later power cut makes it damage
//     that later batches follow: a refusal (CorruptError), not a silent loss. Reading the tail
//     with O_DIRECT would close this.
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
// and pretending would be a lie). Before the failure is reported, the failed batch is
// truncated off the segment: the kernel keeps serving pages whose writeback failed, so a
// process restarted on the same machine would otherwise replay records that were never
// durable and build on them.
//
// # Testing against power loss
//
// Package crashfs implements FS in memory with the durability rules of a real file system
// (fdatasync persists a file's data, not its name; a directory's entries need its own fsync;
// un-synced writes are lost, kept or torn), and the tests cut power at every operation of
// small workloads and at random points of long ones, then reopen the crashed image and check
// that every acknowledged record is there and nothing else is.
package eventlog
