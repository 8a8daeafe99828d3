package eventlog_test

// Red-team tests for issue 9's durability claims. Each test names the claim it attacks. Tests
// that found a defect start with t.Skip("red team: ...") so the suite stays green; remove the
// Skip to see them fail. The others document attacks that held, and guard them.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vendingfleet/vending-operator/internal/eventlog"
	"github.com/vendingfleet/vending-operator/internal/eventlog/crashfs"
)

// rtSkip skips a test that shows a defect, unless REDTEAM=1 (to see it fail).
func rtSkip(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("REDTEAM") == "" {
		t.Skip(why)
	}
}

// rtPayload is a payload of exactly n bytes starting with tag.
func rtPayload(tag string, n int) []byte {
	p := bytes.Repeat([]byte{'x'}, n)
	copy(p, tag)
	return p
}

// rtOpIndex runs f on a fresh FS (a dry run) and returns the index of the nth (from 1)
// operation of kind k it performed.
func rtOpIndex(t *testing.T, f func(fs *crashfs.FS), k crashfs.OpKind, nth int) int {
	t.Helper()
	fs := crashfs.New(1)
	f(fs)
	seen := 0
	for i, op := range fs.Ops() {
		if op.Kind == k {
			seen++
			if seen == nth {
				return i
			}
		}
	}
	t.Fatalf("dry run has no %dth %s:\n%s", nth, k, fs.Trace())
	return -1
}

// TestRedTeamKillBetweenRenameAndDirSyncThenPowerCut attacks claim 2 (every acknowledged
// record survives): the process dies (SIGKILL, OOMKill: the page cache survives) after a new
// segment's rename and before the directory fsync that makes its name durable. The next
// process finds the segment in the page cache, appends into it and acknowledges (fdatasync
// of the file: its data, not its name). Nothing fsyncs the directory until the next rollover,
// so a power cut in that window takes the segment's name, and every acknowledged record in
// it, away; Open then silently starts over (first segment) or ends at the previous segment.
func TestRedTeamKillBetweenRenameAndDirSyncThenPowerCut(t *testing.T) {
	killBetweenRenameAndDirSync(t, false)
}

// TestRedTeamKillBetweenRenameAndDirSyncFixedByDirSyncAtOpen: the same, with the suggested
// fix simulated through the FS seam (Open's first ReadDir, in recover, fsyncs the directory
// first): nothing acknowledged is lost.
func TestRedTeamKillBetweenRenameAndDirSyncFixedByDirSyncAtOpen(t *testing.T) {
	killBetweenRenameAndDirSync(t, true)
}

// dirSyncAtOpenFS fsyncs a directory before listing it: what a SyncDir in Log.recover would do.
type dirSyncAtOpenFS struct{ *crashfs.FS }

func (f dirSyncAtOpenFS) ReadDir(name string) ([]os.DirEntry, error) {
	if err := f.SyncDir(name); err != nil {
		return nil, err
	}
	return f.FS.ReadDir(name)
}

