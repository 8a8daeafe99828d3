// Package lazyfs is a FUSE file system that can lose power: a loopback over a backing
// directory whose file writes stay in memory until the file is fsynced (or fdatasynced), so a
// Crash drops exactly what a real power cut may drop. It is the approach of LazyFS, which etcd's
// robustness tests use, rendered with go-fuse, for running the real vendingpod binary through
// power cuts (SIGKILL keeps the kernel's page cache, so it cannot find a missing fsync).
//
// What it models, and what it does not:
//   - File data: writes and truncations are held per inode (a page cache keyed by the backing
//     inode number), merged over the backing file for reads and for the size that stat reports,
//     and written to the backing file only by fsync/fdatasync of that file. Crash drops them.
//     Because the cache is keyed by inode, un-synced data follows a file through rename, and an
//     unlinked or replaced file's cache is dropped with its last name.
//   - Metadata goes straight to the backing directory, as in LazyFS: create, rename, unlink,
//     mkdir and opening with O_TRUNC are durable at once, and directory fsync is a no-op. A
//     missing directory fsync is therefore NOT found here (internal/eventlog's crash-simulation
//     file system covers that).
//   - Every open file uses direct I/O and attributes are never cached, so the kernel's page cache
//     cannot serve bytes the Crash dropped. mmap of files is therefore not supported.
//   - Locks (flock, fcntl) are the kernel's or the backing file's, so they work across the
//     processes of this host and are released when a killed process's files close.
//
// Crash keeps nothing un-synced; CrashTorn keeps a prefix of each file's un-synced pages, as a
// disk that wrote part of the page cache before the power went. Both are for a file system no
// process is using. With a process still running, PowerOff drops the same data and then fails
// every change with EIO until PowerOn: an fsync in flight at the cut fails instead of completing
// after it, so a process is never told "durable" about data the cut dropped. SetSyncDelay gives
// fsync a disk's latency, so a cut can land between a write and its fsync.
package lazyfs

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// pageSize is the unit of the write cache and of torn writes.
const pageSize = 4096

// ErrMount is returned when the file system cannot be mounted (no /dev/fuse, not root).
var ErrMount = errors.New("lazyfs: mount failed")

// FS is one mounted lazy file system.
type FS struct {
	backing, mountpoint string
	server              *fuse.Server

	syncDelay atomic.Int64 // nanoseconds each fsync takes at least: a disk's latency

	// power is held shared by every operation that changes something, and exclusively to cut
	// the power; while off, those operations fail with EIO (the disk is gone).
	power sync.RWMutex
	off   bool

	mu    sync.Mutex
	files map[uint64]*dirtyFile // by backing inode number
	stats Stats
}

// Stats counts what the file system did, for verdicts and for tests that must prove a cut
// really dropped something.
type Stats struct {
	Crashes      int   // Crash and CrashTorn calls
	DroppedBytes int64 // un-synced bytes the crashes dropped (whole pages, clipped to the size)
	SyncedBytes  int64 // bytes written to the backing files by fsync
	Syncs        int   // fsync/fdatasync calls that wrote something
}

// dirtyFile is one inode's un-synced state.
type dirtyFile struct {
	pages map[int64][]byte // page index -> pageSize bytes, the file's content as written
	size  int64            // the file's size as the writer sees it
	// backingValid is how much of the backing file still shows through: a truncation cuts it,
	// and bytes past it read as zeros even if the (not yet truncated) backing file has more.
	backingValid int64
}

// CannotMount says why this process cannot mount a FUSE file system here, or "" if it can:
// tests skip with the reason.
func CannotMount() string {
	if os.Geteuid() != 0 {
		return "lazyfs: mounting FUSE without fusermount needs root"
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return "lazyfs: no /dev/fuse: " + err.Error()
	}
	return ""
}

