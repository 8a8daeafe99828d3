// Package powercut runs the real vendingpod binary on a file system that loses power
// (internal/lazyfs): concurrent keyed customers, repeated SIGKILL + loss of every un-synced
// write + restart, and the whole customer history checked for linearizability with porcupine
// (internal/history), plus a final reconciliation of the machine's totals. A second build,
// deliberately broken (it acknowledges before fsync), must be rejected: the check can fail.
//
// It needs root and /dev/fuse (it mounts FUSE without fusermount) and skips without them.
// Longer runs: go test ./test/powercut/ -powercut.cycles=200, or -powercut.duration=5m (or
// CHAOS_DURATION=5m), as make chaos does.
package powercut

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/history"
	"github.com/vendingfleet/vending-operator/internal/lazyfs"
)

var (
	cycles    = flag.Int("powercut.cycles", 4, "power cuts of the correct build")
	duration  = flag.Duration("powercut.duration", 0, "cut power for this long instead of -powercut.cycles times (env CHAOS_DURATION)")
	maxUnsafe = flag.Int("powercut.unsafe-cycles", 30,
		"at most this many power cuts of the broken build before the test gives up on seeing it rejected")
)

// binaries: the correct build and the deliberately broken one (-tags unsafeack).
var safeBinary, unsafeBinary string

