// Command scalebench measures the operator at scale on a real kube-apiserver and etcd (envtest,
// from bin/k8s): it runs the manager binary as its own process, creates many VendingMachines,
// plays the kubelet for their pods (each new pod is reported Running and Ready, with an IP on
// which this tool answers GET /v1/state as a vending pod would), watches a steady state, then
// fails many pods at once. For each phase it reports how long it took to settle, the manager's
// reconciles, its API writes by verb and resource (from the API server's audit log, user
// "manager"), its workqueue latency, its requests to pods, heap and goroutines; and the
// manager's peak RSS.
//
//	make build controlplane && go run ./hack/scalebench -machines 1000 -failures 100
//	go run ./hack/scalebench -machines 100 -failures 10
//	go run ./hack/scalebench -machines 10000 -failures 1000 -settle-timeout 20m
//	go run ./hack/scalebench -fleet -fleet-size 1000 -machines 1000 -failures 100   # 100 escalate at once
//
// The baselines, measured in the same run on the same API server, are the floor an operator
// cannot beat, written directly by this process with 16 concurrent writers (-baseline-workers): for
// settling, each machine (the user's write), its claim, Service and pod, and one status write
// that says it is Ready; for the failures, what a restart needs at least (delete the failed
// pod, create its successor, record it: one status patch).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
)

const (
	machineLabel = "vending.resilience.dev/machine"
	fleetNS      = "fleet"   // the machines under test
	container    = "vending" // the vending pod's container
	image        = "bench/vendingpod:dev"
	// podIP is every pod's IP: this tool's state server answers there for all of them.
	podIP = "127.0.0.1"
)

type options struct {
	machines, failures, workers, concurrency, fleetSize int
	baselineWorkers                                     int
	memLimit                                            string
	manager, assets, crds                               string
	qps                                                 float64
	burst                                               int
	timeout, steady                                     time.Duration
	fleet                                               bool
}

func main() {
	var o options
	flag.IntVar(&o.machines, "machines", 1000, "VendingMachines to create")
	flag.IntVar(&o.failures, "failures", 100, "pods failed at once after the machines settle")
	flag.IntVar(&o.workers, "workers", 16, "this tool's own concurrent API clients (creating, playing the kubelet)")
	flag.StringVar(&o.memLimit, "manager-gomemlimit", "", "GOMEMLIMIT of the manager (its Deployment sets 90 % of its container's limit)")
	flag.IntVar(&o.baselineWorkers, "baseline-workers", 16, "concurrent writers of the baselines: enough to keep the API server busy")
	flag.IntVar(&o.concurrency, "max-concurrent-reconciles", 0, "passed to the manager (0: the manager's default)")
	flag.Float64Var(&o.qps, "kube-api-qps", 0, "passed to the manager (0: the manager's default)")
	flag.IntVar(&o.burst, "kube-api-burst", 0, "passed to the manager (0: the manager's default)")
	flag.BoolVar(&o.fleet, "fleet", false, "create the machines through VendingFleets of -fleet-size, and make the failures "+
		"escalations (a reason the decider does not restart) that the fleets reset")
	flag.IntVar(&o.fleetSize, "fleet-size", 1000, "machines per fleet, with -fleet")
	flag.DurationVar(&o.timeout, "settle-timeout", 5*time.Minute, "how long a phase may take to settle")
	flag.DurationVar(&o.steady, "steady", time.Minute, "how long to watch the settled machines (no failures) for writes and pod requests")
	flag.StringVar(&o.manager, "manager", "bin/manager", "manager binary (make build)")
	flag.StringVar(&o.assets, "assets", "bin/k8s/v1.37.2", "control plane binaries (make controlplane)")
	flag.StringVar(&o.crds, "crds", "config/crd/bases", "CRD directory")
	flag.Parse()
	if o.fleet && o.fleetSize <= 0 {
		o.fleetSize = o.machines
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "scalebench:", err)
		os.Exit(1)
	}
}

