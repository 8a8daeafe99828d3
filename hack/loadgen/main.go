// Command loadgen measures an HTTP endpoint's throughput and latency from concurrent clients on
// loopback, and can measure a trivial net/http handler on the same machine as the baseline:
//
//	go run ./hack/loadgen -url http://127.0.0.1:8080/v1/coins -body '{"count":1}' -keys
//	go run ./hack/loadgen -baseline
//
// It sends only to the address it is given (or to its own loopback server), for a bounded time.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	url := flag.String("url", "", "POST target (ignored with -baseline)")
	body := flag.String("body", `{"count":1}`, "request body")
	clients := flag.Int("c", 32, "concurrent clients")
	duration := flag.Duration("d", 10*time.Second, "how long to send (at most 5m)")
	keys := flag.Bool("keys", false, "send a unique Idempotency-Key with every request")
	baseline := flag.Bool("baseline", false, "measure a trivial net/http handler on loopback instead")
	flag.Parse()
	if *duration > 5*time.Minute {
		*duration = 5 * time.Minute
	}

	target := *url
	if *baseline {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fail(err)
		}
		go func() {
			_ = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(`{"inserted":1,"sequence":1}` + "\n"))
			}))
		}()
		target = "http://" + ln.Addr().String() + "/v1/coins"
	}
	loopback := false
	for _, p := range []string{"http://127.", "http://localhost", "http://[::1]"} {
		loopback = loopback || strings.HasPrefix(target, p)
	}
	if !loopback {
		fail(fmt.Errorf("loadgen sends to loopback only, not %q", target))
	}

	transport := &http.Transport{MaxIdleConnsPerHost: *clients, MaxConnsPerHost: *clients}
	client := &http.Client{Transport: transport, Timeout: 10 * time.Second}
	var (
		wg       sync.WaitGroup
		seq      atomic.Int64
		errs     atomic.Int64
		statuses sync.Map
		lat      = make([][]time.Duration, *clients)
	)
	stop := time.Now().Add(*duration)
	start := time.Now()
	for c := 0; c < *clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for time.Now().Before(stop) {
				req, _ := http.NewRequest("POST", target, bytes.NewReader([]byte(*body)))
				req.Header.Set("Content-Type", "application/json")
				if *keys {
					req.Header.Set("Idempotency-Key", fmt.Sprintf("loadgen-%d-%d", start.UnixNano(), seq.Add(1)))
				}
				t0 := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					errs.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				lat[c] = append(lat[c], time.Since(t0))
				n, _ := statuses.LoadOrStore(resp.StatusCode, new(atomic.Int64))
				n.(*atomic.Int64).Add(1)
			}
		}(c)
	}
	wg.Wait()
	elapsed := time.Since(start)
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	if len(all) == 0 {
		fail(fmt.Errorf("no request answered (%d errors)", errs.Load()))
	}
	pct := func(p int) time.Duration { return all[len(all)*p/100] }
	fmt.Printf("target %s clients %d duration %v\n", target, *clients, elapsed.Round(time.Millisecond))
	fmt.Printf("requests %d  req/s %.0f  p50 %v  p99 %v  max %v  errors %d\n",
		len(all), float64(len(all))/elapsed.Seconds(), pct(50), pct(99), all[len(all)-1], errs.Load())
	statuses.Range(func(k, v any) bool {
		fmt.Printf("  status %v: %d\n", k, v.(*atomic.Int64).Load())
		return true
	})
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "loadgen:", err)
	os.Exit(1)
}