func TestMain(m *testing.M) {
	flag.Parse()
	if lazyfs.CannotMount() != "" {
		os.Exit(m.Run()) // every test skips, with the reason
	}
	dir, err := os.MkdirTemp("", "powercut-bin-")
	if err != nil {
		panic(err)
	}
	safeBinary, unsafeBinary = filepath.Join(dir, "vendingpod"), filepath.Join(dir, "vendingpod-unsafeack")
	for _, b := range []struct{ out, tags string }{{safeBinary, ""}, {unsafeBinary, "unsafeack"}} {
		cmd := exec.Command("go", "build", "-tags", b.tags, "-o", b.out, "../../cmd/vendingpod")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building vendingpod (tags %q): %v\n%s", b.tags, err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// The correct build keeps every promise through power cuts.
func TestPowerCutHistoryIsLinearizable(t *testing.T) {
	run := newRun(t, safeBinary)
	run.lfs.SetSyncDelay(2 * time.Millisecond) // a disk's fsync latency: cuts land between write and fsync
	budget := chaosDuration()
	start := time.Now()
	run.startCustomers()
	for (budget == 0 && run.cuts < *cycles) || (budget > 0 && time.Since(start) < budget) {
		time.Sleep(time.Duration(100+run.rng.IntN(400)) * time.Millisecond)
		run.powerCut()
	}
	time.Sleep(200 * time.Millisecond)
	run.stopCustomers()
	res := run.finish()
	t.Logf("VERDICT real binary on lazyfs, power cuts under keyed customers: %s", res)
	if res.drops == 0 {
		t.Error("the power cuts dropped no un-synced data: they proved nothing")
	}
	if res.acked < 10*res.cuts || res.orders == 0 {
		t.Errorf("too little traffic to mean anything: %s", res)
	}
	if !res.verdict.Linearizable() {
		t.Errorf("the customers' history is not linearizable: %s", res.verdict)
	}
	if res.lost != 0 || res.duplicated != 0 {
		t.Errorf("acknowledged requests lost or done twice: %s", res)
	}
}

// A build that acknowledges before fsync loses acknowledged requests in a power cut, and the
// check says so. Without this, a checker that accepts everything would look like a proof.
func TestPowerCutRejectsAckBeforeFsync(t *testing.T) {
	run := newRun(t, unsafeBinary)
	if os.Getenv("ARTIFACTS") == "" {
		run.visualize = filepath.Join(t.TempDir(), "rejected.html") // expected: not kept
	}
	run.lfs.SetSyncDelay(2 * time.Millisecond) // the same disk as the correct build's
	var res result
	for {
		run.startCustomers()
		time.Sleep(time.Duration(100+run.rng.IntN(300)) * time.Millisecond)
		run.powerCut()
		time.Sleep(100 * time.Millisecond)
		run.stopCustomers()
		res = run.finish()
		if !res.verdict.Linearizable() || run.cuts >= *maxUnsafe {
			break
		}
	}
	t.Logf("VERDICT real binary on lazyfs, BROKEN build (ack before fsync; must be rejected): %s", res)
	if res.verdict.Linearizable() {
		t.Fatalf("porcupine accepted the history of a build that acknowledges before fsync, after %d power cuts: %s",
			run.cuts, res)
	}
	if res.lost == 0 {
		t.Errorf("the history was rejected but the reconciliation found nothing lost: %s", res)
	}
	t.Logf("porcupine's visualization of the rejected history: %s", res.verdict.Visualization)
}

func chaosDuration() time.Duration {
	if *duration > 0 {
		return *duration
	}
	if d, err := time.ParseDuration(os.Getenv("CHAOS_DURATION")); err == nil {
		return d
	}
	return 0
}

// run is one machine on one lazy file system, its customers and their history.
type run struct {
	t       *testing.T
	binary  string
	lfs     *lazyfs.FS
	dataDir string
	addr    string
	rng     *rand.Rand
	rec     *history.Recorder
	cuts    int
	// visualize is where a rejected history's visualization goes.
	visualize string
	stop      chan struct{}
	wg        sync.WaitGroup

	mu   sync.Mutex
	proc *proc
	reqs []*request // every request sent, for the final pass
}

// request is one keyed customer request and its answer.
type request struct {
	in      history.Input
	first   history.Output // its answer during the chaos
	client  int
	again   history.Output // its answer in the final pass
	retried bool
}

const (
	customers = 3
	price     = 2 // Espresso on the default menu
)

func newRun(t *testing.T, binary string) *run {
	if reason := lazyfs.CannotMount(); reason != "" {
		t.Skip(reason)
	}
	base := t.TempDir()
	backing, mnt := filepath.Join(base, "backing"), filepath.Join(base, "mnt")
	for _, d := range []string{backing, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	lfs, err := lazyfs.Mount(backing, mnt)
	if err != nil {
		t.Fatal(err)
	}
	r := &run{t: t, binary: binary, lfs: lfs, dataDir: filepath.Join(mnt, "data"), addr: freeAddr(t),
		rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1)), rec: history.NewRecorder(),
		visualize: history.VisualizationPath(t.Name())}
	// Cleanups run last-in first-out: the process dies before the unmount.
	t.Cleanup(func() {
		if err := lfs.Unmount(); err != nil {
			t.Error(err)
		}
	})
	t.Cleanup(func() { r.current().kill() })
	r.start()
	return r
}

func (r *run) current() *proc {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.proc
}

func (r *run) start() {
	p := startProc(r.t, r.binary, r.dataDir, r.addr)
	r.mu.Lock()
	r.proc = p
	r.mu.Unlock()
}

// powerCut waits for un-synced writes, drops every write the process did not fsync (half the
// time keeping a torn prefix of them), kills it, and restarts it on what is left.
func (r *run) powerCut() {
	var torn *rand.Rand
	if r.rng.IntN(2) == 0 {
		torn = r.rng
	}
	// Cut when there is something to lose (a write waiting for its fsync), as a power cut at a
	// random moment of a busy machine would most of the time; give up waiting after a while.
	for deadline := time.Now().Add(time.Second); r.lfs.Unsynced() == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	// The power goes while the process runs (an fsync in flight fails, it does not complete
	// after the cut); then the process dies, and the power comes back.
	if err := r.lfs.PowerOff(torn); err != nil {
		r.t.Fatal(err)
	}
	r.current().kill()
	r.lfs.PowerOn()
	r.cuts++
	r.start()
}

// startCustomers starts the customers; they keep going, through power cuts, until
// stopCustomers.
func (r *run) startCustomers() {
	r.stop = make(chan struct{})
	for c := range customers {
		r.wg.Go(func() { r.customer(c, r.stop) })
	}
}

func (r *run) stopCustomers() {
	close(r.stop)
	r.wg.Wait()
}

var keySeq struct {
	sync.Mutex
	n int
}

func newKey(client int) string {
	keySeq.Lock()
	defer keySeq.Unlock()
	keySeq.n++
	return fmt.Sprintf("c%d-%d", client, keySeq.n)
}

// customer inserts coins and orders, each with a new key, retried with that key through
// outages until it gets an answer; now and then it reads the state, or sends an answered
// request again (a duplicate delivery).
func (r *run) customer(client int, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(r.rng.Uint64(), uint64(client)))
	var last *request
	for {
		select {
		case <-stop:
			return
		default:
		}
		var in history.Input
		switch n := rng.IntN(10); {
		case n < 5:
			in = history.Input{Kind: history.Coins, Key: newKey(client), Count: int64(1 + rng.IntN(3))}
		case n < 8:
			in = history.Input{Kind: history.Order, Key: newKey(client), Beverage: "Espresso", Price: price}
		case n < 9 && last != nil:
			in = last.in
		default:
			in = history.Input{Kind: history.State}
		}
		out := r.do(client, in, 30*time.Second)
		if in.Kind != history.State && (last == nil || in.Key != last.in.Key) {
			last = &request{in: in, first: out, client: client}
			r.mu.Lock()
			r.reqs = append(r.reqs, last)
			r.mu.Unlock()
		}
	}
}