// auditPolicy records, at Metadata level, every write the manager (user "manager") sends, and
// nothing else: the writes by verb and resource are counted from it.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  users: ["manager"]
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: None
`

func run(o options) error {
	scheme := k8sruntime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(vendingv1alpha1.AddToScheme(scheme))

	dir, err := os.MkdirTemp("", "scalebench-")
	if err != nil {
		return err
	}
	audit := &auditLog{path: filepath.Join(dir, "audit.log")}
	if err := os.WriteFile(filepath.Join(dir, "audit-policy.yaml"), []byte(auditPolicy), 0o600); err != nil {
		return err
	}
	env := &envtest.Environment{CRDDirectoryPaths: []string{o.crds}, ErrorIfCRDPathMissing: true, BinaryAssetsDirectory: o.assets}
	// envtest's default service range (a /24) holds 254 services; thousands of machines need more.
	env.ControlPlane.GetAPIServer().Configure().Set("service-cluster-ip-range", "10.96.0.0/12").
		Set("audit-policy-file", filepath.Join(dir, "audit-policy.yaml")).Set("audit-log-path", audit.path).
		Set("audit-log-maxsize", "0") // one file, never rotated under the reader
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("starting the control plane from %s (make controlplane): %w", o.assets, err)
	}
	defer func() { _ = env.Stop() }()
	cfg.QPS, cfg.Burst = 2000, 4000 // this tool must not be the bottleneck it measures
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ctrllog.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)))
	pods, err := startStateServer()
	if err != nil {
		return err
	}

	fmt.Printf("machine: %d CPUs, %s/%s, %s\n", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
	fmt.Printf("machines=%d failures=%d fleet=%v (size %d) manager flags: concurrency=%d qps=%v burst=%d (0: default)\n\n",
		o.machines, o.failures, o.fleet, o.fleetSize, o.concurrency, o.qps, o.burst)

	baseline, err := settleBaseline(ctx, c, o)
	if err != nil {
		return err
	}

	mgr, err := startManager(ctx, env, dir, o)
	if err != nil {
		return err
	}
	defer mgr.stop()

	// What this tool watches it reads from an informer cache, so its polling costs the API
	// server nothing.
	informers, err := cache.New(cfg, cache.Options{Scheme: scheme, DefaultNamespaces: map[string]cache.Config{fleetNS: {}},
		DefaultTransform: cache.TransformStripManagedFields()})
	if err != nil {
		return err
	}
	if _, err := informers.GetInformer(ctx, &vendingv1alpha1.VendingMachine{}); err != nil {
		return err
	}
	kubelet, err := startKubelet(ctx, informers, c, o.workers)
	if err != nil {
		return err
	}
	go func() { _ = informers.Start(ctx) }()
	informers.WaitForCacheSync(ctx)

	// Phase 1: create the machines; wait until each has its children and is Ready.
	p := mgr.phase(audit, pods)
	create := func(i int) error { return c.Create(ctx, machine(o, i)) }
	n := o.machines
	if o.fleet {
		n = (o.machines + o.fleetSize - 1) / o.fleetSize
		create = func(i int) error { return c.Create(ctx, fleetOf(o, i)) }
	}
	if err := parallel(n, o.workers, create); err != nil {
		return fmt.Errorf("creating machines: %w", err)
	}
	created := time.Since(p.start)
	if err := waitFor(ctx, informers, o.machines, o.timeout, func(vm *vendingv1alpha1.VendingMachine) bool {
		return settled(vm, 0)
	}); err != nil {
		return err
	}
	if err := p.report("create", o.machines, created); err != nil {
		return err
	}
	if live, path, err := mgr.live("settled"); err == nil {
		fmt.Printf("  live heap after a collection: %.0f MiB (profile: %s)\n", live/(1<<20), path)
	}
	fmt.Printf("  settle: %.2f× the baseline\n", p.took.Seconds()/baseline.Seconds())

	// Phase 2: the steady state: nothing fails; whatever the manager writes or asks pods now, it
	// would do all day.
	if err := watchSteady(ctx, o, mgr, audit, pods); err != nil {
		return err
	}

	failBaseline, failWrites, err := failureBaselines(ctx, c, o, o.baselineWorkers)
	if err != nil {
		return err
	}
	p, err = failPods(ctx, o, c, mgr, audit, pods, kubelet, informers)
	if err != nil {
		return err
	}
	fmt.Printf("  recovery: %.2f× the least writes' baseline, %.2f× the baseline of the operator's writes\n",
		p.took.Seconds()/failBaseline.Seconds(), p.took.Seconds()/failWrites.Seconds())

	peak, rss := mgr.memory()
	fmt.Printf("\nmanager memory: peak RSS (VmHWM) %d MiB, RSS now %d MiB\n", peak>>10, rss>>10)
	fmt.Printf("reconcile errors in all: %.0f\n", p.after["controller_runtime_reconcile_errors_total"])
	return nil
}

// settleBaseline writes the settling baseline straight to the API server (writeDirectly for
// each machine), then removes what the manager would otherwise see, and returns how long the
// writes took.
func settleBaseline(ctx context.Context, c client.Client, o options) (time.Duration, error) {
	for _, ns := range []string{"baseline", fleetNS} {
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			return 0, err
		}
	}
	workers := o.baselineWorkers
	start := time.Now()
	if err := parallel(o.machines, workers, func(i int) error { return writeDirectly(ctx, c, "baseline", i) }); err != nil {
		return 0, fmt.Errorf("baseline: %w", err)
	}
	baseline := time.Since(start)
	fmt.Printf("baseline: %d×(machine+claim+service+pod+status) written directly with %d workers: %v (%.0f writes/s)\n",
		o.machines, workers, baseline.Round(time.Millisecond), float64(5*o.machines)/baseline.Seconds())
	// The baseline's machines would be the manager's to reconcile; its Services go too, so that
	// the API server holds as many as when the baseline ran.
	if err := parallel(o.machines, o.workers, func(i int) error {
		meta := metav1.ObjectMeta{Namespace: "baseline", Name: fmt.Sprintf("b-%d", i)}
		if err := c.Delete(ctx, &vendingv1alpha1.VendingMachine{ObjectMeta: meta}); err != nil {
			return err
		}
		return c.Delete(ctx, &corev1.Service{ObjectMeta: meta})
	}); err != nil {
		return 0, fmt.Errorf("deleting the baseline's machines and services: %w", err)
	}
	return baseline, nil
}

// watchSteady watches the settled machines for o.steady and reports what the manager wrote and
// asked pods meanwhile.
func watchSteady(ctx context.Context, o options, mgr *managerProcess, audit *auditLog, pods *stateServer) error {
	p := mgr.phase(audit, pods)
	select {
	case <-time.After(o.steady):
	case <-ctx.Done():
	}
	if err := p.report("steady", o.machines, 0); err != nil {
		return err
	}
	fmt.Printf("  steady: %.2f writes per machine per hour; %.2f requests to pods per second (%.3f per 1,000 machines)\n",
		float64(p.writes.total())/float64(o.machines)*time.Hour.Seconds()/p.took.Seconds(),
		float64(p.podRequests)/p.took.Seconds(), float64(p.podRequests)/p.took.Seconds()*1000/float64(o.machines))
	return nil
}

// failureBaselines writes, directly for as many pods as will fail: what one restart needs at
// least (delete the failed pod, create its successor, patch a status), and the writes this
// operator's restart makes (also its finalizer's release, a second status patch and the
// Failed, Restarted and Recovered events). It returns how long each took.
func failureBaselines(ctx context.Context, c client.Client, o options, workers int) (least, ours time.Duration, err error) {
	start := time.Now()
	if err := parallel(o.failures, workers, func(i int) error { return restartDirectly(ctx, c, "baseline", i, false) }); err != nil {
		return 0, 0, fmt.Errorf("failure baseline: %w", err)
	}
	failBaseline := time.Since(start)
	fmt.Printf("\nbaseline: %d×(delete pod+create pod+patch status) written directly with %d workers: %v\n",
		o.failures, workers, failBaseline.Round(time.Millisecond))
	start = time.Now()
	if err := parallel(o.failures, workers, func(i int) error {
		return restartDirectly(ctx, c, "baseline", o.failures+i, true)
	}); err != nil {
		return 0, 0, fmt.Errorf("failure baseline: %w", err)
	}
	failWrites := time.Since(start)
	fmt.Printf("baseline: %d×(the operator's 8 writes of a restart: patch pod, delete pod, create pod, 2 status patches, 3 events) "+
		"written directly with %d workers: %v\n", o.failures, workers, failWrites.Round(time.Millisecond))

	return failBaseline, failWrites, nil
}

// failPods fails pods at once and waits for every machine to be back. Alone, the machines restart
// the talk's OutOfCoffeeBeans; in a fleet, they escalate a reason their decider does not know and
// the fleet resets them.
func failPods(ctx context.Context, o options, c client.Client, mgr *managerProcess, audit *auditLog, pods *stateServer,
	kubelet *kubelet, informers cache.Cache) (*phase, error) {
	p := mgr.phase(audit, pods)
	reason, exit := contract.ReasonOutOfCoffeeBeans, int32(contract.ExitOutOfCoffeeBeans)
	if o.fleet {
		reason, exit = "Panic", 2
	}
	failed := map[string]bool{}
	for i := range o.failures {
		failed[machineName(o, i)] = true
	}
	if err := parallel(o.failures, o.workers, func(i int) error { return kubelet.fail(ctx, c, machineName(o, i), reason, exit) }); err != nil {
		return nil, fmt.Errorf("failing pods: %w", err)
	}
	input := time.Since(p.start)
	if err := waitFor(ctx, informers, o.machines, o.timeout, func(vm *vendingv1alpha1.VendingMachine) bool {
		want := int32(0)
		if failed[vm.Name] {
			want = 1
		}
		if o.fleet { // escalated, and reset by its fleet: no restart of its own
			return settled(vm, 0) && vm.Status.Resets == want
		}
		return settled(vm, want)
	}); err != nil {
		return nil, err
	}
	return p, p.report("fail", o.failures, input)
}

// phase is one measured phase: the manager's counters, the audit log and the pods' requests
// before it, and how it went.
type phase struct {
	mgr           *managerProcess
	audit         *auditLog
	pods          *stateServer
	start         time.Time
	before, after map[string]float64
	took          time.Duration
	writes        writes
	podRequests   int64
	podsBefore    int64
}

func (m *managerProcess) phase(audit *auditLog, pods *stateServer) *phase {
	before, err := m.scrape()
	if err != nil {
		fmt.Fprintln(os.Stderr, "scrape:", err)
	}
	_, _ = audit.read() // what came before is not this phase's
	return &phase{mgr: m, audit: audit, pods: pods, start: time.Now(), before: before, podsBefore: pods.requests.Load()}
}

// report prints the phase: how long the input took to write, how long until settled, and what
// the manager did meanwhile.
func (p *phase) report(name string, n int, input time.Duration) error {
	p.took = time.Since(p.start)
	p.podRequests = p.pods.requests.Load() - p.podsBefore
	var err error
	if p.after, err = p.mgr.scrape(); err != nil {
		return err
	}
	time.Sleep(time.Second) // the audit log's last lines
	if p.writes, err = p.audit.read(); err != nil {
		return err
	}
	d := func(k string) float64 { return p.after[k] - p.before[k] }
	reconciles := d("controller_runtime_reconcile_total")
	fmt.Printf("%s: %d machines: input written in %v, settled in %v; %.0f reconciles (%.0f/s), %.0f errors\n",
		name, n, input.Round(time.Millisecond), p.took.Round(time.Millisecond), reconciles,
		reconciles/p.took.Seconds(), d("controller_runtime_reconcile_errors_total"))
	fmt.Printf("  manager API writes: %d (%.2f per machine): %s\n", p.writes.total(), float64(p.writes.total())/float64(n), p.writes)
	if q := d("workqueue_count"); q > 0 {
		fmt.Printf("  workqueue: %.0f adds waited %.1f ms on average, p99 ≤ %s\n", q, d("workqueue_sum")/q*1000,
			quantile(p.before, p.after, 0.99))
	}
	fmt.Printf("  requests to pods: %d (%.2f/s); heap in use %.0f MiB, goroutines %.0f (at the end)\n", p.podRequests,
		float64(p.podRequests)/p.took.Seconds(), p.after["go_memstats_heap_inuse_bytes"]/(1<<20), p.after["go_goroutines"])
	return nil
}

// quantile is the upper bound of the workqueue latency bucket holding quantile q of the
// phase's adds.
func quantile(before, after map[string]float64, q float64) string {
	var les []float64
	for k := range after {
		if le, ok := strings.CutPrefix(k, "workqueue_le_"); ok {
			v, _ := strconv.ParseFloat(le, 64)
			les = append(les, v)
		}
	}
	slices.Sort(les)
	total := after["workqueue_count"] - before["workqueue_count"]
	for _, le := range les {
		k := "workqueue_le_" + strconv.FormatFloat(le, 'g', -1, 64)
		if after[k]-before[k] >= q*total {
			return (time.Duration(le * float64(time.Second))).String()
		}
	}
	return "+Inf"
}

// writes counts API writes by verb and resource.
type writes map[string]int

func (w writes) total() int {
	n := 0
	for _, v := range w {
		n += v
	}
	return n
}

func (w writes) String() string {
	keys := slices.Sorted(maps.Keys(w))
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%d %s", w[k], k)
	}
	if len(keys) == 0 {
		return "none"
	}
	return b.String()
}

// auditLog reads the API server's audit log from where it last stopped.
type auditLog struct {
	path   string
	offset int64
}

func (a *auditLog) read() (writes, error) {
	f, err := os.Open(a.path)
	if os.IsNotExist(err) {
		return writes{}, nil
	} else if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	if _, err := f.Seek(a.offset, io.SeekStart); err != nil {
		return nil, err
	}
	out := writes{}
	r := bufio.NewReaderSize(f, 1<<20)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil { // a partial last line is read next time
			break
		}
		a.offset += int64(len(line))
		var ev struct {
			Verb      string `json:"verb"`
			ObjectRef struct {
				Resource    string `json:"resource"`
				Subresource string `json:"subresource"`
			} `json:"objectRef"`
		}
		if json.Unmarshal(line, &ev) != nil {
			continue
		}
		what := ev.ObjectRef.Resource
		if ev.ObjectRef.Subresource != "" {
			what += "/" + ev.ObjectRef.Subresource
		}
		out[strings.ToUpper(ev.Verb)+" "+what]++
	}
	return out, nil
}

// stateServer answers GET /v1/state as a settled vending pod does, for every pod (they all have
// this tool's address as IP), and counts the requests.
type stateServer struct{ requests atomic.Int64 }

func startStateServer() (*stateServer, error) {
	s := &stateServer{}
	ln, err := net.Listen("tcp", net.JoinHostPort(podIP, strconv.Itoa(contract.Port)))
	if err != nil {
		return nil, fmt.Errorf("the pods' state server on %s:%d: %w", podIP, contract.Port, err)
	}
	body, _ := json.Marshal(contract.State{Beans: 100, Milk: 50, Menu: map[string]int{"Espresso": 2}, Dispensed: map[string]int{}})
	go func() {
		_ = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.requests.Add(1)
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(body)
		}))
	}()
	return s, nil
}

// machineName is machine i's name: m-<i>, or <fleet>-<n> in fleets f0, f1, ...
func machineName(o options, i int) string {
	if o.fleet {
		return fmt.Sprintf("f%d-%d", i/o.fleetSize, i%o.fleetSize)
	}
	return fmt.Sprintf("m-%d", i)
}

func machine(o options, i int) *vendingv1alpha1.VendingMachine {
	return &vendingv1alpha1.VendingMachine{ObjectMeta: metav1.ObjectMeta{Namespace: fleetNS, Name: machineName(o, i)}}
}

// fleetOf is fleet i (f<i>), whose machines are named as machineName names them. Its intensity
// absorbs every escalation the benchmark makes.
func fleetOf(o options, i int) *vendingv1alpha1.VendingFleet {
	f := &vendingv1alpha1.VendingFleet{ObjectMeta: metav1.ObjectMeta{Namespace: fleetNS, Name: fmt.Sprintf("f%d", i)}}
	f.Spec.Replicas = ptr.To(int32(min(o.fleetSize, o.machines-i*o.fleetSize)))
	f.Spec.Intensity.MaxEscalations = ptr.To(int32(max(100, o.failures)))
	return f
}

// settled: the status describes the current generation, the machine is Ready and has
// restarted as often as it failed.
func settled(vm *vendingv1alpha1.VendingMachine, restarts int32) bool {
	if vm.Status.ObservedGeneration != vm.Generation || vm.Status.Restarts != restarts || vm.Status.PodName == "" {
		return false
	}
	for _, c := range vm.Status.Conditions {
		if c.Type == vendingv1alpha1.ConditionReady {
			return c.Status == metav1.ConditionTrue
		}
	}
	return false
}

func waitFor(ctx context.Context, c client.Reader, n int, limit time.Duration, ok func(*vendingv1alpha1.VendingMachine) bool) error {
	deadline := time.Now().Add(limit)
	for {
		list := &vendingv1alpha1.VendingMachineList{}
		if err := c.List(ctx, list, client.InNamespace(fleetNS), client.UnsafeDisableDeepCopy); err != nil {
			return err
		}
		done, example := 0, ""
		for i := range list.Items {
			if ok(&list.Items[i]) {
				done++
			} else if example == "" {
				b, _ := json.Marshal(list.Items[i].Status)
				example = list.Items[i].Name + ": " + string(b)
			}
		}
		if done == n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d machines settled after %v; one that did not: %s", done, n, limit, example)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func parallel(n, workers int, f func(i int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				if err := f(i); err != nil {
					once.Do(func() { first = err })
					return
				}
			}
		})
	}
	wg.Wait()
	return first
}

// writeDirectly writes what settling machine i needs at least: the machine (the user's write),
// its claim, Service and pod, and one status that says it is Ready.
func writeDirectly(ctx context.Context, c client.Client, ns string, i int) error {
	name := fmt.Sprintf("b-%d", i)
	vm := &vendingv1alpha1.VendingMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	objs := []client.Object{vm,
		&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: map[string]string{"b": name},
				Ports: []corev1.ServicePort{{Port: 8080}}}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: container, Image: image}}}},
	}
	for _, obj := range objs {
		if err := c.Create(ctx, obj); err != nil {
			return err
		}
	}
	base := vm.DeepCopy()
	vm.Status.ObservedGeneration, vm.Status.Phase, vm.Status.PodName = vm.Generation, vendingv1alpha1.PhaseRunning, name
	vm.Status.Conditions = []metav1.Condition{{Type: vendingv1alpha1.ConditionReady, Status: metav1.ConditionTrue,
		Reason: "PodReady", Message: "pod " + name + " is ready", LastTransitionTime: metav1.Now(), ObservedGeneration: vm.Generation}}
	return c.Status().Patch(ctx, vm, client.MergeFrom(base))
}

// restartDirectly writes what one restart of pod b-i needs at least: the failed pod deleted, its
// successor created, a status patched (here the new pod's, as a machine's would be); asOperator:
// the writes this operator makes for it (a patch of the failed pod, its finalizer's release,
// before the delete; a second status patch; three events).
func restartDirectly(ctx context.Context, c client.Client, ns string, i int, asOperator bool) error {
	old := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("b-%d", i)}}
	if asOperator {
		patch := client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"annotations":{"released":"true"}}}`))
		if err := c.Patch(ctx, old, patch); err != nil {
			return err
		}
	}
	if err := c.Delete(ctx, old, client.GracePeriodSeconds(0)); err != nil {
		return err
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("b-%d-1", i)},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: container, Image: image}}}}
	if err := c.Create(ctx, pod); err != nil {
		return err
	}
	patches := 1
	if asOperator {
		patches = 2
		for _, reason := range []string{"Failed", "Restarted", "Recovered"} {
			ev := &eventsv1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: "b-"},
				EventTime: metav1.NowMicro(), ReportingController: "scalebench", ReportingInstance: "scalebench",
				Action: reason, Reason: reason, Type: corev1.EventTypeNormal, Note: "pod " + pod.Name,
				Regarding: corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod.Name, APIVersion: "v1"}}
			if err := c.Create(ctx, ev); err != nil {
				return err
			}
		}
	}
	for n := range patches {
		base := pod.DeepCopy()
		pod.Status.Phase = []corev1.PodPhase{corev1.PodPending, corev1.PodRunning}[n]
		if err := c.Status().Patch(ctx, pod, client.MergeFrom(base)); err != nil {
			return err
		}
	}
	return nil
}

