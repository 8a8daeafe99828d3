// Package crashfs is an in-memory eventlog.FS that loses power on command. It records every
// operation, models what a real file system keeps across a power cut (as ALICE and CrashMonkey
// do), and builds the crashed image a restarted machine would find, so tests can cut power at
// every operation of a workload and check what the log recovers.
//
// # What is durable
//
// Each file (inode) has durable bytes, as of its last successful Sync, and the bytes the
// page cache holds now; the writes and truncations since that Sync are pending. Sync is
// fdatasync: it makes the inode's data and size durable, not its name. Each directory has
// durable entries, as of its last SyncDir, and pending entry operations (create, rename,
// remove) since. A file created, written and synced but whose directory was never synced
// may vanish in a crash, as POSIX allows.
//
// # A power cut
//
// CutAt(k) makes operation k and every later one fail with ErrPowerCut (nothing panics, so the
// log's goroutines unwind through their error paths). Crash then builds the image a machine
// would find after rebooting: every file keeps its durable bytes; each pending write survives
// whole, not at all, or torn at 512-byte sectors or at arbitrary bytes, the lost parts
// holding zeros, garbage or the old bytes; a size extended by a pending write may survive
// with zeros under it. Pending directory operations survive as a prefix in order (what a
// journaling file system such as ext4 or xfs commits) or as any subset (what POSIX
// promises); a rename is atomic either way. The mkdir of a directory is durable at once: the
// log's directory is a mount point that exists before the log.
//
// Restart is the other kind of crash: the process dies and the kernel lives, so the page
// cache, with its pending writes, is what the next process reads.
//
// # Failures
//
// Inject fails the Nth Sync, Write or other operation with an error or a short write. A
// failed Sync models Linux since 4.13 ("fsyncgate"): the pending writes reached the disk in
// part or not at all, their pages are marked clean, and a later Sync does not write them
// again, while the page cache still serves them.
//
// Everything random comes from seeds, so a failing case can be replayed.
package crashfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vendingfleet/vending-operator/internal/eventlog"
)

// ErrPowerCut is what every operation returns once the power is cut.
var ErrPowerCut = errors.New("crashfs: power cut")

const sectorSize = 512

// OpKind names an operation.
type OpKind string

// Operations that are counted (and can be cut). Reads, Seek and Close change nothing durable
// and are not counted, but fail too after a cut.
const (
	OpCreate   OpKind = "create"
	OpWrite    OpKind = "write"
	OpSync     OpKind = "sync"
	OpTruncate OpKind = "truncate"
	OpRename   OpKind = "rename"
	OpRemove   OpKind = "remove"
	OpMkdir    OpKind = "mkdir"
	OpSyncDir  OpKind = "syncdir"
	OpOpen     OpKind = "open" // opening an existing file
)

// pathOpOpen is the Op of the *os.PathError a missing (or, with O_EXCL, existing) file
// returns, as the os package names it: the operation of the os package, not an OpKind.
const pathOpOpen = "open"

// Op is one recorded operation.
type Op struct {
	Kind OpKind
	Path string
	To   string // rename target
	Off  int64  // write offset, truncate size
	Len  int    // bytes written
	Err  error  // what it returned
}

func (o Op) String() string {
	s := fmt.Sprintf("%s %s", o.Kind, o.Path)
	switch o.Kind {
	case OpRename:
		s += " -> " + o.To
	case OpWrite:
		s += fmt.Sprintf(" [%d,+%d)", o.Off, o.Len)
	case OpTruncate:
		s += fmt.Sprintf(" to %d", o.Off)
	}
	if o.Err != nil {
		s += " err=" + o.Err.Error()
	}
	return s
}

// Fault makes the Nth operation of a kind (counted from when it is injected, from 1) fail.
type Fault struct {
	Kind OpKind
	N    int
	Err  error // returned; with Short > 0 and Kind OpWrite, the write is short by Short bytes
	// Short makes a write store all but the last Short bytes and return a short count with
	// Err (which may be nil).
	Short int
	// Sticky keeps failing every later operation of the kind too.
	Sticky bool
}

type extent struct{ off, end int64 }

