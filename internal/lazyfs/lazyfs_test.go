package lazyfs

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// mount mounts a lazy file system for one test, or skips the test where FUSE cannot mount.
func mount(t *testing.T) (l *FS, mnt, backing string) {
	t.Helper()
	if reason := CannotMount(); reason != "" {
		t.Skip(reason)
	}
	backing, mnt = filepath.Join(t.TempDir(), "backing"), filepath.Join(t.TempDir(), "mnt")
	for _, d := range []string{backing, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	l, err := Mount(backing, mnt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Unmount(); err != nil {
			t.Error(err)
		}
	})
	return l, mnt, backing
}

func write(t *testing.T, path string, flag int, data []byte, off int64, sync bool) {
	t.Helper()
	f, err := os.OpenFile(path, flag, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
	if sync {
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			t.Fatalf("fdatasync %s: %v", path, err)
		}
	}
}

func content(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != int64(len(b)) {
		t.Fatalf("%s: stat says %d bytes, read %d", path, st.Size(), len(b))
	}
	return b
}

func expect(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: got %d bytes %q, want %d bytes %q", what, len(got), trim(got), len(want), trim(want))
	}
}

func trim(b []byte) []byte {
	if len(b) > 40 {
		return b[:40]
	}
	return b
}

// Written-not-synced data is seen by reads before the cut and gone after it; synced data stays.
func TestCrashDropsOnlyUnsyncedWrites(t *testing.T) {
	l, mnt, backing := mount(t)
	synced, unsynced := filepath.Join(mnt, "synced"), filepath.Join(mnt, "unsynced")
	big := bytes.Repeat([]byte("0123456789abcdef"), 1000) // 16000 bytes: several pages, a partial last one

	write(t, synced, os.O_CREATE|os.O_WRONLY, big, 0, true)
	write(t, synced, os.O_WRONLY, []byte("tail-not-synced"), int64(len(big)), false)
	write(t, synced, os.O_WRONLY, []byte("XX"), 5000, false) // an overwrite inside a synced page
	write(t, unsynced, os.O_CREATE|os.O_WRONLY, []byte("hello"), 0, false)

	want := append(append([]byte{}, big...), "tail-not-synced"...)
	copy(want[5000:], "XX")
	expect(t, "before the cut, through the mount", content(t, synced), want)
	expect(t, "before the cut, through the mount", content(t, unsynced), []byte("hello"))
	expect(t, "the backing file before the cut", content(t, filepath.Join(backing, "synced")), big)
	if n := l.Unsynced(); n == 0 {
		t.Fatal("nothing un-synced before the cut")
	}

	l.Crash()
	expect(t, "after the cut", content(t, synced), big)
	expect(t, "after the cut (the create itself is durable: metadata is not cached)", content(t, unsynced), nil)
	if st := l.Stats(); st.Crashes != 1 || st.DroppedBytes == 0 {
		t.Fatalf("stats %+v", st)
	}

	// fsync (not only fdatasync) and a sync through another descriptor cover the inode's writes.
	write(t, unsynced, os.O_WRONLY, []byte("again"), 0, false)
	f, err := os.Open(unsynced)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	l.Crash()
	expect(t, "synced through another descriptor", content(t, unsynced), []byte("again"))
}

// A truncation is un-synced data too: lost by a cut, made durable by fsync; bytes past a
// truncation read as zeros when the file grows again.
func TestTruncate(t *testing.T) {
	l, mnt, _ := mount(t)
	p := filepath.Join(mnt, "f")
	data := bytes.Repeat([]byte{'a'}, 10000)
	write(t, p, os.O_CREATE|os.O_WRONLY, data, 0, true)

	if err := os.Truncate(p, 100); err != nil {
		t.Fatal(err)
	}
	expect(t, "truncated", content(t, p), data[:100])
	write(t, p, os.O_WRONLY, []byte("b"), 6000, false)
	want := make([]byte, 6001)
	copy(want, data[:100])
	want[6000] = 'b'
	expect(t, "grown after the truncation", content(t, p), want)
	l.Crash()
	expect(t, "an un-synced truncation is lost", content(t, p), data)

	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(50); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	f.Close()
	l.Crash()
	expect(t, "a synced truncation stays", content(t, p), data[:50])
}

