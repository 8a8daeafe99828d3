package crashfs

import (
	"bytes"
	"errors"
	"os"
	"syscall"
	"testing"
)

const d = "/data"

func mustFile(t *testing.T, fs *FS, name string, flag int) *file {
	t.Helper()
	f, err := fs.OpenFile(d+"/"+name, flag, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	return f.(*file)
}

func write(t *testing.T, f *file, p []byte) {
	t.Helper()
	if n, err := f.Write(p); err != nil || n != len(p) {
		t.Fatalf("write: %d, %v", n, err)
	}
}

func read(fs *FS, name string) ([]byte, bool) {
	b, err := fs.ReadFile(d + "/" + name)
	return b, err == nil
}

func newFS(t *testing.T) *FS {
	fs := New(1)
	if err := fs.MkdirAll(d, 0o750); err != nil {
		t.Fatal(err)
	}
	return fs
}

var (
	durableOnly = Crash{Data: TearNone, Dirs: DirsNone}
	keepAll     = Crash{Data: TearKeep, Dirs: DirsAll}
)

// fdatasync makes data durable, not the name: without a SyncDir, a crash may lose the file.
func TestSyncPersistsDataNotTheName(t *testing.T) {
	fs := newFS(t)
	f := mustFile(t, fs, "a", os.O_CREATE|os.O_WRONLY)
	write(t, f, []byte("hello"))
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, ok := read(fs.Crash(durableOnly), "a"); ok {
		t.Fatal("a file whose directory was never synced survived a crash that keeps nothing pending")
	}
	if b, _ := read(fs.Crash(Crash{Data: TearNone, Dirs: DirsAll}), "a"); string(b) != "hello" {
		t.Fatalf("with its entry kept, the synced file holds %q", b)
	}
	if err := fs.SyncDir(d); err != nil {
		t.Fatal(err)
	}
	write(t, f, []byte(" world"))
	if b, _ := read(fs.Crash(durableOnly), "a"); string(b) != "hello" {
		t.Fatalf("after SyncDir, durable content %q, want the synced bytes only", b)
	}
	if b, _ := read(fs.Crash(keepAll), "a"); string(b) != "hello world" {
		t.Fatalf("keeping pending writes: %q", b)
	}
}

// A rename is atomic: a crash finds the file under its old name or its new one.
func TestRenameIsAtomic(t *testing.T) {
	fs := newFS(t)
	f := mustFile(t, fs, "x.tmp", os.O_CREATE|os.O_WRONLY)
	write(t, f, []byte("data"))
	_ = f.Sync()
	_ = fs.SyncDir(d)
	if err := fs.Rename(d+"/x.tmp", d+"/x"); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for seed := int64(0); seed < 64; seed++ {
		img := fs.Crash(Crash{Data: TearAny, Dirs: DirsAny, Seed: seed})
		_, old := read(img, "x.tmp")
		_, nw := read(img, "x")
		if old == nw {
			t.Fatalf("seed %d: old name %v, new name %v", seed, old, nw)
		}
		seen[map[bool]string{true: "old", false: "new"}[old]] = true
	}
	if !seen["old"] || !seen["new"] {
		t.Fatalf("crashes never showed both outcomes: %v", seen)
	}
}

// Directory operations survive in order (DirsPrefix) or any subset (DirsAny): a remove after a
// rename can survive without it only with DirsAny.
func TestDirectoryOrder(t *testing.T) {
	fs := newFS(t)
	for _, n := range []string{"old", "snap.tmp"} {
		f := mustFile(t, fs, n, os.O_CREATE|os.O_WRONLY)
		write(t, f, []byte(n))
		_ = f.Sync()
	}
	_ = fs.SyncDir(d)
	_ = fs.Rename(d+"/snap.tmp", d+"/snap")
	_ = fs.Remove(d + "/old")
	reordered := func(m DirMode) bool {
		for seed := int64(0); seed < 200; seed++ {
			img := fs.Crash(Crash{Dirs: m, Seed: seed})
			_, snap := read(img, "snap")
			_, old := read(img, "old")
			if !snap && !old {
				return true
			}
		}
		return false
	}
	if reordered(DirsPrefix) {
		t.Fatal("DirsPrefix kept a remove without the rename before it")
	}
	if !reordered(DirsAny) {
		t.Fatal("DirsAny never kept the remove without the rename")
	}
}

// Tears: over many seeds a pending write is lost, kept, and torn with zeros, garbage or old
// bytes, by sector and at arbitrary bytes, and a grown size can survive over zeros.
func TestTearsCoverTheShapes(t *testing.T) {
	fs := newFS(t)
	f := mustFile(t, fs, "seg", os.O_CREATE|os.O_WRONLY)
	base := bytes.Repeat([]byte{'d'}, 100)
	write(t, f, base)
	_ = f.Sync()
	_ = fs.SyncDir(d)
	newData := bytes.Repeat([]byte{'n'}, 1500)
	write(t, f, newData)
	want := append(append([]byte(nil), base...), newData...)
	shapes := map[string]bool{}
	for seed := int64(0); seed < 400; seed++ {
		img := fs.Crash(Crash{Data: []TearMode{TearAny, TearPrefix}[seed%2], Dirs: DirsNone, Seed: seed})
		b, ok := read(img, "seg")
		if !ok || len(b) < 100 || !bytes.Equal(b[:100], base) {
			t.Fatalf("seed %d: durable bytes damaged: %v %q", seed, ok, b[:min(len(b), 100)])
		}
		rest := b[100:]
		switch {
		case len(rest) == 0:
			shapes["lost"] = true
		case bytes.Equal(b, want):
			shapes["kept"] = true
		default:
			shapes["torn"] = true
			if len(b) == len(want) && bytes.Contains(rest, make([]byte, 20)) {
				shapes["zeros within the size"] = true
			}
			if bytes.ContainsFunc(rest, func(r rune) bool { return r != 'n' && r != 0 }) {
				shapes["garbage"] = true
			}
			for i := 0; i+1 < len(rest); i++ {
				if rest[i] == 'n' && rest[i+1] != 'n' && (100+i+1)%sectorSize != 0 {
					shapes["torn mid-sector"] = true
				}
			}
		}
	}
	for _, s := range []string{"lost", "kept", "torn", "zeros within the size", "garbage", "torn mid-sector"} {
		if !shapes[s] {
			t.Errorf("no crash showed %q (saw %v)", s, shapes)
		}
	}
}

func TestPowerCutFailsEveryLaterOperation(t *testing.T) {
	fs := newFS(t)
	f := mustFile(t, fs, "a", os.O_CREATE|os.O_WRONLY)
	fs.CutAt(fs.OpCount() + 1)
	write(t, f, []byte("x")) // op k-1 runs
	if _, err := f.Write([]byte("y")); !errors.Is(err, ErrPowerCut) {
		t.Fatalf("write after the cut: %v", err)
	}
	if err := f.Sync(); !errors.Is(err, ErrPowerCut) {
		t.Fatalf("sync after the cut: %v", err)
	}
	if _, err := fs.ReadFile(d + "/a"); !errors.Is(err, ErrPowerCut) {
		t.Fatalf("read after the cut: %v", err)
	}
	if !fs.PowerCut() || fs.OpCount() != 3 {
		t.Fatalf("cut %v after %d ops", fs.PowerCut(), fs.OpCount())
	}
}

func TestCrashIsDeterministic(t *testing.T) {
	fs := newFS(t)
	f := mustFile(t, fs, "a", os.O_CREATE|os.O_WRONLY)
	write(t, f, bytes.Repeat([]byte("abc"), 700))
	for seed := int64(0); seed < 20; seed++ {
		c := RandomCrash(seed)
		a, _ := read(fs.Crash(c), "a")
		b, _ := read(fs.Crash(c), "a")
		if !bytes.Equal(a, b) {
			t.Fatalf("crash %v gave two images", c)
		}
	}
}

// fsyncgate: a failed Sync leaves the page cache serving data the disk may not hold, and a
// later successful Sync does not write it again; Restart keeps serving it.
func TestFailedSyncLosesPagesForGood(t *testing.T) {
	for seed := int64(0); seed < 50; seed++ {
		fs := New(seed)
		_ = fs.MkdirAll(d, 0o750)
		f := mustFile(t, fs, "a", os.O_CREATE|os.O_WRONLY)
		_ = fs.SyncDir(d)
		fs.Inject(Fault{Kind: OpSync, N: 1, Err: syscall.EIO})
		write(t, f, bytes.Repeat([]byte{'x'}, 1000))
		if err := f.Sync(); !errors.Is(err, syscall.EIO) {
			t.Fatalf("injected sync: %v", err)
		}
		if err := f.Sync(); err != nil {
			t.Fatalf("second sync: %v", err)
		}
		if b, _ := read(fs.Restart(), "a"); len(b) != 1000 {
			t.Fatalf("restart (page cache kept) serves %d bytes, want 1000", len(b))
		}
		b, _ := read(fs.Crash(keepAll), "a")
		if !bytes.Equal(b, bytes.Repeat([]byte{'x'}, 1000)) {
			return // this seed lost part of the write for good, as wanted
		}
	}
	t.Fatal("no seed lost any of a write whose Sync failed")
}

func TestShortWriteAndInjectedErrors(t *testing.T) {
	fs := newFS(t)
	f := mustFile(t, fs, "a", os.O_CREATE|os.O_WRONLY)
	fs.Inject(Fault{Kind: OpWrite, N: 1, Short: 3})
	fs.Inject(Fault{Kind: OpWrite, N: 2, Err: syscall.ENOSPC})
	if n, err := f.Write([]byte("abcdef")); n != 3 || err != nil {
		t.Fatalf("short write: %d, %v", n, err)
	}
	if n, err := f.Write([]byte("gh")); n != 0 || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("ENOSPC: %d, %v", n, err)
	}
	if b, _ := read(fs, "a"); string(b) != "abc" {
		t.Fatalf("content %q", b)
	}
}