// Mount mounts a lazy view of backing on mountpoint (both must exist). Unmount it when done.
func Mount(backing, mountpoint string) (*FS, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(backing, &st); err != nil {
		return nil, fmt.Errorf("lazyfs: backing directory %s: %w", backing, err)
	}
	lfs := &FS{backing: backing, mountpoint: mountpoint, files: map[uint64]*dirtyFile{}}
	root := &fs.LoopbackRoot{Path: backing, Dev: st.Dev}
	// The nodes below the root are made lazyfs nodes by (*node).WrapChild.
	rootNode := &node{LoopbackNode: fs.LoopbackNode{RootData: root}, lfs: lfs}
	root.RootNode = rootNode
	zero := time.Duration(0)
	server, err := fs.Mount(mountpoint, rootNode, &fs.Options{
		// Never cache attributes or entries: after a Crash, sizes and contents must come from
		// here again.
		AttrTimeout: &zero, EntryTimeout: &zero, NegativeTimeout: &zero,
		MountOptions: fuse.MountOptions{
			DirectMount: true, // there is no fusermount here; we are root
			FsName:      "lazyfs",
			Name:        "lazyfs",
			AllowOther:  true,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %s on %s: %w", ErrMount, backing, mountpoint, err)
	}
	lfs.server = server
	if err := server.WaitMount(); err != nil {
		_ = server.Unmount()
		return nil, fmt.Errorf("%w: waiting for %s: %w", ErrMount, mountpoint, err)
	}
	return lfs, nil
}

// Unmount unmounts the file system. Un-synced data is dropped, as in a crash.
func (l *FS) Unmount() error {
	var err error
	for range 50 { // a file a dying process still holds keeps the mount busy for a moment
		if err = l.server.Unmount(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("lazyfs: unmounting %s: %w", l.mountpoint, err)
}

// SetSyncDelay makes every fsync take at least d, as on a real disk (the backing directory may
// be on a RAM disk). It widens the window between a write and its durability that a broken
// program (one that acknowledges before fsync) exposes to a power cut.
func (l *FS) SetSyncDelay(d time.Duration) { l.syncDelay.Store(int64(d)) }

// Mountpoint is where the file system is mounted.
func (l *FS) Mountpoint() string { return l.mountpoint }

// Stats returns the counters so far.
func (l *FS) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stats
}

// Unsynced returns how many bytes are written but not synced (whole pages, clipped to sizes).
func (l *FS) Unsynced() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var n int64
	for _, d := range l.files {
		n += d.cachedBytes()
	}
	return n
}

// Crash is a power cut: every write and truncation not covered by an fsync of its file is gone.
// Stop the processes using the file system first (SIGKILL), or they keep writing after the cut.
func (l *FS) Crash() {
	_ = l.PowerOff(nil)
	l.PowerOn()
}

// CrashTorn is a power cut after the disk wrote part of the page cache: of each file's
// un-synced pages, a random prefix in offset order reaches the backing file (a truncation still
// pending is lost), the rest is dropped.
func (l *FS) CrashTorn(rng *rand.Rand) error {
	err := l.PowerOff(rng)
	l.PowerOn()
	return err
}

// PowerOff cuts the power while processes still run: un-synced writes are dropped (with rng,
// a torn prefix of them is kept, as in CrashTorn), and until PowerOn every write, fsync,
// truncation, open, create, rename, unlink and mkdir fails with EIO, so an fsync in flight
// cannot succeed after the cut and nothing a dying process does reaches the disk. Kill the
// processes, then PowerOn.
func (l *FS) PowerOff(rng *rand.Rand) error {
	l.power.Lock()
	defer l.power.Unlock()
	l.off = true
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stats.Crashes++
	var errs []error
	for ino, d := range l.files {
		if rng != nil {
			kept, err := l.writeTornPrefix(ino, d, rng)
			l.stats.DroppedBytes -= kept
			errs = append(errs, err)
		}
		l.stats.DroppedBytes += d.cachedBytes()
	}
	l.files = map[uint64]*dirtyFile{}
	return errors.Join(errs...)
}

// PowerOn brings the disk back after PowerOff.
func (l *FS) PowerOn() {
	l.power.Lock()
	defer l.power.Unlock()
	l.off = false
}

// enter admits an operation that changes something, or refuses it while the power is off.
// Call the returned function when the operation is done.
func (l *FS) enter() (func(), syscall.Errno) {
	l.power.RLock()
	if l.off {
		l.power.RUnlock()
		return nil, syscall.EIO
	}
	return l.power.RUnlock, 0
}

// writeTornPrefix writes the first k of d's pages (k random) to the backing file with inode ino.
func (l *FS) writeTornPrefix(ino uint64, d *dirtyFile, rng *rand.Rand) (int64, error) {
	idx := d.pageIndexes()
	k := rng.IntN(len(idx) + 1)
	if k == 0 {
		return 0, nil
	}
	path, err := findInode(l.backing, ino)
	if err != nil || path == "" {
		return 0, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return 0, fmt.Errorf("lazyfs: tearing %s: %w", path, err)
	}
	var kept int64
	for _, p := range idx[:k] {
		b := d.pageBytes(p)
		if _, err := f.WriteAt(b, p*pageSize); err != nil {
			_ = f.Close() // the write error is the one to report
			return kept, fmt.Errorf("lazyfs: tearing %s: %w", path, err)
		}
		kept += int64(len(b))
	}
	if err := f.Close(); err != nil {
		return kept, fmt.Errorf("lazyfs: tearing %s: %w", path, err)
	}
	return kept, nil
}

// findInode returns the path under dir of the file with inode ino, or "" if none has a name.
func findInode(dir string, ino uint64) (string, error) {
	var found string
	err := filepath.WalkDir(dir, func(p string, de os.DirEntry, err error) error {
		if err != nil || found != "" {
			return err
		}
		info, err := de.Info()
		if err != nil {
			return nil //nolint:nilerr // removed while walking
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Ino == ino && de.Type().IsRegular() {
			found = p
		}
		return nil
	})
	return found, err
}

// pageIndexes returns the cached pages in offset order.
func (d *dirtyFile) pageIndexes() []int64 {
	idx := make([]int64, 0, len(d.pages))
	for p := range d.pages {
		idx = append(idx, p)
	}
	sort.Slice(idx, func(i, j int) bool { return idx[i] < idx[j] })
	return idx
}

// pageBytes returns page p clipped to the file's size.
func (d *dirtyFile) pageBytes(p int64) []byte {
	b := d.pages[p]
	if end := d.size - p*pageSize; end < int64(len(b)) {
		b = b[:max(end, 0)]
	}
	return b
}

func (d *dirtyFile) cachedBytes() int64 {
	var n int64
	for p := range d.pages {
		n += int64(len(d.pageBytes(p)))
	}
	return n
}

// dirty returns the state of inode ino, creating it from the backing file's size.
func (l *FS) dirty(ino uint64, backingSize int64) *dirtyFile {
	d := l.files[ino]
	if d == nil {
		d = &dirtyFile{pages: map[int64][]byte{}, size: backingSize, backingValid: backingSize}
		l.files[ino] = d
	}
	return d
}

// readBacking reads the backing file's bytes at off that still show through (zeros past
// backingValid or past the backing file's end).
func readBacking(fd int, d *dirtyFile, buf []byte, off int64) error {
	clear(buf)
	n := int64(len(buf))
	if d != nil {
		n = min(n, d.backingValid-off)
	}
	if n <= 0 {
		return nil
	}
	for done := int64(0); done < n; {
		m, err := syscall.Pread(fd, buf[done:n], off+done)
		if err != nil {
			return err
		}
		if m == 0 {
			break
		}
		done += int64(m)
	}
	return nil
}

// write puts data at off into inode ino's cache, loading partly written pages from fd.
func (l *FS) write(fd int, ino uint64, data []byte, off int64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	size, err := fdSize(fd)
	if err != nil {
		return err
	}
	d := l.dirty(ino, size)
	for len(data) > 0 {
		p, in := off/pageSize, off%pageSize
		page := d.pages[p]
		if page == nil {
			page = make([]byte, pageSize)
			if err := readBacking(fd, d, page, p*pageSize); err != nil {
				return err
			}
			// Bytes past the writer's size are zeros, whatever the backing file still holds.
			if end := d.size - p*pageSize; end < pageSize {
				clear(page[max(end, 0):])
			}
			d.pages[p] = page
		}
		n := copy(page[in:], data)
		data, off = data[n:], off+int64(n)
	}
	d.size = max(d.size, off)
	return nil
}

// read returns the file's content at off as the writer sees it.
func (l *FS) read(fd int, ino uint64, buf []byte, off int64) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := l.files[ino]
	if d == nil {
		n, err := syscall.Pread(fd, buf, off)
		return max(n, 0), err
	}
	if off >= d.size {
		return 0, nil
	}
	buf = buf[:min(int64(len(buf)), d.size-off)]
	if err := readBacking(fd, d, buf, off); err != nil {
		return 0, err
	}
	for done := 0; done < len(buf); {
		pos := off + int64(done)
		p, in := pos/pageSize, pos%pageSize
		n := min(len(buf)-done, int(pageSize-in))
		if page := d.pages[p]; page != nil {
			copy(buf[done:done+n], page[in:])
		}
		done += n
	}
	return len(buf), nil
}

// truncate sets inode ino's size in the cache; the backing file is cut at the next fsync.
func (l *FS) truncate(ino uint64, backingSize, size int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := l.dirty(ino, backingSize)
	if size < d.size {
		for p, page := range d.pages {
			switch start := p * pageSize; {
			case start >= size:
				delete(d.pages, p)
			case start+pageSize > size:
				clear(page[size-start:])
			}
		}
		d.backingValid = min(d.backingValid, size)
	}
	d.size = size
}

// sync writes inode ino's cache to the backing file through fd and makes it durable there.
func (l *FS) sync(fd int, ino uint64, datasync bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := l.files[ino]
	if d != nil {
		if err := syscall.Ftruncate(fd, d.backingValid); err != nil {
			return err
		}
		var n int64
		for _, p := range d.pageIndexes() {
			b := d.pageBytes(p)
			if _, err := syscall.Pwrite(fd, b, p*pageSize); err != nil {
				return err
			}
			n += int64(len(b))
		}
		if err := syscall.Ftruncate(fd, d.size); err != nil {
			return err
		}
		delete(l.files, ino)
		l.stats.SyncedBytes += n
		l.stats.Syncs++
	}
	if datasync {
		return syscall.Fdatasync(fd)
	}
	return syscall.Fsync(fd)
}

// forget drops inode ino's cache: its last name is gone.
func (l *FS) forget(ino uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.files, ino)
}

// size returns the size the writer sees for inode ino, if it differs from the backing file's.
func (l *FS) size(ino uint64) (int64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if d := l.files[ino]; d != nil {
		return d.size, true
	}
	return 0, false
}

func fdSize(fd int) (int64, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return 0, err
	}
	return st.Size, nil
}

