package eventlog_test

import (
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"math/rand"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vendingfleet/vending-operator/internal/eventlog"
	"github.com/vendingfleet/vending-operator/internal/eventlog/crashfs"
)

// The power-cut suite drives the real Log through crashfs: it cuts power at every operation of
// small workloads (and at random points of longer ones), builds the images a reboot can find,
// reopens each and checks what the log promised. Each test logs a VERDICT line (cuts,
// acknowledged, lost, duplicated, half-written, refused as corrupt, torn tails repaired; see
// it with -v). `make chaos` runs it longer:
//
//	go test ./internal/eventlog/ -run TestPowerCut -v -crash.duration=5m
//
// (or CHAOS_DURATION=5m); -crash.random and -crash.variants set the default run's size.
var (
	crashRandom   = flag.Int("crash.random", 1000, "random power cuts per long workload in the default run")
	crashDuration = flag.Duration("crash.duration", 0, "run long random power-cut workloads for this long (make chaos); also CHAOS_DURATION")
	crashVariants = flag.Int("crash.variants", 10, "crash images checked per cut point of the exhaustive workloads")
)

const (
	logDir              = "/pvc/log"
	typeEvt             = eventlog.RecordType(16)
	phasesAfterTheFirst = 1 // each crash image is reopened, written, cut and crashed again this often
)

// history is what the test knows about the log across crashes: the payload of every sequence
// it submitted, which were acknowledged, and what an earlier Open already served.
type history struct {
	mu       sync.Mutex
	payloads map[uint64]string // by sequence: submitted (outcome unknown), acknowledged or replayed
	unknown  map[string]bool   // payloads whose Append failed: sequence unknown, may be replayed
	acked    uint64            // highest acknowledged sequence: it and all before it are durable
	snapAck  uint64            // highest snapshot SaveSnapshot returned nil for
	served   uint64            // records up to here were served by an Open: they must stay
	acks     int               // acknowledgements, for the verdict
}

func newHistory() *history {
	return &history{payloads: map[uint64]string{}, unknown: map[string]bool{}}
}

func (h *history) clone() *history {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := history{acked: h.acked, snapAck: h.snapAck, served: h.served, acks: h.acks}
	c.payloads = make(map[uint64]string, len(h.payloads))
	for k, v := range h.payloads {
		c.payloads[k] = v
	}
	c.unknown = make(map[string]bool, len(h.unknown))
	for k, v := range h.unknown {
		c.unknown[k] = v
	}
	return &c
}

func (h *history) submitted(seq uint64, p string) {
	h.mu.Lock()
	h.payloads[seq] = p
	h.mu.Unlock()
}

func (h *history) ack(seq uint64) {
	h.mu.Lock()
	h.acked = max(h.acked, seq)
	h.acks++
	h.mu.Unlock()
}

// digest is the "state" a snapshot at seq holds: a hash of every payload up to seq. ok is
// false while a payload is not known yet (its Append has not returned).
func (h *history) digest(seq uint64) (string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.digestLocked(seq)
}

func (h *history) digestLocked(seq uint64) (string, bool) {
	d := fnv.New64a()
	for s := uint64(1); s <= seq; s++ {
		p, ok := h.payloads[s]
		if !ok {
			return "", false
		}
		fmt.Fprintf(d, "%d:%s;", s, p)
	}
	return fmt.Sprintf("state@%d:%016x", seq, d.Sum64()), true
}

// payloadFor is a unique payload whose size is mostly vending-sized, sometimes across sectors.
func payloadFor(rng *rand.Rand, tag string) string {
	n := 8 + rng.Intn(80)
	switch rng.Intn(10) {
	case 0:
		n = 500 + rng.Intn(300)
	case 1, 2:
		n = 100 + rng.Intn(200)
	}
	s := tag + "|" + strings.Repeat(string(rune('a'+rng.Intn(26))), n)
	return s[:max(n, len(tag)+1)]
}

