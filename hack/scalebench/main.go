// Command scalebench measures the operator at scale on a real kube-apiserver and etcd (envtest,
// from bin/k8s): it runs the manager binary as its own process, creates many VendingMachines,
// plays the kubelet for their pods, then fails many pods at once, and reports how long each
// phase took to settle, reconciles per second, the API writes the manager sent, reconcile errors
// and the manager's peak RSS.
//
//	make build controlplane && go run ./hack/scalebench -machines 1000 -failures 100
//	go run ./hack/scalebench -fleet -machines 200 -failures 50   # one VendingFleet; 50 escalate at once
//
// The baseline, measured in the same run on the same API server, is the floor an operator
// cannot beat: the same children (claim, service, pod per machine) created directly by this
// process with as many workers as the manager has.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
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
)

type options struct {
	machines, failures, workers, concurrency int
	manager, assets, crds                    string
	qps                                      float64
	burst                                    int
	timeout                                  time.Duration
	fleet                                    bool
}

func main() {
	var o options
	flag.IntVar(&o.machines, "machines", 1000, "VendingMachines to create")
	flag.IntVar(&o.failures, "failures", 100, "pods failed at once after the machines settle")
	flag.IntVar(&o.workers, "workers", 16, "this tool's own concurrent API clients (creating, playing the kubelet)")
	flag.IntVar(&o.concurrency, "max-concurrent-reconciles", 4, "passed to the manager")
	flag.Float64Var(&o.qps, "kube-api-qps", 100, "passed to the manager")
	flag.IntVar(&o.burst, "kube-api-burst", 200, "passed to the manager")
	flag.BoolVar(&o.fleet, "fleet", false, "create the machines through one VendingFleet, and make the failures escalations "+
		"(a reason the decider does not restart) that the fleet resets")
	flag.DurationVar(&o.timeout, "settle-timeout", 3*time.Minute, "how long a phase may take to settle")
	flag.StringVar(&o.manager, "manager", "bin/manager", "manager binary (make build)")
	flag.StringVar(&o.assets, "assets", "bin/k8s/v1.37.2", "control plane binaries (make controlplane)")
	flag.StringVar(&o.crds, "crds", "config/crd/bases", "CRD directory")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "scalebench:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	scheme := k8sruntime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(vendingv1alpha1.AddToScheme(scheme))

	env := &envtest.Environment{CRDDirectoryPaths: []string{o.crds}, ErrorIfCRDPathMissing: true, BinaryAssetsDirectory: o.assets}
	// envtest's default service range (a /24) holds 254 services; a thousand machines need more.
	env.ControlPlane.GetAPIServer().Configure().Set("service-cluster-ip-range", "10.96.0.0/16")
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("starting the control plane from %s (make controlplane): %w", o.assets, err)
	}
	defer func() { _ = env.Stop() }()
	cfg.QPS, cfg.Burst = 1000, 2000 // this tool must not be the bottleneck it measures
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ctrllog.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)))

	fmt.Printf("machine: %d CPUs, %s/%s, %s\n", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
	fmt.Printf("machines=%d failures=%d manager concurrency=%d qps=%v burst=%d\n\n",
		o.machines, o.failures, o.concurrency, o.qps, o.burst)

	// Baseline: the children alone, written straight to the API server.
	for _, ns := range []string{"baseline", fleetNS} {
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			return err
		}
	}
	start := time.Now()
	if err := parallel(o.machines, o.concurrency, func(i int) error { return createChildren(ctx, c, "baseline", i) }); err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	baseline := time.Since(start)
	fmt.Printf("baseline: %d×(claim+service+pod) written directly with %d workers: %v (%.0f writes/s)\n",
		o.machines, o.concurrency, baseline.Round(time.Millisecond), float64(3*o.machines)/baseline.Seconds())

	mgr, err := startManager(ctx, env, o)
	if err != nil {
		return err
	}
	defer mgr.stop()

	// What this tool watches it reads from an informer cache, so its polling costs the API
	// server nothing.
	informers, err := cache.New(cfg, cache.Options{Scheme: scheme, DefaultNamespaces: map[string]cache.Config{fleetNS: {}}})
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
	before, err := mgr.scrape()
	if err != nil {
		return err
	}
	start = time.Now()
	create := func(i int) error { return c.Create(ctx, machine(i)) }
	if o.fleet {
		create = func(int) error { return c.Create(ctx, fleetOf(o.machines)) }
	}
	if err := parallel(map[bool]int{true: 1, false: o.machines}[o.fleet], o.workers, create); err != nil {
		return fmt.Errorf("creating machines: %w", err)
	}
	created := time.Since(start)
	if err := waitFor(ctx, informers, o.machines, o.timeout, func(vm *vendingv1alpha1.VendingMachine) bool {
		return settled(vm, 0)
	}); err != nil {
		return err
	}
	settle := time.Since(start)
	after, err := mgr.scrape()
	if err != nil {
		return err
	}
	report("create", o.machines, created, settle, before, after)

	// Phase 2: fail pods at once; wait for every restart. Alone, the machines restart the talk's
	// OutOfCoffeeBeans; in a fleet, they escalate a reason their decider does not know and the
	// fleet resets them.
	before = after
	start = time.Now()
	reason, exit := contract.ReasonOutOfCoffeeBeans, int32(contract.ExitOutOfCoffeeBeans)
	if o.fleet {
		reason, exit = "Panic", 2
	}
	if err := parallel(o.failures, o.workers, func(i int) error { return kubelet.fail(ctx, c, i, reason, exit) }); err != nil {
		return fmt.Errorf("failing pods: %w", err)
	}
	failed := time.Since(start)
	if err := waitFor(ctx, informers, o.machines, o.timeout, func(vm *vendingv1alpha1.VendingMachine) bool {
		want := int32(0)
		if index(vm.Name) < o.failures {
			want = 1
		}
		return settled(vm, want)
	}); err != nil {
		return err
	}
	recovered := time.Since(start)
	after, err = mgr.scrape()
	if err != nil {
		return err
	}
	report("fail", o.failures, failed, recovered, before, after)

	peak, rss := mgr.memory()
	fmt.Printf("\nmanager memory: peak RSS (VmHWM) %d MiB, RSS now %d MiB\n", peak>>10, rss>>10)
	fmt.Printf("reconcile errors in all: %.0f\n", after["controller_runtime_reconcile_errors_total"])
	return nil
}