func fdIno(fd int) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// node is a loopback node whose file data goes through the FS's cache.
type node struct {
	fs.LoopbackNode
	lfs *FS
}

// WrapChild makes each node the loopback creates below n (by LOOKUP, CREATE, MKDIR, ...) a
// node of this file system, as the loopback's own nodes would be otherwise.
func (n *node) WrapChild(_ context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	ln, ok := ops.(*fs.LoopbackNode)
	if !ok {
		return ops
	}
	return &node{LoopbackNode: fs.LoopbackNode{RootData: ln.RootData}, lfs: n.lfs}
}

var (
	_ fs.NodeOpener      = (*node)(nil)
	_ fs.NodeWrapChilder = (*node)(nil)
	_ fs.NodeCreater     = (*node)(nil)
	_ fs.NodeGetattrer   = (*node)(nil)
	_ fs.NodeSetattrer   = (*node)(nil)
	_ fs.NodeStatxer     = (*node)(nil)
	_ fs.NodeUnlinker    = (*node)(nil)
	_ fs.NodeRenamer     = (*node)(nil)
)

func (n *node) backingPath() string {
	return filepath.Join(n.RootData.Path, n.Path(n.Root()))
}

// openFlags opens every backing file read-write (a write may need to read the rest of its page)
// and without O_APPEND (offsets come from the kernel).
func openFlags(flags uint32) uint32 {
	return flags&^(syscall.O_ACCMODE|syscall.O_APPEND) | syscall.O_RDWR
}