// workload writes to an open log until it is done or the log fails.
type workload struct {
	name    string
	segment int64
	run     func(l *eventlog.Log, h *history, rng *rand.Rand, tag string)
}

// concurrentAppends: writers goroutines each Append n records (group commits form on their own),
// and, with snapEvery > 0, a snapshot (and compaction) after every snapEvery acknowledged records
// of writer 0.
func concurrentAppends(writers, n, snapEvery int) func(*eventlog.Log, *history, *rand.Rand, string) {
	return func(l *eventlog.Log, h *history, rng *rand.Rand, tag string) {
		var wg sync.WaitGroup
		for w := 0; w < writers; w++ {
			wr := rand.New(rand.NewSource(rng.Int63()))
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < n; i++ {
					p := payloadFor(wr, fmt.Sprintf("%s-w%d-%d", tag, w, i))
					seq, err := l.Append(typeEvt, []byte(p))
					if err != nil {
						h.mu.Lock()
						h.unknown[p] = true
						h.mu.Unlock()
						return
					}
					h.submitted(seq, p)
					h.ack(seq)
					if w == 0 && snapEvery > 0 && (i+1)%snapEvery == 0 {
						snapshot(l, h)
					}
				}
			}()
		}
		wg.Wait()
	}
}

// pipelined: one writer Submits records and waits for every few (as the vending writer does),
// with an occasional snapshot.
func pipelined(n, waitEvery, snapEvery int) func(*eventlog.Log, *history, *rand.Rand, string) {
	return func(l *eventlog.Log, h *history, rng *rand.Rand, tag string) {
		var waits []func() error
		var seqs []uint64
		for i := 0; i < n; i++ {
			p := payloadFor(rng, fmt.Sprintf("%s-p%d", tag, i))
			seq, wait, err := l.Submit(typeEvt, []byte(p))
			if err != nil {
				return
			}
			h.submitted(seq, p)
			waits, seqs = append(waits, wait), append(seqs, seq)
			if (i+1)%waitEvery == 0 || i == n-1 {
				for j, w := range waits {
					if w() != nil {
						return
					}
					h.ack(seqs[j])
				}
				waits, seqs = nil, nil
			}
			if snapEvery > 0 && (i+1)%snapEvery == 0 {
				// At the last submitted record, as the vending writer does: SaveSnapshot
				// waits for it to be durable.
				snapshotAt(l, h, seq)
			}
		}
	}
}

func snapshot(l *eventlog.Log, h *history) { snapshotAt(l, h, l.Durable()) }

func snapshotAt(l *eventlog.Log, h *history, seq uint64) {
	data, ok := h.digest(seq)
	if !ok || seq == 0 {
		return
	}
	if l.SaveSnapshot(seq, []byte(data)) == nil {
		h.mu.Lock()
		h.snapAck = max(h.snapAck, seq)
		h.mu.Unlock()
	}
}

// collector keeps what Open replays.
type collector struct {
	snapSeq  uint64
	snapData string
	records  []eventlog.Record
}

func (c *collector) RestoreSnapshot(seq uint64, data []byte) error {
	c.snapSeq, c.snapData = seq, string(data)
	return nil
}

func (c *collector) ReplayRecord(r eventlog.Record) error {
	r.Payload = append([]byte(nil), r.Payload...)
	c.records = append(c.records, r)
	return nil
}

// verdict counts what the suite saw.
type verdict struct {
	mu                                        sync.Mutex
	cuts, acked, lost, duplicated, wrong, ref int
	torn                                      int // images whose torn tail Open repaired
	failures                                  []string
}

func (v *verdict) String() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return fmt.Sprintf("cuts=%d acknowledged=%d lost=%d duplicated=%d half-written-or-wrong=%d refused-as-corrupt=%d torn-tails-repaired=%d",
		v.cuts, v.acked, v.lost, v.duplicated, v.wrong, v.ref, v.torn)
}

func (v *verdict) fail(format string, args ...any) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.failures = append(v.failures, fmt.Sprintf(format, args...))
}

