package vendingpod

import (
	"errors"
	"fmt"
	"math/rand"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/vendingfleet/vending-operator/internal/eventlog"
	"github.com/vendingfleet/vending-operator/internal/eventlog/crashfs"
	"github.com/vendingfleet/vending-operator/internal/vending"
)

// The vending writer through simulated power cuts: keyed customers insert coins and order
// while crashfs cuts the power at a random operation; the machine is replayed from the crashed
// image and every acknowledged answer must still be the machine's answer to a retry with the
// same key (not lost, not done twice). Then the machine serves again and is cut again.

const simDir = "/pvc/vending"

// simProcess is one life of the vending pod on a file system: the writer, its acknowledger and
// its snapshotter, with a fail that ends the goroutine calling it (the process "exits").
type simProcess struct {
	m       *vending.Machine
	mailbox chan command
	dead    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
	w       *writer
}

func startSim(fs eventlog.FS, cfg vending.Config) (*simProcess, error) {
	m := vending.New(cfg)
	l, stats, err := eventlog.Open(simDir, eventlog.Options{FS: fs, SegmentSize: 1024}, replayer{m})
	if err != nil {
		return nil, err
	}
	p := &simProcess{m: m, mailbox: make(chan command), dead: make(chan struct{})}
	snapshots := make(chan snapshotJob, 1)
	w := &writer{m: m, log: l, now: time.Now, acks: make(chan ack, 8), every: 5, lastSnap: stats.SnapshotSeq,
		fail: func(Failure) {
			p.once.Do(func() { close(p.dead) })
			runtime.Goexit()
		},
		snapshot: func(seq uint64, data []byte) {
			select {
			case snapshots <- snapshotJob{seq, data}:
			default:
			}
		},
	}
	p.w = w
	p.wg.Add(3)
	go func() {
		defer p.wg.Done()
		for j := range snapshots {
			_ = l.SaveSnapshot(j.seq, j.data)
		}
	}()
	go func() { defer p.wg.Done(); w.acknowledger() }()
	go func() {
		defer p.wg.Done()
		defer close(snapshots)
		defer close(w.acks)
		if err := w.recover(); err != nil {
			p.once.Do(func() { close(p.dead) })
			return
		}
		w.run(p.mailbox)
	}()
	return p, nil
}

// stop ends the process's goroutines. A dead process's writer may be blocked handing an
// answer to an acknowledger that already exited: drain those (nobody is told anything).
func (p *simProcess) stop() {
	select {
	case <-p.dead:
		go func() {
			for range p.w.acks {
			}
		}()
	default:
	}
	close(p.mailbox)
	p.wg.Wait()
}

// do sends a command and waits for its answer, or for the process to die (no answer: an
// unknown outcome, as a customer's timeout).
func (p *simProcess) do(c command) (reply, bool) {
	c.reply = make(chan reply, 1)
	select {
	case p.mailbox <- c:
	case <-p.dead:
		return reply{}, false
	}
	select {
	case r := <-c.reply:
		return r, true
	case <-p.dead:
		return reply{}, false
	}
}

// simAck is an acknowledged answer a retry with the same key must get again.
type simAck struct {
	kind     commandKind
	count    int64
	beverage string
	inserted int64  // coins
	orderID  string // order placed
	reason   string // order refused
}

type simVerdict struct {
	cuts, during, acked, lost, twice, refused int
	failures                                  []string
}

func (v *simVerdict) fail(format string, args ...any) {
	v.failures = append(v.failures, fmt.Sprintf(format, args...))
}