// Open opens the backing file; the handle sends data through the cache, with direct I/O so the
// kernel keeps no copy.
func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	done, errno := n.lfs.enter()
	if errno != 0 {
		return nil, 0, errno
	}
	defer done()
	fh, fuseFlags, errno := n.LoopbackNode.Open(ctx, openFlags(flags))
	if errno != 0 {
		return nil, 0, errno
	}
	return n.wrap(fh, flags, fuseFlags)
}

// Create creates the backing file at once (metadata is not cached) and opens it like Open.
func (n *node) Create(ctx context.Context, name string, flags, mode uint32,
	out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	done, errno := n.lfs.enter()
	if errno != 0 {
		return nil, nil, 0, errno
	}
	defer done()
	ch, fh, fuseFlags, errno := n.LoopbackNode.Create(ctx, name, openFlags(flags), mode, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	h, fuseFlags, errno := n.wrap(fh, flags, fuseFlags)
	return ch, h, fuseFlags, errno
}

func (n *node) wrap(fh fs.FileHandle, flags, fuseFlags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	lf, ok := fh.(*fs.LoopbackFile)
	if !ok {
		return nil, 0, syscall.EIO
	}
	f := &file{lf: lf, lfs: n.lfs}
	var ino uint64
	errno := f.withFd(func(fd int) (err error) { ino, err = fdIno(fd); return err })
	if errno != 0 {
		_ = lf.Release(context.Background())
		return nil, 0, errno
	}
	f.ino = ino
	if flags&syscall.O_TRUNC != 0 {
		// The backing open truncated the file for good; nothing cached before it survives.
		n.lfs.forget(ino)
	}
	return f, fuseFlags | fuse.FOPEN_DIRECT_IO, 0
}

// Getattr reports the size the writer sees.
func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if errno := n.LoopbackNode.Getattr(ctx, f, out); errno != 0 {
		return errno
	}
	n.patchAttr(&out.Attr)
	return 0
}

