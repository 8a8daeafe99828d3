package controller

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/onsi/gomega"

	"go.uber.org/zap/zapcore"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
)

// The envtest suite runs the reconcilers against a real kube-apiserver and etcd (built from Go
// modules into bin/k8s by `make controlplane`). envtest has no kubelet: tests play it by
// patching pod status, exactly as a kubelet would.
var (
	testEnv   *envtest.Environment
	cfg       *rest.Config
	podAPI    StateReader
	k8sClient client.Client // uncached: tests assert on the API server, not on a cache
	scheme    = runtime.NewScheme()

	// testClock is the operators' clock: tests step it past a window instead of sleeping.
	testClock = &steppedClock{}

	// restartManager stops the operator and replaces it with a new one that has no memory of
	// the old: what an operator restart (or a leader change) is.
	restartManager func() error

	// suspendManager stops the suite's operator until the test ends (a test that drives a
	// reconciler by hand, with nobody else acting on its machine).
	suspendManager func(t *testing.T)
)

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = filepath.Join("..", "..", "bin", "k8s", "v1.37.2")
	}
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(assets, bin)); err != nil {
			fmt.Fprintf(os.Stderr, "envtest: %s not found in %s: run `make controlplane` "+
				"(builds the control plane from Go modules into bin/k8s), or set KUBEBUILDER_ASSETS\n", bin, assets)
			return 1
		}
	}
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.UseDevMode(true), zap.Level(zapLevel())))
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(vendingv1alpha1.AddToScheme(scheme))

	testEnv = &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	var err error
	if cfg, err = testEnv.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "envtest: starting the control plane from %s: %v\n", assets, err)
		return 1
	}
	defer func() {
		if err := testEnv.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "envtest: stopping: %v\n", err)
		}
	}()
	podAPI = startFakePodAPI()
	if k8sClient, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		fmt.Fprintf(os.Stderr, "envtest: client: %v\n", err)
		return 1
	}

	// The node tests bind pods to: a bound pod's node exists (a pod on a deleted node is lost).
	if err := createReadyNode(context.Background(), "node-1"); err != nil {
		fmt.Fprintf(os.Stderr, "envtest: node: %v\n", err)
		return 1
	}
	stop, err := startManager()
	if err != nil {
		fmt.Fprintf(os.Stderr, "envtest: %v\n", err)
		return 1
	}
	defer func() { stop() }()
	restartManager = func() error {
		stop()
		stop, err = startManager()
		return err
	}
	suspendManager = func(t *testing.T) {
		stop()
		t.Cleanup(func() {
			if stop, err = startManager(); err != nil {
				t.Errorf("restarting the suite's operator: %v", err)
			}
		})
	}
	// envtest is a real API server: give Eventually the time a real one needs.
	gomega.SetDefaultEventuallyTimeout(20 * time.Second)
	gomega.SetDefaultEventuallyPollingInterval(50 * time.Millisecond)
	gomega.SetDefaultConsistentlyPollingInterval(100 * time.Millisecond)
	return m.Run()
}

// startManager starts the operator in this process, as cmd/manager wires it, and returns a
// function that stops it and waits until it has stopped.
func startManager() (stop func(), err error) {
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:  scheme,
		Cache:   CacheOptions(), // as cmd/manager: a test that needs a trimmed field fails here
		Metrics: metricsserver.Options{BindAddress: "0"},
	})
	if err != nil {
		return nil, fmt.Errorf("manager: %w", err)
	}
	if err := (&VendingMachineReconciler{
		Client:       mgr.GetClient(),
		Scheme:       mgr.GetScheme(),
		Recorder:     mgr.GetEventRecorder("vendingmachine-controller"),
		VendingImage: DefaultVendingImage,
		StateReader:  podAPI,
		Clock:        testClock,
		APIReader:    mgr.GetAPIReader(),
	}).SetupWithManager(mgr, Options{
		MaxConcurrentReconciles: 4,
		SkipNameValidation:      ptr.To(true), // a restarted operator registers the same name again
	}); err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	if err := (&VendingFleetReconciler{
		Client:   mgr.GetClient(),
		Scheme:   mgr.GetScheme(),
		Recorder: mgr.GetEventRecorder("vendingfleet-controller"),
		Clock:    testClock,
	}).SetupWithManager(mgr, Options{MaxConcurrentReconciles: 4, SkipNameValidation: ptr.To(true)}); err != nil {
		return nil, fmt.Errorf("fleet controller: %w", err)
	}
	if err := SetupMetrics(mgr); err != nil {
		return nil, fmt.Errorf("state metrics: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "envtest: manager stopped: %v\n", err)
		}
	}()
	return func() { cancel(); <-done }, nil
}

// steppedClock is the real clock plus the steps tests took: time still passes (backoffs and
// requeues are real), and a test can jump past a window.
type steppedClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *steppedClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *steppedClock) Since(t time.Time) time.Duration { return c.Now().Sub(t) }

// Step moves the clock forward by d.
func (c *steppedClock) Step(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
}

// newNamespace gives each test a namespace of its own, so tests never see each other's objects.
func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "test-"}}
	if err := k8sClient.Create(context.Background(), ns); err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	return ns.Name
}

// zapLevel keeps go test output readable (errors only) unless TEST_VERBOSE is set.
func zapLevel() zapcore.Level {
	if os.Getenv("TEST_VERBOSE") != "" {
		return zapcore.DebugLevel
	}
	return zapcore.ErrorLevel
}

// createReadyNode makes a Node that reports Ready, as a kubelet would.
func createReadyNode(ctx context.Context, name string) error {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelHostname: name}}}
	if err := k8sClient.Create(ctx, n); err != nil {
		return err
	}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
	return k8sClient.Status().Update(ctx, n)
}
