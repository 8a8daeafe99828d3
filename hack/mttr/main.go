// Command mttr measures recovery on a real node as a customer sees it: from a kill to the first
// durable reply (a 200 to a keyed POST /v1/coins, which the pod sends only after fdatasync),
// counting the connection-refused errors, the other connection errors and the 5xx replies the
// customer meets on the way. On the same cluster in the same run it measures:
//
//	a1  a worker crash healed in place: the talk's OutOfCoffeeBeans (the fault armed, coins
//	    inserted, then the order whose brew fails; the kill instant is when it is sent)
//	a2  a worker crash healed in place: SIGKILL of the worker, the one child of the container's
//	    PID 1 (the in-pod supervisor), from the host
//	b   a container kill healed by the operator: SIGKILL of the container through containerd;
//	    PID 1 dies and the operator makes a new pod, with a new IP
//	c   the baseline: the same image in a one-replica StatefulSet (no supervisor in the pod),
//	    SIGKILLed the same way; the kubelet restarts the container in place
//
// a1 and a2 run on one VendingMachine per -backoffs value (the same spec; only
// spec.supervision.backoff.initial differs between them), b on the first of them. For a1 and
// a2 it also checks that the machine's status (restarts) and its RestartedInPlace events count
// every kill, measures how long after the kill each does, and that the pod stayed the same.
// It runs as root: it kills through containerd's socket and reads the worker's pid in /proc.
//
// The customer is a program on the host that talks to the pod IP directly (the host routes to
// the local cluster's pod network): a new connection per attempt, a 2 s timeout, a 5 ms sleep
// after an error and no other pause. It follows the machine as a customer with a directory
// would: status.podName, then that pod's IP, from a watch (the time the new pod takes to
// appear there counts in the recovery), and gives up an attempt in flight when the IP changes.
//
// Every machine's log holds -events events before the first kill (keyed coin inserts through
// the same direct route). Kills come in rounds of consecutive crashes: the next kill as soon as
// the customer has its durable reply; each round starts fresh (a reset of the machine: a new
// pod and a new restart window; a new pod for the StatefulSet, whose CrashLoopBackOff starts
// over). Rounds are interleaved across subjects, so a slow spell of the disk or the CPU falls on
// all of them.
//
//	make local-up && export KUBECONFIG=$PWD/.local-cluster/admin.kubeconfig
//	hack/local-cluster.sh images && make install deploy
//	go run ./hack/mttr -rounds 17 -crashes 3 -backoffs default,10ms -visibility 10s -out /tmp/mttr.json
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"
)

func main() {
	var o options
	flag.IntVar(&o.rounds, "rounds", 17, "rounds of consecutive crashes per subject")
	flag.IntVar(&o.crashes, "crashes", 3, "consecutive crashes per round")
	subjects := flag.String("subjects", "a1,a2,b,c", "subjects to measure (a1, a2, b, c)")
	backoffs := flag.String("backoffs", "default", "spec.supervision.backoff.initial of the machines, one machine each "+
		"(default: the API's default, 250ms)")
	flag.IntVar(&o.events, "events", 100_000, "events in every machine's log before the first kill")
	flag.BoolVar(&o.keyedFill, "keyed-fill", true,
		"fill the logs with keyed coins (their keys are state every start restores) rather than unkeyed ones")
	flag.StringVar(&o.image, "image", "vendingfleet/vendingpod:dev", "vending pod image")
	ctr := flag.String("ctr", "ctr -a .local-cluster/run/containerd.sock", "how to reach the node's containerd")
	flag.DurationVar(&o.timeout, "timeout", 2*time.Second, "the customer's timeout per attempt")
	flag.StringVar(&o.out, "out", "", "write every kill as JSON to this file")
	flag.DurationVar(&o.visibility, "visibility", 30*time.Second,
		"how long after a round of in-place kills to wait for the status and events to count them")
	flag.Parse()
	o.subjects = strings.Split(*subjects, ",")
	o.backoffs = strings.Split(*backoffs, ",")
	o.ctr = strings.Fields(*ctr)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "mttr:", err)
		os.Exit(1)
	}
}

type options struct {
	rounds, crashes, events int
	keyedFill               bool
	subjects, backoffs      []string
	image, out              string
	ctr                     []string
	timeout, visibility     time.Duration
}

func run(ctx context.Context, o options) error {
	cl, err := connect(ctx)
	if err != nil {
		return err
	}
	if err := cl.cleanNamespace(ctx); err != nil {
		return err
	}
	defer func() { // leave nothing behind, also after a failure
		if err := cl.cleanNamespace(context.WithoutCancel(ctx)); err != nil {
			fmt.Fprintln(os.Stderr, "mttr: cleaning up:", err)
		}
	}()

	subjects, machines, err := plan(cl, o)
	if err != nil {
		return err
	}
	cu := newCustomer(cl, o.timeout)
	for _, m := range machines {
		if err := m.create(ctx); err != nil {
			return err
		}
	}
	for _, m := range machines {
		if err := m.waitServing(ctx, cu); err != nil {
			return err
		}
		start := time.Now()
		n, err := cu.fill(ctx, m, o.events, o.keyedFill)
		if err != nil {
			return fmt.Errorf("%s: filling the log: %w", m.name, err)
		}
		fmt.Printf("%s: the log holds %d events (filled in %v)\n", m.name, n, time.Since(start).Round(time.Millisecond))
	}

	var res results
	for r := range o.rounds {
		for _, s := range subjects {
			if err := s.round(ctx, cu, r, o.crashes, &res); err != nil {
				_ = writeJSON(o.out, res)
				return fmt.Errorf("%s round %d: %w", s.name, r+1, err)
			}
		}
	}
	if err := writeJSON(o.out, res); err != nil {
		return err
	}
	report(os.Stdout, o, subjects, res)
	return nil
}

// plan makes the machines and the subjects the flags ask for.
func plan(cl *cluster, o options) ([]*subject, []*machine, error) {
	var subjects []*subject
	var machines []*machine
	vms := map[string]*machine{}
	for _, key := range o.subjects {
		switch key {
		case "a1", "a2", "b":
			backoffs := o.backoffs
			if key == "b" { // today's path, at the first backoff: the others are for the in-place restarts
				backoffs = backoffs[:1]
			}
			for _, b := range backoffs {
				m := vms[b]
				if m == nil {
					initial, err := parseBackoff(b)
					if err != nil {
						return nil, nil, err
					}
					m = cl.vendingMachine("vm-"+strings.ReplaceAll(b, ".", "-"), o.image, initial)
					vms[b] = m
					machines = append(machines, m)
				}
				subjects = append(subjects, newSubject(key, b, m, o.ctr, o.visibility))
			}
		case "c":
			m := cl.statefulSet("sts", o.image)
			machines = append(machines, m)
			subjects = append(subjects, newSubject(key, "", m, o.ctr, o.visibility))
		default:
			return nil, nil, fmt.Errorf("unknown subject %q (a1, a2, b, c)", key)
		}
	}
	if len(subjects) == 0 {
		return nil, nil, errors.New("no subject")
	}
	return subjects, machines, nil
}

// parseBackoff reads a -backoffs value: "default" leaves backoff.initial to the API's default.
func parseBackoff(s string) (*time.Duration, error) {
	if s == "default" {
		return nil, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return nil, fmt.Errorf("-backoffs: %w", err)
	}
	return &d, nil
}