func (n *node) patchAttr(a *fuse.Attr) {
	if size, ok := n.lfs.size(n.StableAttr().Ino); ok {
		a.Size, a.Blocks = uint64(size), uint64(size+511)/512
	}
}

// Statx reports the size the writer sees.
func (n *node) Statx(ctx context.Context, f fs.FileHandle, flags, mask uint32, out *fuse.StatxOut) syscall.Errno {
	if errno := n.LoopbackNode.Statx(ctx, f, flags, mask, out); errno != 0 {
		return errno
	}
	if size, ok := n.lfs.size(n.StableAttr().Ino); ok {
		out.Size, out.Blocks = uint64(size), uint64(size+511)/512
	}
	return 0
}

// Setattr caches a size change (truncate, ftruncate); the rest goes to the backing file.
func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	done, errno := n.lfs.enter()
	if errno != 0 {
		return errno
	}
	defer done()
	if size, ok := in.GetSize(); ok && n.StableAttr().Mode&syscall.S_IFMT == syscall.S_IFREG {
		var st syscall.Stat_t
		if err := syscall.Stat(n.backingPath(), &st); err != nil {
			return fs.ToErrno(err)
		}
		n.lfs.truncate(n.StableAttr().Ino, st.Size, int64(size))
		in.Valid &^= fuse.FATTR_SIZE
	}
	var fh fs.FileHandle
	if lf, ok := f.(*file); ok {
		fh = lf.lf
	}
	if errno := n.LoopbackNode.Setattr(ctx, fh, in, out); errno != 0 {
		return errno
	}
	n.patchAttr(&out.Attr)
	return 0
}

// Unlink removes the name; the last name of a file takes its cache with it.
func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	done, errno := n.lfs.enter()
	if errno != 0 {
		return errno
	}
	defer done()
	ino, last := lastLink(filepath.Join(n.backingPath(), name))
	if errno := n.LoopbackNode.Unlink(ctx, name); errno != 0 {
		return errno
	}
	if last {
		n.lfs.forget(ino)
	}
	return 0
}