// do sends in, recorded in the history, retrying while the machine cannot answer, for at most
// giveUp; then the outcome is unknown.
func (r *run) do(client int, in history.Input, giveUp time.Duration) history.Output {
	p := r.rec.Call(client, in)
	deadline := time.Now().Add(giveUp)
	for {
		code, body, err := send(r.addr, in)
		out := history.FromHTTP(in, code, body, err)
		if out.Outcome != history.Unknown || time.Now().After(deadline) {
			p.Return(out)
			return out
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var client = &http.Client{Timeout: 5 * time.Second}

func send(addr string, in history.Input) (int, []byte, error) {
	method, path, body := "GET", "/v1/state", ""
	switch in.Kind {
	case history.Coins:
		method, path, body = "POST", "/v1/coins", fmt.Sprintf(`{"count":%d}`, in.Count)
	case history.Order:
		method, path, body = "POST", "/v1/orders", fmt.Sprintf(`{"beverage":%q}`, in.Beverage)
	}
	req, err := http.NewRequest(method, "http://"+addr+path, bytes.NewBufferString(body))
	if err != nil {
		return 0, nil, err
	}
	if in.Key != "" {
		req.Header.Set("Idempotency-Key", in.Key)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// result is the verdict of a run.
type result struct {
	verdict          history.Verdict
	cuts             int
	drops            int64 // un-synced bytes the cuts dropped
	acked, orders    int   // requests answered during the chaos; orders among them
	lost, duplicated int
	checked          time.Duration // how long porcupine took
	detail           string
}

func (s result) String() string {
	return fmt.Sprintf("cuts=%d dropped-bytes=%d acknowledged=%d orders=%d lost=%d duplicated=%d %s check=%s%s",
		s.cuts, s.drops, s.acked, s.orders, s.lost, s.duplicated, s.verdict, s.checked, s.detail)
}

// finish (with the customers stopped) cuts the power once more, then, from a fresh process,
// sends every request again with its key (each retry is part of the history too; an earlier
// finish's retries are not repeated), reads the state, checks the history and reconciles: every
// answered request gets its first answer again, and the totals are the sum of the answers.
func (r *run) finish() result {
	r.powerCut()
	r.mu.Lock()
	reqs := append([]*request(nil), r.reqs...)
	r.mu.Unlock()
	res := result{cuts: r.cuts, drops: r.lfs.Stats().DroppedBytes}
	var coins, change int64
	var orders int64
	for _, q := range reqs {
		if !q.retried { // an earlier finish retried the others
			q.again, q.retried = r.do(customers, q.in, 30*time.Second), true
			if q.first.Outcome != history.Unknown && !sameAnswer(q.first, q.again) {
				res.lost++ // the machine forgot the first answer and decided again
				if res.lost <= 3 {
					res.detail += fmt.Sprintf("\n  %s %s: first %+v, retry %+v", q.in.Kind, q.in.Key, q.first, q.again)
				}
			}
		}
		if q.first.Outcome != history.Unknown {
			res.acked++
			if q.in.Kind == history.Order && q.first.Outcome == history.OK {
				res.orders++
			}
		}
		if q.again.Outcome == history.OK {
			switch q.in.Kind {
			case history.Coins:
				coins += q.in.Count
			case history.Order:
				change += q.again.Change
				orders++
			}
		}
	}
	st := r.do(customers, history.Input{Kind: history.State}, 30*time.Second)
	if st.Total > coins-change {
		res.duplicated += int(st.Total - (coins - change))
	}
	if st.Dispensed > orders {
		res.duplicated += int(st.Dispensed - orders)
	}
	if st.Total < coins-change || st.Dispensed < orders {
		res.detail += fmt.Sprintf("\n  state total=%d dispensed=%d, the answers add up to total=%d dispensed=%d",
			st.Total, st.Dispensed, coins-change, orders)
		res.lost++
	}
	// A longer run has a longer history; the check is near linear in it (sequences prune the
	// search), so its time limit grows with the run.
	checkStart := time.Now()
	v, err := history.Check(r.rec.Operations(), time.Minute+chaosDuration(), r.visualize)
	if err != nil {
		r.t.Fatal(err)
	}
	res.verdict, res.checked = v, time.Since(checkStart).Round(time.Millisecond)
	return res
}

func sameAnswer(a, b history.Output) bool {
	a.Detail, b.Detail = "", ""
	return a == b
}

// proc is one run of the binary.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{}
	stderr bytes.Buffer
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startProc starts the binary on dataDir and waits until it is ready. A process that exits
// instead (a log it refuses to open after a power cut) fails the test.
func startProc(t *testing.T, binary, dataDir, addr string) *proc {
	t.Helper()
	p := &proc{exited: make(chan struct{})}
	p.cmd = exec.Command(binary, "--data-dir", dataDir, "--listen", addr,
		"--termination-message-path", filepath.Join(filepath.Dir(filepath.Dir(dataDir)), "termination-log"),
		"--snapshot-every", "40", "--beans", "1000000", "--milk", "1000000",
		// Remember every key and order: the final pass retries every request of the run, and
		// a retry past the retention horizon runs as a new request (docs/vendingpod-api.md).
		"--keep-keys", "0", "--keep-orders", "0")
	p.cmd.Stderr = &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		select {
		case <-p.exited:
			t.Fatalf("vendingpod exited before ready (code %d): %s", p.cmd.ProcessState.ExitCode(), p.stderr.String())
		default:
		}
		if resp, err := client.Get("http://" + addr + contract.PathReadyz); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
	}
	p.kill()
	t.Fatalf("vendingpod not ready in 20 s: %s", p.stderr.String())
	return nil
}

func (p *proc) kill() {
	if p == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}