func killBetweenRenameAndDirSync(t *testing.T, fixed bool) {
	cases := []struct {
		name    string
		segSize int64
		nth     int  // which SyncDir the process dies at: 1 = creation of the first segment
		fail    bool // that SyncDir fails with EIO (the log is poisoned, the process exits) instead
	}{
		{"creation of the first segment", 0, 1, false},
		// 88-byte records, three to a segment: the kill is at the rollover before record 4,
		// and the next process's three records fit in the new segment (no second rollover,
		// whose directory fsync would cover the first).
		{"segment rollover", 300, 2, false},
		{"segment rollover whose directory fsync fails", 300, 2, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			opts := func(fs eventlog.FS) eventlog.Options {
				return eventlog.Options{FS: fs, SegmentSize: tc.segSize}
			}
			work := func(fs *crashfs.FS) uint64 {
				l, _, err := eventlog.Open(logDir, opts(fs), &collector{})
				if err != nil {
					return 0
				}
				var acked uint64
				for i := 0; i < 10; i++ {
					seq, err := l.Append(typeEvt, rtPayload(fmt.Sprintf("p0-%d", i), 64))
					if err != nil {
						return acked
					}
					acked = seq
				}
				_ = l.Close()
				return acked
			}
			k := rtOpIndex(t, func(fs *crashfs.FS) { work(fs) }, crashfs.OpSyncDir, tc.nth)
			fs := crashfs.New(1)
			if tc.fail {
				fs.Inject(crashfs.Fault{Kind: crashfs.OpSyncDir, N: tc.nth, Err: errEIO})
			} else {
				fs.CutAt(k) // the process dies just before this directory fsync
			}
			acked := work(fs)
			// The next process: same machine, page cache intact.
			img := fs.Restart()
			var next eventlog.FS = img
			if fixed {
				next = dirSyncAtOpenFS{img}
			}
			c := &collector{}
			l, st, err := eventlog.Open(logDir, opts(next), c)
			if err != nil {
				t.Fatalf("Open after the kill: %v", err)
			}
			if st.LastSeq != acked {
				t.Fatalf("after the kill the log ends at %d, %d were acknowledged", st.LastSeq, acked)
			}
			for i := 0; i < 3; i++ {
				seq, err := l.Append(typeEvt, rtPayload(fmt.Sprintf("p1-%d", i), 64))
				if err != nil {
					t.Fatal(err)
				}
				acked = seq
			}
			// Power cut: the directory's unsynced entry operations are lost (POSIX, and
			// crashfs's own model); every file's synced data stays.
			for _, dm := range []crashfs.DirMode{crashfs.DirsNone, crashfs.DirsAny, crashfs.DirsPrefix} {
				for seed := int64(0); seed < 8; seed++ {
					out := img.Crash(crashfs.Crash{Data: crashfs.TearNone, Dirs: dm, Seed: seed})
					c := &collector{}
					l2, st, err := eventlog.Open(logDir, opts(out), c)
					if err != nil {
						t.Fatalf("dirs mode %d seed %d: Open after the power cut: %v", dm, seed, err)
					}
					_ = l2.Close()
					if st.LastSeq < acked {
						t.Fatalf("dirs mode %d seed %d: the log ends at %d after the power cut, %d were acknowledged (files %v)",
							dm, seed, st.LastSeq, acked, out.Files())
					}
				}
			}
		})
	}
}

// TestRedTeamSaturatedBatchIndexRefusesACrash attacks claim 1 (a crash alone never makes the
// log refuse to open): a group commit of more than 65535 records, torn near its start and
// kept further on, leaves records whose saturated batch index cannot prove they belong to the
// torn batch, so Open refuses the crash as corruption. doc.go says so; it still contradicts
// the claim. Any library user whose writers submit that many records before one waits gets
// there (the vending pod cannot with its default --mailbox-size=1024; it can with a large one).
func TestRedTeamSaturatedBatchIndexRefusesACrash(t *testing.T) {
	const n = 70_000
	fs := crashfs.New(1)
	l, _, err := eventlog.Open(logDir, eventlog.Options{FS: fs}, &collector{})
	if err != nil {
		t.Fatal(err)
	}
	var wait func() error
	for i := 0; i < n; i++ {
		_, w, err := l.Submit(typeEvt, rtPayload(fmt.Sprintf("%d", i), 8))
		if err != nil {
			t.Fatal(err)
		}
		wait = w
	}
	fs.CutAt(fs.OpCount() + 1) // the batch's write happens, its fdatasync does not
	if err := wait(); err == nil {
		t.Fatal("the batch was acknowledged without its fdatasync")
	}
	refused := 0
	for seed := int64(0); seed < 6; seed++ {
		img := fs.Crash(crashfs.Crash{Data: crashfs.TearAny, Dirs: crashfs.DirsAll, Seed: seed})
		l2, _, err := eventlog.Open(logDir, eventlog.Options{FS: img}, &collector{})
		var ce *eventlog.CorruptError
		switch {
		case errors.As(err, &ce):
			refused++
			t.Logf("seed %d: a power cut refused as corruption: %v", seed, err)
		case err != nil:
			t.Fatalf("seed %d: %v", seed, err)
		default:
			_ = l2.Close()
		}
	}
	if refused > 0 {
		t.Fatalf("%d of 6 crash images of an unacknowledged batch were refused as corruption", refused)
	}
}