// report prints one phase: how long the input took to write, how long until settled, and what
// the manager did meanwhile (from its own metrics).
func report(phase string, n int, input, settle time.Duration, before, after map[string]float64) {
	d := func(k string) float64 { return after[k] - before[k] }
	reconciles := d("controller_runtime_reconcile_total")
	fmt.Printf("%s: %d machines: input written in %v, settled in %v; %.0f reconciles (%.0f/s), %.0f errors; "+
		"manager API writes: %.0f POST, %.0f PUT, %.0f PATCH, %.0f DELETE (%.1f per machine)\n",
		phase, n, input.Round(time.Millisecond), settle.Round(time.Millisecond), reconciles,
		reconciles/settle.Seconds(), d("controller_runtime_reconcile_errors_total"),
		d("POST"), d("PUT"), d("PATCH"), d("DELETE"), (d("POST")+d("PUT")+d("PATCH")+d("DELETE"))/float64(n))
}

func machine(i int) *vendingv1alpha1.VendingMachine {
	return &vendingv1alpha1.VendingMachine{ObjectMeta: metav1.ObjectMeta{Namespace: fleetNS, Name: fmt.Sprintf("m-%d", i)}}
}

// fleetOf is one fleet named m, whose machines m-0 ... are named as machine(i) names them. Its
// intensity absorbs every escalation the benchmark makes.
func fleetOf(n int) *vendingv1alpha1.VendingFleet {
	f := &vendingv1alpha1.VendingFleet{ObjectMeta: metav1.ObjectMeta{Namespace: fleetNS, Name: "m"}}
	f.Spec.Replicas = ptr.To(int32(n))
	f.Spec.Intensity.MaxEscalations = ptr.To(int32(100))
	return f
}

func index(name string) int {
	i, _ := strconv.Atoi(strings.TrimPrefix(name, "m-"))
	return i
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
		if err := c.List(ctx, list, client.InNamespace(fleetNS)); err != nil {
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
		time.Sleep(100 * time.Millisecond)
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

func createChildren(ctx context.Context, c client.Client, ns string, i int) error {
	name := fmt.Sprintf("b-%d", i)
	objs := []client.Object{
		&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"b": name}, Ports: []corev1.ServicePort{{Port: 8080}}}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: container, Image: image}}}},
	}
	for _, obj := range objs {
		if err := c.Create(ctx, obj); err != nil {
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

// fail reports machine i's current pod terminated with a reason, as a kubelet would.
func (k *kubelet) fail(ctx context.Context, c client.Client, i int, reason string, exit int32) error {
	k.mu.Lock()
	name := k.pods[fmt.Sprintf("m-%d", i)]
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
	done    chan struct{}
}

func startManager(ctx context.Context, env *envtest.Environment, o options) (*managerProcess, error) {
	user, err := env.ControlPlane.AddUser(envtest.User{Name: "manager", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return nil, err
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "scalebench-")
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(path, kubeconfig, 0o600); err != nil {
		return nil, err
	}
	metricsAddr, probeAddr := freeAddr(), freeAddr()
	cmd := exec.CommandContext(ctx, o.manager, "--kubeconfig", path,
		"--metrics-bind-address", metricsAddr, "--metrics-secure=false", "--health-probe-bind-address", probeAddr,
		"--vending-image", image, "--max-concurrent-reconciles", strconv.Itoa(o.concurrency),
		"--kube-api-qps", fmt.Sprint(o.qps), "--kube-api-burst", strconv.Itoa(o.burst), "--zap-log-level", "error")
	logFile, err := os.Create(filepath.Join(dir, "manager.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	fmt.Printf("manager log: %s\n", logFile.Name())
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s (make build): %w", o.manager, err)
	}
	m := &managerProcess{cmd: cmd, metrics: "http://" + metricsAddr + "/metrics", done: make(chan struct{})}
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

// scrape reads the manager's counters: reconciles and errors of the vendingmachine controller,
// and client-go's requests by method (the API writes the manager sent).
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
		}
	}
	return out, sc.Err()
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