type inode struct {
	durable []byte   // on disk as of the last successful Sync
	data    []byte   // what the page cache serves
	pending []extent // written or truncated since the last successful Sync
}

func (n *inode) clone() *inode {
	return &inode{
		durable: append([]byte(nil), n.durable...),
		data:    append([]byte(nil), n.data...),
		pending: append([]extent(nil), n.pending...),
	}
}

type dirOpKind int

const (
	dirCreate dirOpKind = iota
	dirRename
	dirRemove
)

type dirOp struct {
	kind     dirOpKind
	name, to string
	ino      *inode // for dirCreate
}

type dir struct {
	cur     map[string]*inode
	durable map[string]*inode
	pending []dirOp
}

// FS is the simulated file system. It is safe for concurrent use.
type FS struct {
	mu     sync.Mutex
	dirs   map[string]*dir
	ops    []Op
	cutAt  int // index of the first operation that fails; -1: never
	cut    bool
	faults []*faultState
	locks  map[string]bool
	rng    *rand.Rand
}

type faultState struct {
	Fault
	seen int
}

// New returns an empty file system; seed drives what a failed Sync leaves on disk.
func New(seed int64) *FS {
	return &FS{dirs: map[string]*dir{}, cutAt: -1, locks: map[string]bool{},
		rng: rand.New(rand.NewSource(seed))}
}

// CutAt makes operation index k (counted from 0 over the whole life of the FS) and every later
// one fail with ErrPowerCut. A negative k never cuts.
func (f *FS) CutAt(k int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cutAt = k
	if k >= 0 && len(f.ops) >= k {
		f.cut = true
	}
}

// PowerCut says whether the power has been cut.
func (f *FS) PowerCut() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cut
}

// OpCount is the number of counted operations so far.
func (f *FS) OpCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.ops)
}

// Ops returns the recorded operations.
func (f *FS) Ops() []Op {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Op(nil), f.ops...)
}

// Inject adds a fault.
func (f *FS) Inject(ft Fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = append(f.faults, &faultState{Fault: ft})
}

// begin counts an operation of kind k, and says whether it may run: after a cut it
// returns ErrPowerCut, and an injected fault returns its fault. Called with f.mu held.
func (f *FS) begin(k OpKind) (*Fault, error) {
	if f.cut {
		return nil, ErrPowerCut
	}
	if f.cutAt >= 0 && len(f.ops) >= f.cutAt {
		f.cut = true
		return nil, ErrPowerCut
	}
	var hit *Fault
	for _, ft := range f.faults {
		if ft.Kind != k {
			continue
		}
		ft.seen++
		if hit == nil && (ft.seen == ft.N || (ft.Sticky && ft.seen > ft.N)) {
			hit = &ft.Fault
		}
	}
	return hit, nil
}

func (f *FS) record(op Op) { f.ops = append(f.ops, op) }

func clean(p string) string { return filepath.Clean(p) }

func (f *FS) lookupDir(p string) (*dir, string, error) {
	d, ok := f.dirs[filepath.Dir(p)]
	if !ok {
		return nil, "", &os.PathError{Op: pathOpOpen, Path: p, Err: syscall.ENOENT}
	}
	return d, filepath.Base(p), nil
}

// MkdirAll creates a directory and its parents, durable at once (see the package comment).
func (f *FS) MkdirAll(p string, _ os.FileMode) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	p = clean(p)
	if _, ok := f.dirs[p]; ok {
		return nil
	}
	if _, err := f.begin(OpMkdir); err != nil {
		return err
	}
	for q := p; ; q = filepath.Dir(q) {
		if _, ok := f.dirs[q]; !ok {
			f.dirs[q] = &dir{cur: map[string]*inode{}, durable: map[string]*inode{}}
		}
		if q == filepath.Dir(q) {
			break
		}
	}
	f.record(Op{Kind: OpMkdir, Path: p})
	return nil
}