// TestRedTeamTornSectorSharedWithDurableBatch attacks crashfs's model (claim 5) and through it
// claims 1 and 2. Records are 8-byte aligned, not sector aligned, so the last batch usually
// starts inside a sector whose first bytes belong to the batch before it, acknowledged. The
// kernel writes back whole pages, so the disk rewrites that sector. crashfs tears a sector
// "with zeros, garbage or the old bytes", but only the pending bytes in it: the durable bytes
// sharing the sector never change. A disk that tears a sector into garbage (what crashfs
// models for pending bytes) damages the acknowledged tail too: Open then either refuses the
// crash (a valid record of the torn batch follows) or cuts acknowledged records (nothing
// follows). The design silently assumes SQLite's "powersafe overwrite"; it is stated nowhere.
func TestRedTeamTornSectorSharedWithDurableBatch(t *testing.T) {
	rtSkip(t, "known limit (doc.go, powersafe overwrite): a torn sector also holding the previous, acknowledged batch's tail; crashfs never damages durable bytes")
	const singles = 10 // 88-byte records: the batch after them starts at 880, inside sector [512,1024)
	fs := crashfs.New(1)
	l, _, err := eventlog.Open(logDir, eventlog.Options{FS: fs}, &collector{})
	if err != nil {
		t.Fatal(err)
	}
	var acked uint64
	for i := 0; i < singles; i++ {
		if acked, err = l.Append(typeEvt, rtPayload(fmt.Sprintf("a%d", i), 64)); err != nil {
			t.Fatal(err)
		}
	}
	var wait func() error
	for i := 0; i < 20; i++ {
		_, w, err := l.Submit(typeEvt, rtPayload(fmt.Sprintf("b%d", i), 64))
		if err != nil {
			t.Fatal(err)
		}
		wait = w
	}
	fs.CutAt(fs.OpCount() + 1)
	_ = wait()
	img := fs.Crash(crashfs.Crash{Data: crashfs.TearKeep, Dirs: crashfs.DirsAll})
	seg := filepath.Join(logDir, fmt.Sprintf("%016x.log", 1))
	data, err := img.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	// The sector being rewritten when the power went comes back as garbage, whole.
	for i := 512; i < 1024; i++ {
		data[i] = byte(i*131 + 7)
	}
	if err := img.WriteFile(seg, data); err != nil {
		t.Fatal(err)
	}
	_, st, err := eventlog.Open(logDir, eventlog.Options{FS: img}, &collector{})
	if err != nil {
		t.Fatalf("a torn sector refused as corruption: %v", err)
	}
	if st.LastSeq < acked {
		t.Fatalf("log ends at %d, %d were acknowledged", st.LastSeq, acked)
	}
}

// mutFS wraps crashfs with one fsync removed, as a mutation of the log's code would, to check
// that the crash tests catch it (claim 5) without editing log.go.
type mutFS struct {
	*crashfs.FS
	skipDirSync   bool // every directory fsync
	skipTmpSync   bool // the fsync of a temp file before its rename
	skipTruncSync bool // an fsync right after a truncation (openSegmentForAppend)
}

func (m *mutFS) SyncDir(name string) error {
	if m.skipDirSync {
		return nil
	}
	return m.FS.SyncDir(name)
}

func (m *mutFS) OpenFile(name string, flag int, perm os.FileMode) (eventlog.File, error) {
	f, err := m.FS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &mutFile{File: f, m: m, tmp: strings.HasSuffix(name, ".tmp")}, nil
}

