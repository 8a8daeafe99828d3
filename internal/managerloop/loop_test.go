package managerloop

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

// The envtest tests run the loop against a real kube-apiserver and etcd (bin/k8s, or
// KUBEBUILDER_ASSETS), and stop and start that API server on the same etcd, certificates and
// port: an outage.
var (
	testEnv *envtest.Environment
	cfg     *rest.Config
	k8s     client.Client
	scheme  = runtime.NewScheme()
)

// short is the lease timing of the tests: a lost lease in 2 s, a margin of 0.6 s.
var short = Timing{LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 400 * time.Millisecond}

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run()) // the unit tests only; the envtest tests skip themselves
	}
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = filepath.Join("..", "..", "bin", "k8s", "v1.37.2")
	}
	if _, err := os.Stat(filepath.Join(assets, "kube-apiserver")); err != nil {
		fmt.Fprintf(os.Stderr, "envtest: kube-apiserver not found in %s: run `make controlplane`, or set KUBEBUILDER_ASSETS\n", assets)
		return 1
	}
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.UseDevMode(true)))
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	// A fixed certificate directory: the restarted API server serves the same certificates, so
	// the clients made before the outage trust it after.
	certs, err := os.MkdirTemp("", "managerloop-apiserver-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(certs) }()
	testEnv = &envtest.Environment{
		BinaryAssetsDirectory: assets,
		ControlPlane:          envtest.ControlPlane{APIServer: &envtest.APIServer{CertDir: certs}},
	}
	if cfg, err = testEnv.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "envtest: starting the control plane from %s: %v\n", assets, err)
		return 1
	}
	defer func() {
		if err := testEnv.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "envtest: stopping: %v\n", err)
		}
	}()
	if k8s, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// harness runs one loop with a trivial controller: it records which manager reconciled which
// ConfigMap of the test's namespace.
type harness struct {
	identity  string
	probeAddr string
	events    chan Event
	done      chan error
	cancel    context.CancelFunc

	mu   sync.Mutex
	seen map[string][]int // ConfigMap name -> the managers that reconciled it

	// release unblocks the reconciles of ConfigMaps named "stuck": a controller that does not stop.
	release chan struct{}
}

func startLoop(t *testing.T, ns, leaseName string) *harness {
	t.Helper()
	h := &harness{identity: "test_" + leaseName, probeAddr: freeAddr(t), events: make(chan Event, 1000),
		done: make(chan error, 1), seen: map[string][]int{}, release: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	managers := 0
	config := Config{
		RestConfig: cfg,
		Manager: ctrl.Options{Scheme: scheme,
			Cache: cache.Options{DefaultNamespaces: map[string]cache.Config{ns: {}}}},
		Setup: func(mgr ctrl.Manager) error {
			managers++
			n := managers
			return ctrl.NewControllerManagedBy(mgr).For(&corev1.ConfigMap{}).Named("probe").
				Complete(reconcile.Func(func(_ context.Context, req reconcile.Request) (reconcile.Result, error) {
					h.mu.Lock()
					h.seen[req.Name] = append(h.seen[req.Name], n)
					h.mu.Unlock()
					if req.Name == "stuck" {
						<-h.release
					}
					return reconcile.Result{}, nil
				}))
		},
		LeaderElection:          true,
		LeaderElectionID:        leaseName,
		LeaderElectionNamespace: ns,
		Timing:                  short,
		ProbeAddr:               h.probeAddr,
		Metrics:                 metricsserver.Options{BindAddress: "0"},
		PollInterval:            100 * time.Millisecond,
		Identity:                h.identity,
		Log:                     logf.Log.WithName(leaseName),
		OnEvent:                 func(e Event) { h.events <- e },
	}
	go func() { h.done <- Run(ctx, config) }()
	t.Cleanup(func() {
		close(h.release)
		cancel()
		<-h.done
	})
	return h
}

// waitFor reads the loop's events until the one wanted; the loop must not stop meanwhile.
func (h *harness) waitFor(t *testing.T, s State, manager int) Event {
	t.Helper()
	timeout := time.After(2 * time.Minute) // a failure detector: the states come within seconds
	for {
		select {
		case e := <-h.events:
			if e.State == Stopped {
				t.Fatalf("the loop stopped while waiting for %s of manager %d: %v", s, manager, e.Err)
			}
			if e.State == s && e.Manager == manager {
				return e
			}
		case <-timeout:
			t.Fatalf("no %s of manager %d", s, manager)
		}
	}
}

func (h *harness) reconciledBy(name string) []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]int(nil), h.seen[name]...)
}

// probe is the status of GET http://probeAddr/path.
func (h *harness) probe(path string) (int, error) {
	resp, err := http.Get("http://" + h.probeAddr + path)
	if err != nil {
		return 0, err
	}
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().String()
}

func namespace(t *testing.T) string {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "loop-"}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

func configMap(g Gomega, ns, name string) {
	g.Expect(k8s.Create(context.Background(), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}})).
		To(Succeed())
}