// OpenFile opens or creates a file. Only O_CREATE, O_EXCL, O_TRUNC and O_APPEND matter.
func (f *FS) OpenFile(name string, flag int, _ os.FileMode) (eventlog.File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	name = clean(name)
	d, base, err := f.lookupDir(name)
	if err != nil {
		return nil, err
	}
	ino, exists := d.cur[base]
	switch {
	case exists && flag&os.O_CREATE != 0 && flag&os.O_EXCL != 0:
		return nil, &os.PathError{Op: pathOpOpen, Path: name, Err: syscall.EEXIST}
	case !exists && flag&os.O_CREATE == 0:
		return nil, &os.PathError{Op: pathOpOpen, Path: name, Err: syscall.ENOENT}
	}
	kind := OpOpen
	if !exists {
		kind = OpCreate
	}
	ft, err := f.begin(kind)
	if err != nil {
		return nil, err
	}
	if ft != nil {
		f.record(Op{Kind: kind, Path: name, Err: ft.Err})
		return nil, ft.Err
	}
	if !exists {
		ino = &inode{}
		d.cur[base] = ino
		d.pending = append(d.pending, dirOp{kind: dirCreate, name: base, ino: ino})
	}
	if exists && flag&os.O_TRUNC != 0 {
		ino.truncate(0)
	}
	f.record(Op{Kind: kind, Path: name})
	return &file{fs: f, ino: ino, name: name, append: flag&os.O_APPEND != 0}, nil
}

// ReadFile returns what the page cache holds.
func (f *FS) ReadFile(name string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cut {
		return nil, ErrPowerCut
	}
	name = clean(name)
	d, base, err := f.lookupDir(name)
	if err != nil {
		return nil, err
	}
	ino, ok := d.cur[base]
	if !ok {
		return nil, &os.PathError{Op: pathOpOpen, Path: name, Err: syscall.ENOENT}
	}
	return append([]byte(nil), ino.data...), nil
}

// OpenReader opens a file read-only (eventlog.ReaderFS): what it holds now, as ReadFile, read
// through the log's bounded window as the real file system is.
func (f *FS) OpenReader(name string) (eventlog.ReadOnlyFile, error) {
	data, err := f.ReadFile(name)
	if err != nil {
		return nil, err
	}
	return readOnly{bytes.NewReader(data)}, nil
}

type readOnly struct{ *bytes.Reader }

func (readOnly) Close() error { return nil }

// ReadDir lists a directory, sorted by name.
func (f *FS) ReadDir(name string) ([]os.DirEntry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cut {
		return nil, ErrPowerCut
	}
	d, ok := f.dirs[clean(name)]
	if !ok {
		return nil, &os.PathError{Op: pathOpOpen, Path: name, Err: syscall.ENOENT}
	}
	var out []os.DirEntry
	for n, ino := range d.cur {
		out = append(out, dirEntry{name: n, size: int64(len(ino.data))})
	}
	for p := range f.dirs {
		if p != clean(name) && filepath.Dir(p) == clean(name) {
			out = append(out, dirEntry{name: filepath.Base(p), dir: true})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out, nil
}

// Rename renames a file within or across directories, replacing the target.
func (f *FS) Rename(oldpath, newpath string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	oldpath, newpath = clean(oldpath), clean(newpath)
	od, ob, err := f.lookupDir(oldpath)
	if err != nil {
		return err
	}
	nd, nb, err := f.lookupDir(newpath)
	if err != nil {
		return err
	}
	if od != nd {
		return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: syscall.EXDEV}
	}
	ino, ok := od.cur[ob]
	if !ok {
		return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: syscall.ENOENT}
	}
	ft, err := f.begin(OpRename)
	if err != nil {
		return err
	}
	if ft != nil {
		f.record(Op{Kind: OpRename, Path: oldpath, To: newpath, Err: ft.Err})
		return ft.Err
	}
	delete(od.cur, ob)
	od.cur[nb] = ino
	od.pending = append(od.pending, dirOp{kind: dirRename, name: ob, to: nb})
	f.record(Op{Kind: OpRename, Path: oldpath, To: newpath})
	return nil
}

// Remove removes a file.
func (f *FS) Remove(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	name = clean(name)
	d, base, err := f.lookupDir(name)
	if err != nil {
		return err
	}
	if _, ok := d.cur[base]; !ok {
		return &os.PathError{Op: "remove", Path: name, Err: syscall.ENOENT}
	}
	ft, err := f.begin(OpRemove)
	if err != nil {
		return err
	}
	if ft != nil {
		f.record(Op{Kind: OpRemove, Path: name, Err: ft.Err})
		return ft.Err
	}
	delete(d.cur, base)
	d.pending = append(d.pending, dirOp{kind: dirRemove, name: base})
	f.record(Op{Kind: OpRemove, Path: name})
	return nil
}

