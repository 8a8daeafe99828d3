package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vendingfleet/vending-operator/internal/contract"
)

// customer talks to machines as a program on the host does: straight to the pod IP.
type customer struct {
	cl      *cluster
	timeout time.Duration
	// once opens a new connection for every attempt: each attempt meets the machine as a new
	// customer would (a refused connection shows as refused), and net/http cannot hide an
	// error by retrying on another pooled connection (it does for keyed requests).
	once *http.Client
	// pooled keeps connections for the fill, which is not measured.
	pooled *http.Client
	seq    atomic.Int64
}

func newCustomer(cl *cluster, timeout time.Duration) *customer {
	dialer := &net.Dialer{Timeout: timeout}
	return &customer{cl: cl, timeout: timeout,
		once: &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext, DisableKeepAlives: true}},
		pooled: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: dialer.DialContext,
			MaxIdleConnsPerHost: fillClients, MaxConnsPerHost: fillClients}}}
}

// recovery is what the customer met between a kill and its first durable reply.
type recovery struct {
	Took     time.Duration `json:"took"`
	Attempts int           `json:"attempts"`
	Refused  int           `json:"refused"`
	// Other connection errors: reset, EOF, no route, and attempts that timed out or were given
	// up because the machine's pod IP changed (counted again in Timeouts).
	Other     int `json:"other"`
	Timeouts  int `json:"timeouts"`
	Status5xx int `json:"status5xx"`
}

// untilDurable inserts one coin, with one Idempotency-Key for all its attempts, until the
// machine answers 200 (sent only once the coin is durable), and says how long that took after
// since. It follows the machine to its current pod IP before every attempt.
func (cu *customer) untilDurable(ctx context.Context, m *machine, since time.Time) (recovery, error) {
	var r recovery
	key := cu.key("c")
	deadline := since.Add(5 * time.Minute)
	for {
		if err := ctx.Err(); err != nil {
			return r, err
		}
		if time.Now().After(deadline) {
			return r, fmt.Errorf("%s: no durable reply within 5m (%+v)", m.name, r)
		}
		ip := m.ip()
		if ip == "" { // no pod, or its IP not known yet: nothing to send to
			time.Sleep(5 * time.Millisecond)
			continue
		}
		r.Attempts++
		code, body, err := cu.attempt(ctx, m, ip, key)
		switch {
		case err == nil && code == http.StatusOK:
			r.Took = time.Since(since)
			return r, nil
		case err == nil && code >= 500:
			r.Status5xx++
		case err == nil:
			return r, fmt.Errorf("%s: POST /v1/coins: %d %s", m.name, code, body)
		case errors.Is(err, syscall.ECONNREFUSED):
			r.Refused++
		case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
			if ctx.Err() != nil {
				return r, ctx.Err()
			}
			r.Other++
			r.Timeouts++
		default:
			r.Other++
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// attempt is one POST /v1/coins {"count":1} to ip, given up after the timeout or as soon as
// the machine's pod IP changes (a customer told the machine moved stops waiting on the old one).
func (cu *customer) attempt(ctx context.Context, m *machine, ip, key string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, cu.timeout)
	defer cancel()
	go func() {
		for {
			changed := cu.cl.seen.next()
			if m.ip() != ip {
				cancel()
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-changed:
			}
		}
	}()
	return post(ctx, cu.once, ip, "/v1/coins", `{"count":1}`, key)
}

func post(ctx context.Context, c *http.Client, ip, path, body, key string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url(ip, path), bytes.NewReader([]byte(body)))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func url(ip, path string) string {
	return "http://" + net.JoinHostPort(ip, fmt.Sprint(contract.Port)) + path
}

func (cu *customer) key(kind string) string {
	return fmt.Sprintf("mttr-%s-%d-%d", kind, time.Now().UnixNano(), cu.seq.Add(1))
}

const fillClients = 32

// fill inserts coins, fillClients at a time on kept connections, until the machine's log holds
// at least n events, and returns how many it holds. Keyed coins leave their keys in the
// machine's state (up to --keep-keys, 100,000 by default), which every start restores; unkeyed
// ones leave only the log to replay.
func (cu *customer) fill(ctx context.Context, m *machine, n int, keyed bool) (uint64, error) {
	for {
		seq, err := cu.sequence(ctx, m)
		if err != nil || seq >= uint64(n) {
			return seq, err
		}
		ip := m.ip()
		left := atomic.Int64{}
		left.Store(int64(uint64(n) - seq))
		var wg sync.WaitGroup
		var failed atomic.Pointer[error]
		for range fillClients {
			wg.Go(func() {
				for left.Add(-1) >= 0 && failed.Load() == nil {
					key := ""
					if keyed {
						key = cu.key("fill")
					}
					code, body, err := post(ctx, cu.pooled, ip, "/v1/coins", `{"count":1}`, key)
					if err == nil && code != http.StatusOK {
						err = fmt.Errorf("POST /v1/coins: %d %s", code, body)
					}
					if err != nil {
						failed.Store(&err)
					}
				}
			})
		}
		wg.Wait()
		if err := failed.Load(); err != nil {
			return 0, *err
		}
	}
}

// sequence is the sequence number of the newest durable event: how many events the log holds.
func (cu *customer) sequence(ctx context.Context, m *machine) (uint64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url(m.ip(), contract.PathState), nil)
	if err != nil {
		return 0, err
	}
	resp, err := cu.pooled.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	var st contract.State
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", contract.PathState, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return 0, err
	}
	return st.Sequence, nil
}