func lease(g Gomega, ns, name string) *coordinationv1.Lease {
	l := &coordinationv1.Lease{}
	g.Expect(k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, l)).To(Succeed())
	return l
}

func stopAPIServer(t *testing.T) {
	t.Helper()
	if err := testEnv.ControlPlane.GetAPIServer().Stop(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { startAPIServer(t) }) // idempotent enough: a running server is left alone
}

func startAPIServer(t *testing.T) {
	t.Helper()
	if k8s.List(context.Background(), &corev1.NamespaceList{}, client.Limit(1)) == nil {
		return // already up
	}
	if err := testEnv.ControlPlane.GetAPIServer().Start(); err != nil {
		t.Fatal(err)
	}
}

// The API server goes away for longer than the renew deadline: the manager loses its lease and
// stops, but the process's loop does not exit; it waits for the API server (the probes say alive,
// not ready), and when it is back a new manager takes the same lease back at once (same holder,
// no leader transition) and its controllers act again. On the way out the lease is released.
func TestRidesOutAnAPIServerOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("envtest")
	}
	g := NewWithT(t)
	ns := namespace(t)
	h := startLoop(t, ns, "outage")
	h.waitFor(t, Leading, 1)
	configMap(g, ns, "before")
	g.Eventually(func() []int { return h.reconciledBy("before") }).Should(ContainElement(1))
	before := lease(g, ns, "outage")
	g.Expect(*before.Spec.HolderIdentity).To(Equal(h.identity))

	stopAPIServer(t)
	h.waitFor(t, Draining, 1) // the lease is lost: the manager's Start returned
	h.waitFor(t, WaitingForAPIServer, 1)
	g.Expect(h.probe("/healthz")).To(Equal(http.StatusOK), "the kubelet must not restart a loop that waits")
	g.Expect(h.probe("/readyz")).To(Equal(http.StatusServiceUnavailable), "no manager runs")

	startAPIServer(t)
	h.waitFor(t, Leading, 2)
	configMap(g, ns, "after")
	g.Eventually(func() []int { return h.reconciledBy("after") }).Should(ContainElement(2))
	g.Expect(h.probe("/readyz")).To(Equal(http.StatusOK))
	after := lease(g, ns, "outage")
	g.Expect(*after.Spec.HolderIdentity).To(Equal(h.identity), "the process keeps one identity across managers")
	g.Expect(after.Spec.LeaseTransitions).To(Equal(before.Spec.LeaseTransitions),
		"the new manager renewed the process's own lease: no leader transition, no lease duration waited")
	g.Expect(after.Spec.AcquireTime.Time).To(BeTemporally("==", before.Spec.AcquireTime.Time))

	// SIGTERM: Run returns nil, and the lease is released after the controllers stopped.
	h.cancel()
	g.Expect(<-h.done).To(Succeed())
	h.done <- nil // for the cleanup
	released := lease(g, ns, "outage")
	g.Expect(released.Spec.HolderIdentity == nil || *released.Spec.HolderIdentity == "").To(BeTrue(),
		"holder after shutdown: %v", released.Spec.HolderIdentity)
}

// Started while the API server is away, the loop does not exit: it waits, alive and not ready,
// and comes up when the API server appears.
func TestStartsWhileTheAPIServerIsAway(t *testing.T) {
	if testing.Short() {
		t.Skip("envtest")
	}
	g := NewWithT(t)
	ns := namespace(t)
	stopAPIServer(t)
	h := startLoop(t, ns, "cold-start")
	e := h.waitFor(t, WaitingForAPIServer, 0)
	g.Expect(e.Err).To(HaveOccurred(), "the event says why it waits")
	g.Expect(h.probe("/healthz")).To(Equal(http.StatusOK))
	g.Expect(h.probe("/readyz")).To(Equal(http.StatusServiceUnavailable))

	startAPIServer(t)
	h.waitFor(t, Leading, 1)
	configMap(g, ns, "first")
	g.Eventually(func() []int { return h.reconciledBy("first") }).Should(ContainElement(1))
}

// A controller still reconciling when another replica may already lead (the lease's margin is
// spent) must not be left running beside a new manager: the loop gives up and Run returns
// ErrControllersDidNotStop, so that the process exits, as controller-runtime's would have.
func TestAControllerThatDoesNotStopEndsTheProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("envtest")
	}
	g := NewWithT(t)
	ns := namespace(t)
	h := startLoop(t, ns, "stuck")
	h.waitFor(t, Leading, 1)
	configMap(g, ns, "stuck")
	g.Eventually(func() []int { return h.reconciledBy("stuck") }).Should(ContainElement(1))

	stopAPIServer(t)
	h.waitFor(t, Draining, 1)
	var err error
	g.Eventually(h.done, 2*time.Minute).Should(Receive(&err), "Run must return, not go round")
	g.Expect(err).To(MatchError(ErrControllersDidNotStop))
	h.done <- err // for the cleanup
}
