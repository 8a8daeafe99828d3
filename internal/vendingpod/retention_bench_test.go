package vendingpod

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/vendingfleet/vending-operator/internal/eventlog"
	"github.com/vendingfleet/vending-operator/internal/vending"
)

var (
	retentionRequests = flag.Int("retention.requests", 200_000,
		"BenchmarkRetention: keyed requests served with retention (checkpoints at 1M, 5M, 10M and the end)")
	retentionBaseline = flag.Int("retention.baseline", 200_000,
		"BenchmarkRetention: keyed requests served without retention (today's behaviour), 0: skip")
	retentionDir = flag.String("retention.dir", "", "BenchmarkRetention: directory for the logs (default: a temp dir; /dev/shm is fastest)")
)

// BenchmarkRetention: a machine that serves millions of keyed requests keeps its snapshot, heap
// and start-to-ready bounded. Customers insert 2 coins and order an Espresso, each request with a
// new idempotency key (2 requests, 3 events: CoinsInserted, OrderPlaced, BeverageDispensed), as
// the writer records them: Submit, group commits of 1,000 events, a snapshot every 10,000 events
// (the pod's default) and compaction. At each checkpoint the log is closed and reopened (open +
// replay, in this process, for the heap the replayed machine holds) and the real binary is
// started on it (start to /readyz 200). The same runs without retention as the baseline.
//
//	go test ./internal/vendingpod/ -run XXX -bench Retention -benchtime 1x -timeout 60m \
//	  -retention.requests 10000000 -retention.baseline 1000000 -retention.dir /dev/shm
func BenchmarkRetention(b *testing.B) {
	for _, tc := range []struct {
		name      string
		retention vending.Retention
		requests  int
	}{
		{"retention-default", vending.DefaultRetention, *retentionRequests},
		{"no-retention", vending.Retention{}, *retentionBaseline},
	} {
		if tc.requests == 0 {
			continue
		}
		b.Run(tc.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				runRetention(b, tc.retention, tc.requests)
			}
		})
	}
}

func runRetention(b *testing.B, ret vending.Retention, requests int) {
	root := *retentionDir
	if root == "" {
		root = b.TempDir()
	}
	root, err := os.MkdirTemp(root, "retention-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(root)
	dir := filepath.Join(root, "data")
	cfg := vending.DefaultConfig()
	cfg.Retention = ret
	m := vending.New(cfg)
	l, _, err := eventlog.Open(dir, eventlog.Options{}, replayer{m})
	if err != nil {
		b.Fatal(err)
	}
	const groupCommit, snapshotEvery = 1000, 10_000
	var buf []byte
	var lastSnap uint64
	submit := func(e *vending.Event) {
		buf = vending.AppendEvent(buf[:0], e)
		seq, _, err := l.Submit(recordEvent, buf)
		if err != nil {
			b.Fatal(err)
		}
		if err := m.Apply(seq, e); err != nil {
			b.Fatal(err)
		}
		if seq%groupCommit == 0 {
			if err := l.WaitDurable(seq); err != nil {
				b.Fatal(err)
			}
		}
		if seq-lastSnap >= snapshotEvery {
			lastSnap = seq
			if err := l.SaveSnapshot(seq, m.AppendSnapshot(nil)); err != nil {
				b.Fatal(err)
			}
		}
	}
	checkpoints := map[int]bool{1_000_000: true, 5_000_000: true, 10_000_000: true, requests: true}
	b.Logf("%-10s %-12s %-12s %-10s %-10s %-12s %-14s %-12s %-12s %-10s %s", "requests", "events", "keys", "orders",
		"snapshot", "heap-live", "heap-replayed", "open+replay", "binary-ready", "peak-RSS", "serving")
	start := time.Now()
	for n := 0; n < requests; n += 2 {
		if m.State().Beans < 10 {
			submit(m.Refill())
		}
		e, _, err := m.InsertCoins(2, "c-"+strconv.Itoa(n))
		if err != nil {
			b.Fatal(err)
		}
		submit(e)
		e, _, err = m.Select("Espresso", "o-"+strconv.Itoa(n+1))
		if err != nil {
			b.Fatal(err)
		}
		submit(e)
		d, err := m.Brew(e.OrderID)
		if err != nil {
			b.Fatal(err)
		}
		submit(d)
		if !checkpoints[n+2] {
			continue
		}
		serving := time.Since(start)
		// The state as the live machine has it, then the same state from disk.
		seq := m.State().Seq
		live := m.AppendSnapshot(nil)
		if err := l.SaveSnapshot(seq, live); err != nil {
			b.Fatal(err)
		}
		lastSnap = seq
		keys, orders := m.Retained()
		liveHeap := heapNow()
		if err := l.Close(); err != nil {
			b.Fatal(err)
		}
		m, l = nil, nil
		base := heapNow()
		replayed := vending.New(cfg)
		rl, stats, err := eventlog.Open(dir, eventlog.Options{}, replayer{replayed})
		if err != nil {
			b.Fatal(err)
		}
		replayedHeap := heapNow() - base
		if !bytes.Equal(replayed.AppendSnapshot(nil), live) {
			b.Fatalf("at %d requests the replayed machine differs from the live one", n+2)
		}
		if err := rl.Close(); err != nil { // the binary takes the lock
			b.Fatal(err)
		}
		ready, peakRSS := binaryStartToReady(b, root, dir, ret)
		// Serve on with the replayed machine (the binary appended nothing: no refill or pending
		// order was due), on the log reopened.
		m = replayed
		nl, stats2, err := eventlog.Open(dir, eventlog.Options{}, replayer{vending.New(cfg)})
		if err != nil || stats2.LastSeq != seq {
			b.Fatalf("reopening after the binary: last sequence %d, want %d (%v)", stats2.LastSeq, seq, err)
		}
		l = nl
		b.Logf("%-10d %-12d %-12d %-10d %-10s %-12s %-14s %-12s %-12s %-10s %s", n+2, seq, keys, orders,
			mib(int64(len(live))), mib(int64(liveHeap)), mib(int64(replayedHeap)), stats.Duration.Round(time.Millisecond),
			ready.Round(time.Millisecond), mib(peakRSS), serving.Round(time.Second))
		b.ReportMetric(float64(len(live)), "snapshot-bytes")
		b.ReportMetric(float64(replayedHeap), "heap-bytes")
		b.ReportMetric(float64(ready.Milliseconds()), "ms-to-ready")
		b.ReportMetric(float64(peakRSS), "ready-peak-rss-bytes")
	}
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
}

func heapNow() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func mib(n int64) string { return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20)) }

// binaryStartToReady starts the real binary on dir and returns the time to /readyz 200 and the
// process's peak resident memory by then.
func binaryStartToReady(b *testing.B, root, dir string, ret vending.Retention) (time.Duration, int64) {
	addr := freeAddrB(b)
	cmd := exec.Command(binary, "--data-dir", dir, "--listen", addr,
		"--keep-keys", strconv.Itoa(ret.Keys), "--keep-orders", strconv.Itoa(ret.Orders),
		"--termination-message-path", filepath.Join(root, "term"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	waitReady(b, addr, start, 2*time.Minute, &stderr)
	ready := time.Since(start)
	return ready, peakRSS(cmd.Process.Pid)
}

// peakRSS is VmHWM of a process, in bytes (0 if unknown).
func peakRSS(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range bytes.Split(data, []byte("\n")) {
		if f := bytes.Fields(line); len(f) >= 2 && string(f[0]) == "VmHWM:" {
			kb, _ := strconv.ParseInt(string(f[1]), 10, 64)
			return kb << 10
		}
	}
	return 0
}