// customers run keyed coin inserts and orders on p; acknowledged answers go into acks.
func customers(p *simProcess, rng *rand.Rand, round int, acks map[string]simAck, mu *sync.Mutex) {
	var wg sync.WaitGroup
	for c := 0; c < 3; c++ {
		seed := rng.Int63()
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewSource(seed))
			for i := 0; i < 8; i++ {
				key := fmt.Sprintf("r%d-c%d-%d", round, c, i)
				cmd := command{kind: cmdCoins, count: int64(1 + r.Intn(3)), key: key}
				if i%4 == 3 {
					cmd = command{kind: cmdOrder, beverage: []string{"Espresso", "BlackCoffee"}[r.Intn(2)], key: key}
				}
				rep, ok := p.do(cmd)
				if !ok {
					return
				}
				a := simAck{kind: cmd.kind, count: cmd.count, beverage: cmd.beverage, inserted: rep.inserted}
				var rej *vending.Rejection
				switch {
				case cmd.kind == cmdOrder && rep.order != nil:
					a.orderID = rep.order.ID
				case cmd.kind == cmdOrder && errors.As(rep.err, &rej):
					a.reason = rej.Reason
				case rep.err != nil:
					continue
				}
				mu.Lock()
				acks[key] = a
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// checkAcks asks the replayed machine what a retry of every acknowledged request would get.
func checkAcks(v *simVerdict, m *vending.Machine, acks map[string]simAck, where string) {
	for key, a := range acks {
		switch a.kind {
		case cmdCoins:
			e, res, err := m.InsertCoins(a.count, key)
			switch {
			case e != nil:
				v.lost++
				v.fail("%s: coins %s were acknowledged but a retry would insert them again", where, key)
			case err != nil || res == nil || res.Inserted != a.inserted:
				v.twice++
				v.fail("%s: coins %s: retry gets %+v %v, first answer inserted %d", where, key, res, err, a.inserted)
			}
		case cmdOrder:
			e, res, err := m.Select(a.beverage, key)
			var rej *vending.Rejection
			switch {
			case e != nil:
				v.lost++
				v.fail("%s: order %s was answered but a retry would run it again", where, key)
			case a.orderID != "" && (res == nil || res.OrderID != a.orderID):
				v.twice++
				v.fail("%s: order %s: retry gets %+v %v, first answer %s", where, key, res, err, a.orderID)
			case a.reason != "" && (!errors.As(err, &rej) || rej.Reason != a.reason):
				v.twice++
				v.fail("%s: refused order %s: retry gets %v, first answer %s", where, key, err, a.reason)
			}
		}
	}
}

// TestVendingWriterPowerCuts: keyed customers on the real writer, power cut at random points,
// three cuts per machine; every acknowledged coin and order survives each.
func TestVendingWriterPowerCuts(t *testing.T) {
	const machines, rounds = 500, 3
	v := &simVerdict{}
	for seed := int64(0); seed < machines && len(v.failures) == 0; seed++ {
		rng := rand.New(rand.NewSource(seed))
		fs := crashfs.New(seed)
		acks := map[string]simAck{}
		var mu sync.Mutex
		where := fmt.Sprintf("machine %d", seed)
		for round := 0; round < rounds; round++ {
			if round == 0 {
				fs.CutAt(fs.OpCount() + 1 + rng.Intn(150))
			}
			p, err := startSim(fs, vending.DefaultConfig())
			switch {
			case err == nil:
				customers(p, rng, round, acks, &mu)
				p.stop()
				if fs.PowerCut() {
					v.during++
				}
			case !fs.PowerCut():
				t.Fatalf("%s: Open: %v", where, err)
			}
			c := crashfs.RandomCrash(rng.Int63())
			where = fmt.Sprintf("%s, cut at op %d, crash %s", where, fs.OpCount(), c)
			fs = fs.Crash(c)
			// The next life: replay and check before anything new is done.
			m := vending.New(vending.DefaultConfig())
			l, _, err := eventlog.Open(simDir, eventlog.Options{FS: fs, SegmentSize: 1024}, replayer{m})
			v.cuts++
			if err != nil {
				var ce *eventlog.CorruptError
				if errors.As(err, &ce) {
					v.refused++
				}
				v.fail("%s: Open: %v", where, err)
				break
			}
			v.acked += len(acks)
			checkAcks(v, m, acks, where)
			_ = l.Close()
			fs.CutAt(fs.OpCount() + 1 + rng.Intn(150))
		}
	}
	t.Logf("VERDICT vending writer power cuts: cuts=%d (while serving: %d) acknowledged-checked=%d lost=%d answered-differently=%d refused-as-corrupt=%d",
		v.cuts, v.during, v.acked, v.lost, v.twice, v.refused)
	for i, f := range v.failures {
		if i == 5 {
			break
		}
		t.Error(f)
	}
}