// reopen opens a crashed image and checks it against h: it never refuses a crash as
// corruption, every acknowledged and every already served record is there with its payload,
// nothing else is replayed, and the snapshot is the state it claims. It updates h to what the
// log now holds, and returns the open log (nil on failure).
func reopen(v *verdict, img *crashfs.FS, w workload, h *history, where string) *eventlog.Log {
	c := &collector{}
	l, st, err := eventlog.Open(logDir, eventlog.Options{FS: img, SegmentSize: w.segment}, c)
	v.mu.Lock()
	v.cuts++
	v.mu.Unlock()
	if err != nil {
		var ce *eventlog.CorruptError
		if errors.As(err, &ce) {
			v.mu.Lock()
			v.ref++
			v.mu.Unlock()
		}
		v.fail("%s: Open: %v", where, err)
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	v.mu.Lock()
	v.acked += h.acks
	if st.TornBytes > 0 {
		v.torn++
	}
	v.mu.Unlock()
	h.acks = 0
	must := max(h.acked, h.served)
	if st.LastSeq < must {
		v.mu.Lock()
		v.lost += int(must - st.LastSeq)
		v.mu.Unlock()
		v.fail("%s: lost records: log ends at %d, %d were acknowledged or served (snapshot %d, %d replayed)",
			where, st.LastSeq, must, c.snapSeq, len(c.records))
	}
	if c.snapSeq < h.snapAck {
		v.fail("%s: snapshot %d recovered, %d was saved", where, c.snapSeq, h.snapAck)
	}
	if c.snapSeq > 0 {
		want, ok := h.digestLocked(c.snapSeq)
		if !ok || c.snapData != want {
			v.fail("%s: snapshot at %d holds %q, want %q", where, c.snapSeq, c.snapData, want)
		}
	}
	seen := map[string]bool{}
	for i, r := range c.records {
		if r.Seq != c.snapSeq+uint64(i)+1 {
			v.fail("%s: record %d has sequence %d after snapshot %d", where, i, r.Seq, c.snapSeq)
		}
		p := string(r.Payload)
		if seen[p] {
			v.mu.Lock()
			v.duplicated++
			v.mu.Unlock()
			v.fail("%s: payload replayed twice at %d", where, r.Seq)
		}
		seen[p] = true
		want, known := h.payloads[r.Seq]
		switch {
		case known && want == p:
		case !known && h.unknown[p]:
			h.payloads[r.Seq] = p
			delete(h.unknown, p)
		default:
			v.mu.Lock()
			v.wrong++
			v.mu.Unlock()
			v.fail("%s: record %d is %.40q, submitted %.40q", where, r.Seq, p, want)
		}
	}
	// What this log holds now is the new truth: later sequences will be reused.
	for s := range h.payloads {
		if s > st.LastSeq {
			delete(h.payloads, s)
		}
	}
	h.unknown = map[string]bool{}
	h.served = st.LastSeq
	h.acked = 0
	h.snapAck = c.snapSeq
	return l
}

// phase runs w on fs until it ends or the power is cut; the log is then abandoned (crash-only),
// or closed if the workload finished.
func phase(fs *crashfs.FS, w workload, h *history, rng *rand.Rand, tag string, l *eventlog.Log) {
	if l == nil {
		var err error
		l, _, err = eventlog.Open(logDir, eventlog.Options{FS: fs, SegmentSize: w.segment}, &collector{})
		if err != nil {
			return // the power was cut during Open
		}
	}
	w.run(l, h, rng, tag)
	if !fs.PowerCut() {
		_ = l.Close()
	}
}

// afterCrash checks one crash image, then runs the workload on it again, cuts power at a
// random point, crashes that, and checks again (rounds times).
func afterCrash(v *verdict, img *crashfs.FS, w workload, h *history, rng *rand.Rand, where string, rounds int) {
	for round := 0; ; round++ {
		l := reopen(v, img, w, h, where)
		if l == nil || round == rounds {
			if l != nil {
				_ = l.Close()
			}
			return
		}
		before := img.OpCount()
		img.CutAt(before + 1 + rng.Intn(60))
		phase(img, w, h, rng, fmt.Sprintf("r%d", round+1), l)
		c := crashfs.RandomCrash(rng.Int63())
		where = fmt.Sprintf("%s, then cut at op %d, crash %s", where, img.OpCount(), c)
		img = img.Crash(c)
	}
}

func (v *verdict) check(t *testing.T, name string) {
	t.Helper()
	t.Logf("VERDICT eventlog power cuts, %s: %s", name, v)
	for i, f := range v.failures {
		if i == 5 {
			t.Errorf("... and %d more", len(v.failures)-5)
			break
		}
		t.Error(f)
	}
}

var workloads = []workload{
	{"concurrent appenders, group commits, rollover", 700, concurrentAppends(4, 8, 0)},
	{"pipelined writer, rollover", 600, pipelined(40, 3, 0)},
	{"snapshots and compaction", 500, concurrentAppends(3, 9, 3)},
	{"pipelined writer, snapshots and compaction", 450, pipelined(30, 2, 5)},
}

// exhaustiveCrashes are the images checked for each cut point: the durable state alone,
// everything kept, and random tears.
func exhaustiveCrashes(k int) []crashfs.Crash {
	out := []crashfs.Crash{
		{Data: crashfs.TearNone, Dirs: crashfs.DirsNone},
		{Data: crashfs.TearKeep, Dirs: crashfs.DirsAll},
	}
	for i := 2; i < *crashVariants; i++ {
		out = append(out, crashfs.RandomCrash(int64(k*1000+i)))
	}
	return out
}

// TestPowerCutAtEveryOperation: ALICE-style, for each small workload, cut power at every
// operation index k (the workload is rerun up to k), and check several crash images of each.
func TestPowerCutAtEveryOperation(t *testing.T) {
	// Replay streams the segments: a window smaller than most records makes every one cross it.
	defer eventlog.SetReadWindow(48)()
	total := &verdict{}
	for wi, w := range workloads {
		t.Run(w.name, func(t *testing.T) {
			v := &verdict{}
			for k := 0; ; k++ {
				seed := int64(wi*100000 + k)
				fs := crashfs.New(seed)
				fs.CutAt(k)
				h := newHistory()
				phase(fs, w, h, rand.New(rand.NewSource(seed)), "p0", nil)
				if !fs.PowerCut() {
					t.Logf("%d operations; the workload ends before op %d", fs.OpCount(), k)
					break
				}
				for _, c := range exhaustiveCrashes(k) {
					img := fs.Crash(c)
					afterCrash(v, img, w, h.clone(), rand.New(rand.NewSource(c.Seed^seed)),
						fmt.Sprintf("%s: cut at op %d (seed %d), crash %s", w.name, k, seed, c), phasesAfterTheFirst)
				}
				if len(v.failures) > 0 {
					t.Logf("operations up to the cut:\n%s", fs.Trace())
					break
				}
			}
			v.check(t, w.name)
			total.mu.Lock()
			total.cuts += v.cuts
			total.acked += v.acked
			total.lost += v.lost
			total.duplicated += v.duplicated
			total.wrong += v.wrong
			total.ref += v.ref
			total.torn += v.torn
			total.mu.Unlock()
		})
	}
	t.Logf("VERDICT eventlog power cuts at every operation, all workloads: %s", total)
}

// TestPowerCutRandom: longer workloads cut at random points; -crash.duration (or
// CHAOS_DURATION) runs it for a given time.
func TestPowerCutRandom(t *testing.T) {
	// Replay streams the segments: a window smaller than most records makes every one cross it.
	defer eventlog.SetReadWindow(48)()
	d := *crashDuration
	if env := os.Getenv("CHAOS_DURATION"); env != "" && d == 0 {
		var err error
		if d, err = time.ParseDuration(env); err != nil {
			t.Fatalf("CHAOS_DURATION: %v", err)
		}
	}
	long := []workload{
		{"long: concurrent appenders with snapshots", 2048, concurrentAppends(8, 40, 10)},
		{"long: pipelined writer with snapshots", 1500, pipelined(200, 7, 25)},
	}
	v := &verdict{}
	start := time.Now()
	for i := 0; ; i++ {
		if d > 0 && time.Since(start) > d || d == 0 && i >= *crashRandom {
			break
		}
		w := long[i%len(long)]
		seed := int64(i)
		rng := rand.New(rand.NewSource(seed))
		fs := crashfs.New(seed)
		fs.CutAt(rng.Intn(1200))
		h := newHistory()
		phase(fs, w, h, rng, "p0", nil)
		c := crashfs.RandomCrash(rng.Int63())
		afterCrash(v, fs.Crash(c), w, h, rng,
			fmt.Sprintf("%s: cut at op %d (seed %d), crash %s", w.name, fs.OpCount(), seed, c), 3)
		if len(v.failures) > 0 {
			break
		}
	}
	v.check(t, "random cuts of long workloads")
}

// TestFailedWriteOrSyncIsNotServedAfterRestart (issue 9, defect 6): when a batch's write or
// fdatasync fails, the log is poisoned and the batch cut off, so that a process restarted
// without a power loss (page cache intact: crashfs.Restart) does not replay records nobody was
// told are durable. Then the restarted log takes appends and loses nothing to a later power cut.
func TestFailedWriteOrSyncIsNotServedAfterRestart(t *testing.T) {
	// Batches of three records, so a short write leaves whole records of the failed batch in
	// the page cache.
	w := workload{"pipelined writer, rollover", 600, pipelined(30, 3, 0)}
	faults := []struct {
		name  string
		fault func(n int) crashfs.Fault
	}{
		{"failed fdatasync", func(n int) crashfs.Fault { return crashfs.Fault{Kind: crashfs.OpSync, N: n, Err: errEIO} }},
		{"failed fdatasync, sticky", func(n int) crashfs.Fault {
			return crashfs.Fault{Kind: crashfs.OpSync, N: n, Err: errEIO, Sticky: true}
		}},
		{"failed write", func(n int) crashfs.Fault { return crashfs.Fault{Kind: crashfs.OpWrite, N: n, Err: errENOSPC} }},
		{"short write", func(n int) crashfs.Fault { return crashfs.Fault{Kind: crashfs.OpWrite, N: n, Short: 5} }},
	}
	v := &verdict{}
	for _, ft := range faults {
		for n := 1; n <= 40; n++ {
			seed := int64(n)
			fs := crashfs.New(seed)
			l, _, err := eventlog.Open(logDir, eventlog.Options{FS: fs, SegmentSize: w.segment}, &collector{})
			if err != nil {
				t.Fatal(err)
			}
			fs.Inject(ft.fault(n))
			h := newHistory()
			w.run(l, h, rand.New(rand.NewSource(seed)), "p0")
			if l.Err() == nil {
				_ = l.Close()
				continue // the workload ended before the nth operation
			}
			acked := h.acked
			where := fmt.Sprintf("%s at the %dth operation of its kind, restarted", ft.name, n)
			// Same machine, page cache intact: nothing beyond what was acknowledged is served.
			img := fs.Restart()
			c := &collector{}
			l2, st, err := eventlog.Open(logDir, eventlog.Options{FS: img, SegmentSize: w.segment}, c)
			switch {
			case err != nil:
				v.fail("%s: Open: %v", where, err)
				continue
			case st.LastSeq != acked:
				v.fail("%s: log ends at %d, %d acknowledged: the failed batch was served", where, st.LastSeq, acked)
			}
			_ = l2.Close()
			// And the restarted log builds only on durable records: a power cut later loses none.
			afterCrash(v, img, w, h, rand.New(rand.NewSource(seed)), where, 2)
		}
	}
	v.check(t, "failed write or fdatasync, then restart")
}

var (
	errEIO    = syscall.EIO
	errENOSPC = syscall.ENOSPC
)