// SyncDir makes the directory's entries durable.
func (f *FS) SyncDir(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	name = clean(name)
	d, ok := f.dirs[name]
	if !ok {
		return &os.PathError{Op: pathOpOpen, Path: name, Err: syscall.ENOENT}
	}
	ft, err := f.begin(OpSyncDir)
	if err != nil {
		return err
	}
	if ft != nil {
		f.record(Op{Kind: OpSyncDir, Path: name, Err: ft.Err})
		return ft.Err
	}
	d.durable = copyMap(d.cur)
	d.pending = nil
	f.record(Op{Kind: OpSyncDir, Path: name})
	return nil
}

// Lock is an in-memory exclusive lock; it does not survive a crash or restart.
func (f *FS) Lock(name string) (func() error, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cut {
		return nil, ErrPowerCut
	}
	name = clean(name)
	if f.locks[name] {
		return nil, eventlog.ErrLocked
	}
	f.locks[name] = true
	return func() error {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.locks, name)
		return nil
	}, nil
}

func copyMap(m map[string]*inode) map[string]*inode {
	out := make(map[string]*inode, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// file is an open file: a handle on an inode, which a rename or remove does not change.
type file struct {
	fs     *FS
	ino    *inode
	name   string
	off    int64
	append bool
	closed bool
}

func (h *file) Write(p []byte) (int, error) {
	f := h.fs
	f.mu.Lock()
	defer f.mu.Unlock()
	if h.closed {
		return 0, os.ErrClosed
	}
	ft, err := f.begin(OpWrite)
	if err != nil {
		return 0, err
	}
	if h.append {
		h.off = int64(len(h.ino.data))
	}
	n := len(p)
	var ferr error
	if ft != nil {
		// An error stores nothing; a short write stores a prefix and, like write(2), may
		// return a short count with no error.
		ferr = ft.Err
		n = 0
		if ft.Short > 0 {
			n = max(len(p)-ft.Short, 0)
		}
	}
	h.ino.write(h.off, p[:n])
	f.record(Op{Kind: OpWrite, Path: h.name, Off: h.off, Len: n, Err: ferr})
	h.off += int64(n)
	return n, ferr
}

func (h *file) Sync() error {
	f := h.fs
	f.mu.Lock()
	defer f.mu.Unlock()
	if h.closed {
		return os.ErrClosed
	}
	ft, err := f.begin(OpSync)
	if err != nil {
		return err
	}
	if ft != nil {
		// fsyncgate: the pending writes reached the disk in part, or not at all; their pages
		// are clean now, so no later Sync writes them, while reads still see them.
		h.ino.durable = h.ino.crashed(f.rng, TearAny)
		h.ino.pending = nil
		f.record(Op{Kind: OpSync, Path: h.name, Err: ft.Err})
		return ft.Err
	}
	h.ino.sync()
	f.record(Op{Kind: OpSync, Path: h.name})
	return nil
}

func (h *file) Truncate(size int64) error {
	f := h.fs
	f.mu.Lock()
	defer f.mu.Unlock()
	if h.closed {
		return os.ErrClosed
	}
	ft, err := f.begin(OpTruncate)
	if err != nil {
		return err
	}
	if ft != nil {
		f.record(Op{Kind: OpTruncate, Path: h.name, Off: size, Err: ft.Err})
		return ft.Err
	}
	h.ino.truncate(size)
	f.record(Op{Kind: OpTruncate, Path: h.name, Off: size})
	return nil
}

func (h *file) Seek(offset int64, whence int) (int64, error) {
	f := h.fs
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cut {
		return 0, ErrPowerCut
	}
	switch whence {
	case io.SeekStart:
		h.off = offset
	case io.SeekCurrent:
		h.off += offset
	case io.SeekEnd:
		h.off = int64(len(h.ino.data)) + offset
	}
	return h.off, nil
}

func (h *file) Close() error {
	f := h.fs
	f.mu.Lock()
	defer f.mu.Unlock()
	if h.closed {
		return os.ErrClosed
	}
	h.closed = true
	if f.cut {
		return ErrPowerCut
	}
	return nil
}

func (n *inode) write(off int64, p []byte) {
	if len(p) == 0 {
		return
	}
	end := off + int64(len(p))
	if end > int64(len(n.data)) {
		n.data = append(n.data, make([]byte, end-int64(len(n.data)))...)
	}
	copy(n.data[off:], p)
	n.pending = append(n.pending, extent{off, end})
}

func (n *inode) truncate(size int64) {
	old := int64(len(n.data))
	switch {
	case size < old:
		n.data = n.data[:size]
		n.pending = append(n.pending, extent{size, old})
	case size > old:
		n.data = append(n.data, make([]byte, size-old)...)
		n.pending = append(n.pending, extent{old, size})
	}
}

// sync makes the pending writes and the size durable. Bytes that are not pending keep their
// durable value: after a failed Sync, the lost pages are not written again.
func (n *inode) sync() {
	d := make([]byte, len(n.data))
	copy(d, n.durable)
	for _, e := range n.pending {
		lo, hi := min(e.off, int64(len(d))), min(e.end, int64(len(d)))
		copy(d[lo:hi], n.data[lo:hi])
	}
	n.durable = d
	n.pending = nil
}

func (n *inode) dirty() bool { return len(n.pending) > 0 || len(n.data) != len(n.durable) }

// TearMode says how the pending writes of a file survive a crash.
type TearMode int

const (
	// TearNone drops every pending write: the file is what its last Sync made durable.
	TearNone TearMode = iota
	// TearKeep keeps every pending write whole (the writeback finished just before the cut).
	TearKeep
	// TearPrefix keeps a prefix of the pending bytes in file order and loses the rest; the cut
	// falls on a sector or an arbitrary byte.
	TearPrefix
	// TearAny keeps or loses each piece (sector, or a random split) independently, with the
	// size of the file anywhere between its durable and its current size.
	TearAny
)

// DirMode says how the pending entry operations of a directory survive a crash.
type DirMode int

const (
	// DirsNone drops every pending create, rename and remove.
	DirsNone DirMode = iota
	// DirsAll keeps them all.
	DirsAll
	// DirsPrefix keeps a random prefix of them, in order (a journaling file system).
	DirsPrefix
	// DirsAny keeps a random subset (POSIX promises no order).
	DirsAny
)

// Crash describes one crash outcome; Seed drives every random choice in it.
type Crash struct {
	Data TearMode
	Dirs DirMode
	Seed int64
}

func (c Crash) String() string {
	return fmt.Sprintf("data=%s dirs=%s seed=%d",
		[]string{"none", "keep", "prefix", "any"}[c.Data], []string{"none", "all", "prefix", "any"}[c.Dirs], c.Seed)
}

// RandomCrash picks a crash outcome from seed, weighted toward the harsh ones.
func RandomCrash(seed int64) Crash {
	r := rand.New(rand.NewSource(seed))
	return Crash{
		Data: []TearMode{TearNone, TearKeep, TearPrefix, TearAny, TearAny, TearPrefix}[r.Intn(6)],
		Dirs: []DirMode{DirsNone, DirsAll, DirsPrefix, DirsAny}[r.Intn(4)],
		Seed: r.Int63(),
	}
}

// Crash returns the image a machine finds after a power cut in this state: a new FS holding
// only durable data (all of it synced, nothing pending), with no locks and no cut. The
// receiver is not changed, so one state can be crashed many ways.
func (f *FS) Crash(c Crash) *FS {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := rand.New(rand.NewSource(c.Seed))
	out := New(c.Seed)
	memo := map[*inode]*inode{}
	names := make([]string, 0, len(f.dirs))
	for p := range f.dirs {
		names = append(names, p)
	}
	sort.Strings(names) // deterministic use of r
	for _, p := range names {
		d := f.dirs[p]
		entries := copyMap(d.durable)
		keep := keepOps(r, len(d.pending), c.Dirs)
		for i, op := range d.pending {
			if !keep[i] {
				continue
			}
			switch op.kind {
			case dirCreate:
				if _, ok := entries[op.name]; !ok {
					entries[op.name] = op.ino
				}
			case dirRename:
				// Atomic: done whole or not at all; without its source it cannot be done.
				if ino, ok := entries[op.name]; ok {
					delete(entries, op.name)
					entries[op.to] = ino
				}
			case dirRemove:
				delete(entries, op.name)
			}
		}
		nd := &dir{cur: map[string]*inode{}, durable: map[string]*inode{}}
		enames := make([]string, 0, len(entries))
		for n := range entries {
			enames = append(enames, n)
		}
		sort.Strings(enames)
		for _, n := range enames {
			ino := entries[n]
			ni, ok := memo[ino]
			if !ok {
				b := ino.crashed(r, c.Data)
				ni = &inode{durable: b, data: append([]byte(nil), b...)}
				memo[ino] = ni
			}
			nd.cur[n], nd.durable[n] = ni, ni
		}
		out.dirs[p] = nd
	}
	return out
}

func keepOps(r *rand.Rand, n int, m DirMode) []bool {
	keep := make([]bool, n)
	switch m {
	case DirsAll:
		for i := range keep {
			keep[i] = true
		}
	case DirsPrefix:
		k := r.Intn(n + 1)
		for i := 0; i < k; i++ {
			keep[i] = true
		}
	case DirsAny:
		for i := range keep {
			keep[i] = r.Intn(2) == 0
		}
	}
	return keep
}

// Restart returns the image the next process finds when only the process died: the page
// cache, pending writes and pending directory entries included. A later Crash of it can still
// lose what is pending.
func (f *FS) Restart() *FS {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := New(f.rng.Int63())
	memo := map[*inode]*inode{}
	cl := func(m map[string]*inode) map[string]*inode {
		o := make(map[string]*inode, len(m))
		for k, v := range m {
			if _, ok := memo[v]; !ok {
				memo[v] = v.clone()
			}
			o[k] = memo[v]
		}
		return o
	}
	for p, d := range f.dirs {
		nd := &dir{cur: cl(d.cur), durable: cl(d.durable)}
		for _, op := range d.pending {
			if op.ino != nil {
				if _, ok := memo[op.ino]; !ok {
					memo[op.ino] = op.ino.clone()
				}
				op.ino = memo[op.ino]
			}
			nd.pending = append(nd.pending, op)
		}
		out.dirs[p] = nd
	}
	return out
}

// crashed returns the bytes of the file after a crash with mode m.
func (n *inode) crashed(r *rand.Rand, m TearMode) []byte {
	if !n.dirty() || m == TearNone {
		return append([]byte(nil), n.durable...)
	}
	if m == TearKeep {
		c := &inode{durable: append([]byte(nil), n.durable...), data: n.data, pending: n.pending}
		c.sync()
		return c.durable
	}
	oldLen, newLen := int64(len(n.durable)), int64(len(n.data))
	size := pickSize(r, oldLen, newLen)
	out := make([]byte, size)
	copy(out, n.durable)
	pend := n.pendingMask(size)
	t := newTear(r, m, size)
	keepPiece := false
	for i := int64(0); i < size; i++ {
		if !pend[i] {
			if i >= oldLen {
				out[i] = 0 // size grew, data never written
			}
			continue
		}
		keepPiece = t.keep(i, pend, keepPiece)
		if keepPiece {
			out[i] = n.newByte(i)
			continue
		}
		t.lose(out, i, oldLen)
	}
	return out
}

// pendingMask says, for each of the first size bytes, whether a write not yet synced covers it.
func (n *inode) pendingMask(size int64) []bool {
	pend := make([]bool, size)
	for _, e := range n.pending {
		for i := e.off; i < min(e.end, size); i++ {
			pend[i] = true
		}
	}
	return pend
}

// newByte is byte i of the file as written (0 past its end).
func (n *inode) newByte(i int64) byte {
	if i < int64(len(n.data)) {
		return n.data[i]
	}
	return 0
}

// tear is how a crash tears the pending bytes of one file: into pieces that survive or not.
type tear struct {
	r         *rand.Rand
	m         TearMode
	bySector  bool           // pieces split at sector boundaries (else at cuts)
	cuts      map[int64]bool // random points where pieces split, when not bySector
	fill      int            // lost bytes: 0 zeros, 1 garbage, 2 old bytes
	prefixEnd int64          // TearPrefix: pending bytes before it survive
}

func newTear(r *rand.Rand, m TearMode, size int64) *tear {
	t := &tear{r: r, m: m}
	// Pieces: runs of pending bytes split at sector boundaries, or at random points.
	t.bySector = r.Intn(2) == 0
	t.fill = r.Intn(3) // lost bytes: 0 zeros, 1 garbage, 2 old bytes
	if !t.bySector {
		t.cuts = map[int64]bool{}
		for i := 0; i < 1+r.Intn(4) && size > 0; i++ {
			t.cuts[r.Int63n(size)] = true
		}
	}
	t.prefixEnd = r.Int63n(size + 1) // TearPrefix: pending bytes before it survive
	if t.bySector {
		t.prefixEnd = t.prefixEnd / sectorSize * sectorSize
	}
	return t
}

// keep says whether pending byte i survives, given whether the byte before it (in its piece)
// did: a new piece draws again.
func (t *tear) keep(i int64, pend []bool, keepPiece bool) bool {
	if i == 0 || !pend[i-1] || (t.bySector && i%sectorSize == 0) || (!t.bySector && t.cuts[i]) {
		keepPiece = t.r.Intn(2) == 0 // a new piece
	}
	if t.m == TearPrefix {
		keepPiece = i < t.prefixEnd
	}
	return keepPiece
}

// lose sets out[i], a pending byte lost in the crash, to what the tear leaves there.
func (t *tear) lose(out []byte, i, oldLen int64) {
	switch {
	case t.fill == 0:
		out[i] = 0
	case t.fill == 1:
		out[i] = byte(t.r.Intn(256))
	case i >= oldLen:
		out[i] = 0 // no old bytes past the durable end
	}
}

func pickSize(r *rand.Rand, oldLen, newLen int64) int64 {
	if oldLen == newLen {
		return oldLen
	}
	switch r.Intn(4) {
	case 0:
		return oldLen
	case 1, 2:
		return newLen
	}
	lo, hi := min(oldLen, newLen), max(oldLen, newLen)
	s := lo + r.Int63n(hi-lo+1)
	if r.Intn(2) == 0 {
		s = max(lo, s/sectorSize*sectorSize)
	}
	return s
}

// Files returns the paths of the files in the page cache's view, sorted; for tests and dumps.
func (f *FS) Files() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for p, d := range f.dirs {
		for n := range d.cur {
			out = append(out, path.Join(p, n))
		}
	}
	sort.Strings(out)
	return out
}

// WriteFile replaces a file's bytes, durable at once, name included; for tests that corrupt an
// image on purpose (not counted as an operation).
func (f *FS) WriteFile(name string, data []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	name = clean(name)
	d, base, err := f.lookupDir(name)
	if err != nil {
		return err
	}
	ino, ok := d.cur[base]
	if !ok {
		ino = &inode{}
		d.cur[base] = ino
		d.durable[base] = ino
	}
	ino.data = append([]byte(nil), data...)
	ino.durable = append([]byte(nil), data...)
	ino.pending = nil
	return nil
}

// Trace returns the recorded operations as text, one a line; for failure messages.
func (f *FS) Trace() string {
	var b strings.Builder
	for i, op := range f.Ops() {
		fmt.Fprintf(&b, "%4d %s\n", i, op)
	}
	return b.String()
}

type dirEntry struct {
	name string
	size int64
	dir  bool
}

func (e dirEntry) Name() string { return e.name }
func (e dirEntry) IsDir() bool  { return e.dir }
func (e dirEntry) Type() fs.FileMode {
	if e.dir {
		return fs.ModeDir
	}
	return 0
}
func (e dirEntry) Info() (fs.FileInfo, error) { return e, nil }
func (e dirEntry) Size() int64                { return e.size }
func (e dirEntry) Mode() fs.FileMode          { return e.Type() | 0o640 }
func (e dirEntry) ModTime() time.Time         { return time.Time{} }
func (e dirEntry) Sys() any                   { return nil }

var _ eventlog.FS = (*FS)(nil)