// Un-synced data follows its inode through a rename; unlinking a file drops its cache so a new
// file never shows it.
func TestRenameAndUnlink(t *testing.T) {
	l, mnt, backing := mount(t)
	tmp, final := filepath.Join(mnt, "x.tmp"), filepath.Join(mnt, "x")
	write(t, tmp, os.O_CREATE|os.O_WRONLY, []byte("payload"), 0, false)
	if err := os.Rename(tmp, final); err != nil {
		t.Fatal(err)
	}
	expect(t, "renamed, before sync", content(t, final), []byte("payload"))
	f, err := os.OpenFile(final, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	f.Close()
	l.Crash()
	expect(t, "synced under its new name", content(t, final), []byte("payload"))
	expect(t, "backing", content(t, filepath.Join(backing, "x")), []byte("payload"))

	gone := filepath.Join(mnt, "gone")
	write(t, gone, os.O_CREATE|os.O_WRONLY, []byte("secret"), 0, false)
	if err := os.Remove(gone); err != nil {
		t.Fatal(err)
	}
	if n := l.Unsynced(); n != 0 {
		t.Fatalf("%d un-synced bytes of an unlinked file are kept", n)
	}
	write(t, gone, os.O_CREATE|os.O_WRONLY, []byte("new"), 0, false)
	expect(t, "a new file under the old name", content(t, gone), []byte("new"))
	// Replacing a file by rename drops the replaced file's cache.
	write(t, final, os.O_WRONLY, []byte("PAY"), 0, false)
	if err := os.Rename(gone, final); err != nil {
		t.Fatal(err)
	}
	l.Crash()
	expect(t, "the replacing file, after the cut", content(t, final), nil)
}

// The event log's lock and directory fsync work through the mount.
func TestFlockAndDirectorySync(t *testing.T) {
	_, mnt, _ := mount(t)
	p := filepath.Join(mnt, "LOCK")
	a, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := unix.Flock(int(a.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatalf("first flock: %v", err)
	}
	if err := unix.Flock(int(b.Fd()), unix.LOCK_EX|unix.LOCK_NB); !errors.Is(err, unix.EWOULDBLOCK) {
		t.Fatalf("second flock: %v, want EWOULDBLOCK", err)
	}
	a.Close()
	if err := unix.Flock(int(b.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatalf("flock after the holder closed: %v", err)
	}
	d, err := os.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		t.Fatalf("directory fsync: %v", err)
	}
}

// A torn cut keeps a prefix of the un-synced pages, in offset order, and nothing else.
func TestCrashTornKeepsAPrefix(t *testing.T) {
	fsys, mnt, _ := mount(t)
	base := bytes.Repeat([]byte{'.'}, 5*pageSize)
	for seed := range uint64(20) {
		p := filepath.Join(mnt, "torn")
		write(t, p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, base, 0, true)
		update := bytes.Repeat([]byte{'#'}, 5*pageSize)
		write(t, p, os.O_WRONLY, update, 0, false)
		if err := fsys.CrashTorn(rand.New(rand.NewPCG(seed, 1))); err != nil {
			t.Fatal(err)
		}
		got := content(t, p)
		k := bytes.IndexByte(got, '.')
		if k < 0 {
			k = len(got)
		}
		if k%pageSize != 0 || !bytes.Equal(got[k:], base[k:]) || !bytes.Equal(got[:k], update[:k]) {
			t.Fatalf("seed %d: not a page prefix of the update over the old content (first old byte at %d)", seed, k)
		}
	}
}

// With the power off, a running process's fsync fails instead of making dropped data durable,
// and nothing it writes or renames reaches the disk; with the power back, everything works.
func TestPowerOffFailsEverythingUntilPowerOn(t *testing.T) {
	l, mnt, backing := mount(t)
	p := filepath.Join(mnt, "log")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("acknowledged?")); err != nil {
		t.Fatal(err)
	}
	if err := l.PowerOff(nil); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fdatasync(int(f.Fd())); !errors.Is(err, unix.EIO) {
		t.Fatalf("fdatasync after the cut: %v, want EIO", err)
	}
	if _, err := f.Write([]byte("more")); !errors.Is(err, unix.EIO) {
		t.Fatalf("write after the cut: %v, want EIO", err)
	}
	if err := os.Rename(p, p+".new"); !errors.Is(err, unix.EIO) {
		t.Fatalf("rename after the cut: %v, want EIO", err)
	}
	l.PowerOn()
	expect(t, "after the cut", content(t, p), nil)
	expect(t, "the backing file", content(t, filepath.Join(backing, "log")), nil)
	if _, err := f.WriteAt([]byte("again"), 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		t.Fatalf("fdatasync with the power back: %v", err)
	}
	l.Crash()
	expect(t, "synced with the power back", content(t, p), []byte("again"))
}