// kubelet plays the kubelet for the machines' pods: a new pod is reported Running and Ready.
type kubelet struct {
	mu   sync.Mutex
	pods map[string]string // machine → its current pod
}

func startKubelet(ctx context.Context, informers cache.Cache, c client.Client, workers int) (*kubelet, error) {
	inf, err := informers.GetInformer(ctx, &corev1.Pod{})
	if err != nil {
		return nil, err
	}
	k := &kubelet{pods: map[string]string{}}
	queue := make(chan *corev1.Pod, 100000)
	_, err = inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{AddFunc: func(obj any) {
		if pod, ok := obj.(*corev1.Pod); ok && len(pod.Status.ContainerStatuses) == 0 { // new: not started yet
			queue <- pod
		}
	}})
	if err != nil {
		return nil, err
	}
	for range workers {
		go func() {
			for pod := range queue {
				pod = pod.DeepCopy()
				now := metav1.Now()
				pod.Status = corev1.PodStatus{Phase: corev1.PodRunning,
					PodIP: podIP, PodIPs: []corev1.PodIP{{IP: podIP}},
					Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}},
					ContainerStatuses: []corev1.ContainerStatus{{Name: container, Ready: true, Image: pod.Spec.Containers[0].Image,
						State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}}}}
				if err := c.Status().Update(ctx, pod); err != nil && ctx.Err() == nil {
					fmt.Fprintln(os.Stderr, "kubelet:", pod.Name, err)
				}
				k.mu.Lock()
				k.pods[pod.Labels[machineLabel]] = pod.Name
				k.mu.Unlock()
			}
		}()
	}
	return k, nil
}

