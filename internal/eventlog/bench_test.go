package eventlog

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkRawWriteFsync is the baseline the log is measured against: one 128-byte write and
// one fdatasync per record, on the same file system, with nothing else.
func BenchmarkRawWriteFsync(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "raw"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 128)
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "syncs/s")
}

// BenchmarkAppend measures durable appends (104-byte payloads: 128 bytes framed) with 1, 16 and
// 256 concurrent writers: throughput, and p99 latency of one Append.
func BenchmarkAppend(b *testing.B) {
	for _, writers := range []int{1, 16, 256} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			l, _, err := Open(b.TempDir(), Options{}, &collector{})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			payload := make([]byte, 104)
			lat := make([][]time.Duration, writers)
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for w := 0; w < writers; w++ {
				n := b.N / writers
				if w < b.N%writers {
					n++
				}
				wg.Add(1)
				go func(w, n int) {
					defer wg.Done()
					lat[w] = make([]time.Duration, 0, n)
					for i := 0; i < n; i++ {
						t0 := time.Now()
						if _, err := l.Append(typeEvent, payload); err != nil {
							b.Error(err)
							return
						}
						lat[w] = append(lat[w], time.Since(t0))
					}
				}(w, n)
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			var all []time.Duration
			for _, l := range lat {
				all = append(all, l...)
			}
			sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "appends/s")
			if len(all) > 0 {
				b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
			}
		})
	}
}

// BenchmarkTornTailScan is the cost of deciding a torn tail (laterBatch) over 16 MiB after a
// bad record, the worst case a 64 MiB segment gives in practice a quarter of: random garbage
// (headers that look plausible now and then) and zeros.
func BenchmarkTornTailScan(b *testing.B) {
	for _, kind := range []string{"garbage", "zeros"} {
		b.Run(kind, func(b *testing.B) {
			data := make([]byte, 16<<20)
			if kind == "garbage" {
				rand.New(rand.NewSource(1)).Read(data)
			}
			b.SetBytes(int64(len(data)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, _, later := laterBatch(data, 0, 1); later {
					b.Fatal("a later batch in noise")
				}
			}
		})
	}
}