type mutFile struct {
	eventlog.File
	m         *mutFS
	tmp       bool
	truncated bool
}

func (f *mutFile) Truncate(n int64) error { f.truncated = true; return f.File.Truncate(n) }

func (f *mutFile) Write(p []byte) (int, error) { f.truncated = false; return f.File.Write(p) }

func (f *mutFile) Sync() error {
	switch {
	case f.m.skipTmpSync && f.tmp:
		return nil
	case f.m.skipTruncSync && f.truncated:
		f.truncated = false
		return nil
	}
	return f.File.Sync()
}

// TestRedTeamTruncationAtOpenIsSynced attacks claim 1/2 across two crashes: Open cuts a torn
// tail whose later records are whole (same batch), a new batch of the same record size goes
// where the cut was, and the power goes before its fdatasync. Without the fsync of the cut,
// the old tail's bytes may come back after the new record (crashfs: lost bytes keep their
// old durable value) and Open serves records of a history that never happened. It holds
// (openSegmentForAppend fsyncs the cut); the mutated run proves crashfs would catch its loss.
func TestRedTeamTruncationAtOpenIsSynced(t *testing.T) {
	const payload = 488 // 512-byte records: crashfs's sector tears fall on record boundaries
	fs := crashfs.New(1)
	l, _, err := eventlog.Open(logDir, eventlog.Options{FS: fs}, &collector{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		if _, err := l.Append(typeEvt, rtPayload(fmt.Sprintf("a%d", i), payload)); err != nil {
			t.Fatal(err)
		}
	}
	var wait func() error
	for i := 11; i <= 13; i++ {
		_, w, _ := l.Submit(typeEvt, rtPayload(fmt.Sprintf("old-%d", i), payload))
		wait = w
	}
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	_ = l.Close()
	// The image a power cut in the batch 11-13 can leave: record 11 torn, 12 and 13 whole.
	seg := filepath.Join(logDir, fmt.Sprintf("%016x.log", 1))
	data, _ := fs.ReadFile(seg)
	data[10*512+100] ^= 0xff
	if err := fs.WriteFile(seg, data); err != nil {
		t.Fatal(err)
	}
	base := fs.Crash(crashfs.Crash{Data: crashfs.TearNone, Dirs: crashfs.DirsAll})

	run := func(mutate bool) (forked int) {
		for seed := int64(0); seed < 400; seed++ {
			img := base.Crash(crashfs.Crash{Data: crashfs.TearNone, Dirs: crashfs.DirsAll})
			l, st, err := eventlog.Open(logDir, eventlog.Options{FS: &mutFS{FS: img, skipTruncSync: mutate}}, &collector{})
			if err != nil || st.LastSeq != 10 || st.TornBytes == 0 {
				t.Fatalf("repairing the torn batch: %v (last %d, torn %d)", err, st.LastSeq, st.TornBytes)
			}
			img.CutAt(img.OpCount() + 1) // the new record's write, not its fdatasync
			if _, err := l.Append(typeEvt, rtPayload("new-11", payload)); err == nil {
				t.Fatal("acknowledged without fdatasync")
			}
			mode := []crashfs.TearMode{crashfs.TearAny, crashfs.TearPrefix}[seed%2]
			out := img.Crash(crashfs.Crash{Data: mode, Dirs: crashfs.DirsAll, Seed: seed})
			c := &collector{}
			l2, _, err := eventlog.Open(logDir, eventlog.Options{FS: out}, c)
			if err != nil {
				t.Fatalf("seed %d: a crash refused: %v", seed, err)
			}
			_ = l2.Close()
			for _, r := range c.records {
				if bytes.HasPrefix(r.Payload, []byte("old-")) {
					forked++
					break
				}
			}
		}
		return forked
	}
	if n := run(false); n > 0 {
		t.Fatalf("%d crash images serve records of the tail Open had cut", n)
	}
	if n := run(true); n == 0 {
		t.Fatal("with the fsync of the cut removed, no crash image served the old tail: crashfs would not catch that mutation")
	} else {
		t.Logf("mutation (no fsync after the cut at Open) caught: %d of 400 images serve the cut tail after new-11", n)
	}
}

// TestRedTeamMissingFsyncsAreCaught: removing the directory fsync after a creation's rename,
// or the file fsync before it (the same durable effect as renaming before the fsync), makes a
// crash lose acknowledged records or refuse the log (claim 5), while the unmutated log holds.
func TestRedTeamMissingFsyncsAreCaught(t *testing.T) {
	type outcome struct {
		lost    bool
		refused bool
	}
	scenario := func(m *mutFS, crash crashfs.Crash) outcome {
		l, _, err := eventlog.Open(logDir, eventlog.Options{FS: m, SegmentSize: 400}, &collector{})
		if err != nil {
			t.Fatal(err)
		}
		var acked uint64
		for i := 0; i < 12; i++ {
			if acked, err = l.Append(typeEvt, rtPayload(fmt.Sprintf("r%d", i), 64)); err != nil {
				t.Fatal(err)
			}
			if i == 7 {
				if err := l.SaveSnapshot(acked, []byte("state")); err != nil {
					t.Fatal(err)
				}
			}
		}
		out := m.Crash(crash)
		_, st, err := eventlog.Open(logDir, eventlog.Options{FS: out, SegmentSize: 400}, &collector{})
		return outcome{lost: err == nil && st.LastSeq < acked, refused: err != nil}
	}
	mutations := []struct {
		name string
		mut  func(*mutFS)
	}{
		{"no directory fsync", func(m *mutFS) { m.skipDirSync = true }},
		{"no fsync of the temp file before its rename", func(m *mutFS) { m.skipTmpSync = true }},
	}
	crashes := []crashfs.Crash{
		{Data: crashfs.TearNone, Dirs: crashfs.DirsNone},
		{Data: crashfs.TearNone, Dirs: crashfs.DirsAll},
		{Data: crashfs.TearNone, Dirs: crashfs.DirsAny, Seed: 3},
	}
	for _, c := range crashes {
		if o := scenario(&mutFS{FS: crashfs.New(1)}, c); o.lost || o.refused {
			t.Fatalf("unmutated log, crash %s: %+v", c, o)
		}
	}
	for _, mu := range mutations {
		caught := false
		for _, c := range crashes {
			m := &mutFS{FS: crashfs.New(1)}
			mu.mut(m)
			if o := scenario(m, c); o.lost || o.refused {
				caught = true
				t.Logf("%s: caught by crash %s: %+v", mu.name, c, o)
			}
		}
		if !caught {
			t.Errorf("%s: no crash image shows it", mu.name)
		}
	}
}

// TestRedTeamCompactionRemovalsReappear attacks claim 1 through compaction: segments and
// snapshots removed without a directory fsync may all, none or any subset reappear after a
// power cut. Open must pick the newest snapshot and the segments after it whatever came back.
func TestRedTeamCompactionRemovalsReappear(t *testing.T) {
	fs := crashfs.New(1)
	l, _, err := eventlog.Open(logDir, eventlog.Options{FS: fs, SegmentSize: 200}, &collector{})
	if err != nil {
		t.Fatal(err)
	}
	var acked uint64
	for i := 0; i < 40; i++ {
		if acked, err = l.Append(typeEvt, rtPayload(fmt.Sprintf("r%d", i), 40)); err != nil {
			t.Fatal(err)
		}
		if i%9 == 8 {
			if err := l.SaveSnapshot(acked, []byte(fmt.Sprintf("state@%d", acked))); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The last snapshot's compaction was not followed by any directory fsync: cut now.
	fs.CutAt(fs.OpCount())
	for seed := int64(0); seed < 60; seed++ {
		c := crashfs.Crash{Data: crashfs.TearAny, Dirs: []crashfs.DirMode{crashfs.DirsNone, crashfs.DirsAny, crashfs.DirsPrefix}[seed%3], Seed: seed}
		col := &collector{}
		l2, st, err := eventlog.Open(logDir, eventlog.Options{FS: fs.Crash(c), SegmentSize: 200}, col)
		if err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		_ = l2.Close()
		if st.LastSeq != acked || col.snapSeq != 36 || col.snapData != "state@36" {
			t.Fatalf("%s: log ends at %d (acked %d), snapshot %d %q", c, st.LastSeq, acked, col.snapSeq, col.snapData)
		}
		for i, r := range col.records {
			if r.Seq != col.snapSeq+uint64(i)+1 || !bytes.HasPrefix(r.Payload, []byte(fmt.Sprintf("r%d", r.Seq-1))) {
				t.Fatalf("%s: record %d is %d %.10q", c, i, r.Seq, r.Payload)
			}
		}
	}
}

// TestRedTeamFailedFsyncAtOpenThenRestartServesUndurable attacks claim 2 and issue 9's item 6
// ("a failed fsync never leaves un-synced data to be served after a restart") through Open
// rather than Append. The process dies after a batch's write and before its fdatasync (the
// page cache holds the whole batch). The next process's Open replays it and fsyncs the
// segment; that fdatasync fails (EIO: fsyncgate, the pages are marked clean, the disk holds
// part of the batch), so Open fails and the process exits, without cutting the batch back as
// writeBatch's cutBack would. The process after that replays the batch again from the page
// cache, its fdatasync succeeds (nothing is dirty any more), and it serves and builds on
// records the disk does not hold: after a power cut the log refuses to open (a damaged batch
// followed by a later acknowledged one) or loses what was served.
func TestRedTeamFailedFsyncAtOpenThenRestartServesUndurable(t *testing.T) {
	rtSkip(t, "known limit (doc.go): a failed fdatasync in Open is not cut back; the next restart may serve the un-durable batch from the page cache, and a later power cut makes the log refuse")
	served, refused, lost := 0, 0, 0
	for seed := int64(0); seed < 10; seed++ {
		fs := crashfs.New(seed)
		l, _, err := eventlog.Open(logDir, eventlog.Options{FS: fs}, &collector{})
		if err != nil {
			t.Fatal(err)
		}
		var acked uint64
		for i := 0; i < 5; i++ {
			if acked, err = l.Append(typeEvt, rtPayload(fmt.Sprintf("a%d", i), 600)); err != nil {
				t.Fatal(err)
			}
		}
		var wait func() error
		for i := 0; i < 3; i++ {
			_, wait, _ = l.Submit(typeEvt, rtPayload(fmt.Sprintf("b%d", i), 600))
		}
		fs.CutAt(fs.OpCount() + 1) // the process dies after the write, before the fdatasync
		_ = wait()
		img := fs.Restart()
		img.Inject(crashfs.Fault{Kind: crashfs.OpSync, N: 1, Err: errEIO})
		if _, _, err := eventlog.Open(logDir, eventlog.Options{FS: img}, &collector{}); err == nil {
			t.Fatal("Open succeeded although its fdatasync failed")
		}
		img2 := img.Restart()
		l2, st, err := eventlog.Open(logDir, eventlog.Options{FS: img2}, &collector{})
		if err != nil {
			t.Fatalf("seed %d: second restart: %v", seed, err)
		}
		if st.LastSeq > acked {
			served++
		}
		servedTo := st.LastSeq
		if acked, err = l2.Append(typeEvt, rtPayload("c", 600)); err != nil {
			t.Fatal(err)
		}
		out := img2.Crash(crashfs.Crash{Data: crashfs.TearNone, Dirs: crashfs.DirsAll})
		_, st, err = eventlog.Open(logDir, eventlog.Options{FS: out}, &collector{})
		switch {
		case err != nil:
			refused++
			t.Logf("seed %d: served %d after the failed fsync; after a power cut: %v", seed, servedTo, err)
		case st.LastSeq < max(acked, servedTo):
			lost++
			t.Logf("seed %d: served %d, acknowledged %d; after a power cut the log ends at %d", seed, servedTo, acked, st.LastSeq)
		}
	}
	if served+refused+lost > 0 {
		t.Fatalf("of 10 seeds: %d restarts served an un-durable batch; after a power cut %d logs were refused, %d lost served or acknowledged records",
			served, refused, lost)
	}
}

// hookFS runs hook before every ReadFile.
type hookFS struct {
	*crashfs.FS
	hook func(name string)
}

func (f *hookFS) ReadFile(name string) ([]byte, error) {
	if f.hook != nil {
		f.hook(name)
	}
	return f.FS.ReadFile(name)
}

// TestRedTeamReadAcrossCompactionHasNoGap attacks what Read (GET /v1/events) serves: a
// compaction between two segments of one Read removes the segments after the one just read,
// Read skips them as "compacted away meanwhile" and goes on with the last segment, so one
// answer holds records 1-2 and then 19-20: a gap inside the answer, not (as documented) an
// answer that starts at the oldest record kept. Not a durability loss (a snapshot covers the
// skipped records), but a client paging by sequence gets a stream with a hole in the middle.
func TestRedTeamReadAcrossCompactionHasNoGap(t *testing.T) {
	fs := &hookFS{FS: crashfs.New(1)}
	l, _, err := eventlog.Open(logDir, eventlog.Options{FS: fs, SegmentSize: 200}, &collector{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		if _, err := l.Append(typeEvt, rtPayload(fmt.Sprintf("r%d", i), 64)); err != nil {
			t.Fatal(err)
		}
	}
	reads := 0
	fs.hook = func(string) {
		if reads++; reads == 2 { // between the first and the second segment of the Read
			if err := l.SaveSnapshot(l.Durable(), []byte("state")); err != nil {
				t.Error(err)
			}
		}
	}
	recs, err := l.Read(0, 100)
	if err != nil {
		t.Fatal(err)
	}
	seqs := make([]uint64, 0, len(recs))
	for _, r := range recs {
		seqs = append(seqs, r.Seq)
	}
	for i := 1; i < len(recs); i++ {
		if recs[i].Seq != recs[i-1].Seq+1 {
			t.Fatalf("one Read answered sequences %v: a gap after %d", seqs, recs[i-1].Seq)
		}
	}
}

// TestRedTeamOversizedRecordIsNotATornTail attacks claim 3: doc.go lists "an oversized ...
// record" as corruption, but in the last segment an oversized record goes through the torn-tail
// rule, and laterBatch skips every record over the maximum, so when every later record is over
// it too, acknowledged records are cut silently. A log reopened with a smaller MaxRecordSize
// than it was written with (a configuration change, or a tool such as vendinglog opening it
// with other options) loses its whole last segment without a word.
func TestRedTeamOversizedRecordIsNotATornTail(t *testing.T) {
	// Three records: later batches follow the first. One record: nothing follows it, and only
	// its own checksum says it is whole.
	for _, n := range []int{3, 1} {
		t.Run(fmt.Sprintf("%d records", n), func(t *testing.T) { oversizedRecords(t, n) })
	}
}

func oversizedRecords(t *testing.T, n int) {
	fs := crashfs.New(1)
	l, _, err := eventlog.Open(logDir, eventlog.Options{FS: fs}, &collector{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if _, err := l.Append(typeEvt, rtPayload(fmt.Sprintf("big%d", i), 1000)); err != nil {
			t.Fatal(err)
		}
	}
	_ = l.Close()
	img := fs.Crash(crashfs.Crash{Data: crashfs.TearNone, Dirs: crashfs.DirsAll})
	_, st, err := eventlog.Open(logDir, eventlog.Options{FS: img, MaxRecordSize: 512}, &collector{})
	if err == nil {
		t.Fatalf("reopened with a smaller MaxRecordSize: no error, log ends at %d, %d bytes cut as a torn tail (%d records were acknowledged)",
			st.LastSeq, st.TornBytes, n)
	}
}
