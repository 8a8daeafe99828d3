package vendingpod

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/eventlog"
	"github.com/vendingfleet/vending-operator/internal/vending"
)

const benchEvents = 1_000_000

func benchConfig() vending.Config {
	cfg := vending.DefaultConfig()
	cfg.BeanCapacity, cfg.MilkCapacity = 1_000_000, 1_000_000
	cfg.Retention = vending.DefaultRetention // what cmd/vendingpod runs with
	return cfg
}

// writeBenchLog writes a log of n events as customers make them (a keyed insert, a keyed order
// and its dispense, over and over), and a snapshot snapshotBehind events before the end
// (-1: none).
func writeBenchLog(b *testing.B, dir string, n int, snapshotBehind int) {
	b.Helper()
	m := vending.New(benchConfig())
	l, _, err := eventlog.Open(dir, eventlog.Options{}, replayer{m})
	if err != nil {
		b.Fatal(err)
	}
	var buf []byte
	submit := func(e *vending.Event) {
		buf = vending.AppendEvent(buf[:0], e)
		seq, _, err := l.Submit(recordEvent, buf)
		if err != nil {
			b.Fatal(err)
		}
		if err := m.Apply(seq, e); err != nil {
			b.Fatal(err)
		}
		if snapshotBehind >= 0 && int(seq) == n-snapshotBehind {
			if err := l.WaitDurable(seq); err != nil {
				b.Fatal(err)
			}
			if err := l.SaveSnapshot(seq, m.AppendSnapshot(nil)); err != nil {
				b.Fatal(err)
			}
		}
	}
	for i := 0; int(m.State().Seq) < n; i++ {
		switch i % 3 {
		case 0:
			e, _, _ := m.InsertCoins(2, fmt.Sprintf("coins-%d", i))
			submit(e)
		case 1:
			e, _, err := m.Select("Espresso", fmt.Sprintf("order-%d", i))
			if err != nil {
				b.Fatal(err)
			}
			submit(e)
		case 2:
			o := m.Pending()[0]
			e, _ := m.Brew(o.ID)
			submit(e)
		}
	}
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkReplay measures replaying a 1M-event log without a snapshot: the raw replay rate.
func BenchmarkReplay(b *testing.B) {
	dir := b.TempDir()
	writeBenchLog(b, dir, benchEvents, -1)
	b.ResetTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		m := vending.New(benchConfig())
		l, st, err := eventlog.Open(dir, eventlog.Options{}, replayer{m})
		if err != nil {
			b.Fatal(err)
		}
		total += st.Duration
		if st.Records != benchEvents {
			b.Fatalf("replayed %d", st.Records)
		}
		b.StopTimer()
		_ = l.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(benchEvents)*float64(b.N)/total.Seconds(), "events/s")
}

// BenchmarkStartToReady starts the real binary on a 1M-event log whose newest snapshot is 5,000
// events behind the end (the pod snapshots every 10,000), and waits for /readyz: what a restarted
// machine costs its customers.
func BenchmarkStartToReady(b *testing.B) {
	for _, tc := range []struct {
		name   string
		behind int
	}{{"snapshot", 5000}, {"no-snapshot", -1}} {
		b.Run(tc.name, func(b *testing.B) {
			root := b.TempDir()
			dir := filepath.Join(root, "data")
			writeBenchLog(b, dir, benchEvents, tc.behind)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				addr := freeAddrB(b)
				cmd := exec.Command(binary, "--data-dir", dir, "--listen", addr, "--beans", "1000000", "--milk", "1000000",
					"--termination-message-path", filepath.Join(root, "term"))
				start := time.Now()
				if err := cmd.Start(); err != nil {
					b.Fatal(err)
				}
				waitReady(b, addr, start, 30*time.Second, nil)
				b.ReportMetric(float64(time.Since(start).Milliseconds()), "ms-to-ready")
				b.StopTimer()
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				b.StartTimer()
			}
		})
	}
}

// waitReady polls a starting pod's /readyz until it answers 200, failing the benchmark after
// limit (with the pod's stderr, if kept).
func waitReady(b *testing.B, addr string, start time.Time, limit time.Duration, stderr *bytes.Buffer) {
	b.Helper()
	for {
		resp, err := http.Get("http://" + addr + contract.PathReadyz)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Since(start) > limit {
			msg := ""
			if stderr != nil {
				msg = stderr.String()
			}
			b.Fatalf("not ready in %s: %s", limit, msg)
		}
		time.Sleep(time.Millisecond)
	}
}

func freeAddrB(b *testing.B) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