// Rename renames in the backing directory at once; cached data follows the inode. A file the
// rename replaces takes its cache with it.
func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	done, errno := n.lfs.enter()
	if errno != 0 {
		return errno
	}
	defer done()
	p, ok := newParent.(*node)
	if !ok {
		return syscall.EXDEV
	}
	ino, last := lastLink(filepath.Join(p.backingPath(), newName))
	if errno := n.LoopbackNode.Rename(ctx, name, &p.LoopbackNode, newName, flags); errno != 0 {
		return errno
	}
	if last && flags&unix.RENAME_EXCHANGE == 0 {
		n.lfs.forget(ino)
	}
	return 0
}

// Mkdir creates the directory in the backing directory at once.
func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	done, errno := n.lfs.enter()
	if errno != 0 {
		return nil, errno
	}
	defer done()
	return n.LoopbackNode.Mkdir(ctx, name, mode, out)
}

// lastLink says whether path is a regular file's only name, and its inode.
func lastLink(path string) (uint64, bool) {
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		return 0, false
	}
	return st.Ino, st.Mode&syscall.S_IFMT == syscall.S_IFREG && st.Nlink == 1
}

// file is an open file whose data goes through the cache. It delegates locks, flush and
// release to the loopback file, and on purpose does not offer the backing fd for kernel
// passthrough: passthrough would let writes bypass the cache.
type file struct {
	lf  *fs.LoopbackFile
	lfs *FS
	ino uint64
}

var (
	_ fs.FileReader    = (*file)(nil)
	_ fs.FileWriter    = (*file)(nil)
	_ fs.FileFsyncer   = (*file)(nil)
	_ fs.FileFlusher   = (*file)(nil)
	_ fs.FileReleaser  = (*file)(nil)
	_ fs.FileGetattrer = (*file)(nil)
	_ fs.FileGetlker   = (*file)(nil)
	_ fs.FileSetlker   = (*file)(nil)
	_ fs.FileSetlkwer  = (*file)(nil)
)

// withFd runs fn with the backing file descriptor.
func (f *file) withFd(fn func(fd int) error) syscall.Errno {
	fd, ok := f.lf.PassthroughFd()
	if !ok {
		return syscall.EBADF
	}
	return fs.ToErrno(fn(fd))
}

func (f *file) Read(ctx context.Context, buf []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	var n int
	errno := f.withFd(func(fd int) (err error) { n, err = f.lfs.read(fd, f.ino, buf, off); return err })
	if errno != 0 {
		return nil, errno
	}
	return fuse.ReadResultData(buf[:n]), 0
}

func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	done, errno := f.lfs.enter()
	if errno != 0 {
		return 0, errno
	}
	defer done()
	errno = f.withFd(func(fd int) error { return f.lfs.write(fd, f.ino, data, off) })
	if errno != 0 {
		return 0, errno
	}
	return uint32(len(data)), 0
}

// Fsync makes the file's cached writes durable. FUSE_FSYNC_FDATASYNC (bit 0) is fdatasync.
func (f *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	time.Sleep(time.Duration(f.lfs.syncDelay.Load())) // the disk's latency; the power may go meanwhile
	done, errno := f.lfs.enter()
	if errno != 0 {
		return errno
	}
	defer done()
	return f.withFd(func(fd int) error { return f.lfs.sync(fd, f.ino, flags&1 != 0) })
}

func (f *file) Flush(ctx context.Context) syscall.Errno   { return f.lf.Flush(ctx) }
func (f *file) Release(ctx context.Context) syscall.Errno { return f.lf.Release(ctx) }

func (f *file) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	if errno := f.lf.Getattr(ctx, out); errno != 0 {
		return errno
	}
	if size, ok := f.lfs.size(f.ino); ok {
		out.Size, out.Blocks = uint64(size), uint64(size+511)/512
	}
	return 0
}

func (f *file) Getlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32, out *fuse.FileLock) syscall.Errno {
	return f.lf.Getlk(ctx, owner, lk, flags, out)
}

func (f *file) Setlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return f.lf.Setlk(ctx, owner, lk, flags)
}

func (f *file) Setlkw(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return f.lf.Setlkw(ctx, owner, lk, flags)
}