// fail reports the machine's current pod terminated with a reason, as a kubelet would.
func (k *kubelet) fail(ctx context.Context, c client.Client, machine, reason string, exit int32) error {
	k.mu.Lock()
	name := k.pods[machine]
	k.mu.Unlock()
	pod := &corev1.Pod{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: fleetNS, Name: name}, pod); err != nil {
		return err
	}
	msg, _ := json.Marshal(contract.TerminationMessage{Reason: reason,
		ExitCode: int(exit), Message: reason, PendingOrder: "o-1", Time: time.Now()})
	now := metav1.Now()
	pod.Status.Phase = corev1.PodFailed
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse, LastTransitionTime: now}}
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: container, Image: pod.Spec.Containers[0].Image,
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: exit, Message: string(msg), Reason: "Error", StartedAt: now, FinishedAt: now}}}}
	return c.Status().Update(ctx, pod)
}

// managerProcess is the operator, run as a user runs it: its own binary, its own process.
type managerProcess struct {
	cmd     *exec.Cmd
	metrics string
	pprof   string // the manager's pprof endpoints
	dir     string
	done    chan struct{}
}

func startManager(ctx context.Context, env *envtest.Environment, dir string, o options) (*managerProcess, error) {
	user, err := env.ControlPlane.AddUser(envtest.User{Name: "manager", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return nil, err
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(path, kubeconfig, 0o600); err != nil {
		return nil, err
	}
	metricsAddr, probeAddr, pprofAddr := freeAddr(), freeAddr(), freeAddr()
	args := []string{"--kubeconfig", path,
		"--metrics-bind-address", metricsAddr, "--metrics-secure=false", "--health-probe-bind-address", probeAddr,
		"--vending-image", image, "--zap-log-level", "error", "--pprof-bind-address", pprofAddr}
	if o.concurrency > 0 {
		args = append(args, "--max-concurrent-reconciles", strconv.Itoa(o.concurrency))
	}
	if o.qps > 0 {
		args = append(args, "--kube-api-qps", fmt.Sprint(o.qps))
	}
	if o.burst > 0 {
		args = append(args, "--kube-api-burst", strconv.Itoa(o.burst))
	}
	cmd := exec.CommandContext(ctx, o.manager, args...)
	if o.memLimit != "" {
		// As in its Deployment, where the manager sets 90 % of its container's limit.
		cmd.Env = append(os.Environ(), "GOMEMLIMIT="+o.memLimit)
	}
	logFile, err := os.Create(filepath.Join(dir, "manager.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	fmt.Printf("manager log: %s\n", logFile.Name())
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s (make build): %w", o.manager, err)
	}
	m := &managerProcess{cmd: cmd, metrics: "http://" + metricsAddr + "/metrics", pprof: "http://" + pprofAddr + "/debug/pprof",
		dir: dir, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(m.done) }()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if resp, err := http.Get("http://" + probeAddr + "/readyz"); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return m, nil
			}
		}
		select {
		case <-m.done:
			return nil, fmt.Errorf("the manager exited: %v", cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			m.stop()
			return nil, fmt.Errorf("the manager was not ready after 30s")
		}
	}
}

func (m *managerProcess) stop() {
	_ = m.cmd.Process.Signal(os.Interrupt)
	select {
	case <-m.done:
	case <-time.After(10 * time.Second):
		_ = m.cmd.Process.Kill()
	}
}

// scrape reads the manager's counters: reconciles and errors, client-go's requests by method,
// the machine controller's workqueue latency, heap in use and goroutines.
func (m *managerProcess) scrape() (map[string]float64, error) {
	resp, err := http.Get(m.metrics)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		sp := strings.LastIndexByte(line, ' ')
		if strings.HasPrefix(line, "#") || sp < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			continue
		}
		name := line[:sp]
		switch {
		case strings.HasPrefix(name, "controller_runtime_reconcile_total{"):
			out["controller_runtime_reconcile_total"] += v
		case strings.HasPrefix(name, "controller_runtime_reconcile_errors_total{"):
			out["controller_runtime_reconcile_errors_total"] += v
		case strings.HasPrefix(name, "rest_client_requests_total{"):
			for _, method := range []string{"POST", "PUT", "PATCH", "DELETE"} {
				if strings.Contains(name, `method="`+method+`"`) {
					out[method] += v
				}
			}
		case strings.HasPrefix(name, `workqueue_queue_duration_seconds_bucket{`) && strings.Contains(name, `name="vendingmachine"`):
			if i := strings.Index(name, `le="`); i >= 0 {
				le := name[i+4:]
				out["workqueue_le_"+le[:strings.IndexByte(le, '"')]] = v
			}
		case strings.HasPrefix(name, `workqueue_queue_duration_seconds_sum{`) && strings.Contains(name, `name="vendingmachine"`):
			out["workqueue_sum"] = v
		case strings.HasPrefix(name, `workqueue_queue_duration_seconds_count{`) && strings.Contains(name, `name="vendingmachine"`):
			out["workqueue_count"] = v
		case name == "go_memstats_heap_inuse_bytes", name == "go_memstats_heap_alloc_bytes", name == "go_goroutines":
			out[name] = v
		}
	}
	return out, sc.Err()
}

// live saves a heap profile of the manager after a collection (dir/heap-<phase>.pb.gz: go tool
// pprof -sample_index=inuse_space bin/manager FILE) and returns the heap then in use: what its
// caches and queues hold, without garbage.
func (m *managerProcess) live(phase string) (float64, string, error) {
	resp, err := http.Get(m.pprof + "/heap?gc=1")
	if err != nil {
		return 0, "", err
	}
	defer func() { _ = resp.Body.Close() }()
	path := filepath.Join(m.dir, "heap-"+phase+".pb.gz")
	f, err := os.Create(path)
	if err != nil {
		return 0, "", err
	}
	defer func() { _ = f.Close() }()
	if _, err := io.Copy(f, resp.Body); err != nil {
		return 0, "", err
	}
	after, err := m.scrape()
	return after["go_memstats_heap_alloc_bytes"], path, err
}

// memory returns the manager's peak and current resident set, in KiB.
func (m *managerProcess) memory() (peak, now int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", m.cmd.Process.Pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmHWM:":
			peak = v
		case "VmRSS:":
			now = v
		}
	}
	return peak, now
}

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().String()
}
