package vendcli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
)

// The envtest tests run the plugin's commands, with their flags, against a real kube-apiserver
// (and etcd) that serves the CRDs from config/crd/bases. No operator runs: each test writes the
// objects and their status (through the status subresource) as the operator and a kubelet
// would, to shape the case. The clock is fixed and the output is not a terminal, so the output
// is the same on every run and is compared with golden files (go test -update rewrites them).

var (
	envOnce    sync.Once
	envErr     error
	testEnv    *envtest.Environment
	k8s        client.Client // what the tests use to set up and check, apart from the plugin
	kubeconfig string        // the plugin's --kubeconfig

	// now is the plugin's clock in every test.
	now = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
)

func TestMain(m *testing.M) {
	code := m.Run()
	if testEnv != nil {
		_ = testEnv.Stop()
	}
	os.Exit(code)
}

// startEnv starts the API server the first time an envtest test asks for it: the unit tests of
// this package run without one.
func startEnv(t *testing.T) {
	t.Helper()
	envOnce.Do(func() {
		assets := os.Getenv("KUBEBUILDER_ASSETS")
		if assets == "" {
			assets = filepath.Join("..", "..", "bin", "k8s", "v1.37.2")
		}
		if _, err := os.Stat(filepath.Join(assets, "kube-apiserver")); err != nil {
			envErr = fmt.Errorf("envtest: kube-apiserver not found in %s: run `make controlplane`, or set KUBEBUILDER_ASSETS", assets)
			return
		}
		testEnv = &envtest.Environment{
			CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
			ErrorIfCRDPathMissing: true,
			BinaryAssetsDirectory: assets,
		}
		cfg, err := testEnv.Start()
		if err != nil {
			envErr = err
			return
		}
		if k8s, err = client.New(cfg, client.Options{Scheme: Scheme}); err != nil {
			envErr = err
			return
		}
		dir, err := os.MkdirTemp("", "vendcli-")
		if err != nil {
			envErr = err
			return
		}
		kubeconfig = filepath.Join(dir, "kubeconfig")
		envErr = os.WriteFile(kubeconfig, testEnv.KubeConfig, 0o600)
	})
	if envErr != nil {
		t.Fatal(envErr)
	}
}

// vend runs `kubectl vend ARGS` against the test API server, at the fixed clock, into a pipe
// (no terminal, no color unless --color=always). It returns stdout and the command's error.
func vend(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return vendAt(t, now, args...)
}

func vendAt(t *testing.T, at time.Time, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	o := &Options{
		Config:     genericclioptions.NewConfigFlags(false),
		Streams:    genericiooptions.IOStreams{In: &bytes.Buffer{}, Out: &out, ErrOut: &errOut},
		Now:        func() time.Time { return at },
		IsTerminal: func() bool { return false },
		Getenv:     func(string) string { return "" },
	}
	cmd := NewCommand(o)
	cmd.SetArgs(append([]string{"--kubeconfig", kubeconfig}, args...))
	err := cmd.Execute()
	if errOut.Len() > 0 {
		t.Logf("stderr of kubectl vend %v: %s", args, errOut.String())
	}
	return out.String(), err
}

// mustVend is vend that fails the test on an error.
func mustVend(t *testing.T, args ...string) string {
	t.Helper()
	out, err := vend(t, args...)
	if err != nil {
		t.Fatalf("kubectl vend %v: %v", args, err)
	}
	return out
}

// namespace creates a namespace with a fixed name for the test (the name shows in goldens).
func namespace(t *testing.T, name string) string {
	t.Helper()
	startEnv(t)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return name
}

// at is a time before the test's clock, to the second (conditions keep seconds).
func at(ago time.Duration) metav1.Time { return metav1.NewTime(now.Add(-ago)) }

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// --- the operator's and the kubelet's part, played by the tests ---

// machine creates a machine (in fleet f when f is not nil, as its index-th machine) and writes
// its status.
func machine(t *testing.T, ns, name string, f *vendingv1alpha1.VendingFleet, index int,
	spec func(*vendingv1alpha1.VendingMachine), status vendingv1alpha1.VendingMachineStatus) *vendingv1alpha1.VendingMachine {
	t.Helper()
	vm := &vendingv1alpha1.VendingMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if f != nil {
		vm.Labels = map[string]string{labelFleet: f.Name, labelIndex: fmt.Sprint(index)}
		vm.OwnerReferences = []metav1.OwnerReference{{APIVersion: vendingv1alpha1.GroupVersion.String(), Kind: "VendingFleet",
			Name: f.Name, UID: f.UID, Controller: ptrTo(true), BlockOwnerDeletion: ptrTo(true)}}
	}
	if spec != nil {
		spec(vm)
	}
	must(t, k8s.Create(context.Background(), vm))
	status.ObservedGeneration = vm.Generation
	status.LogClaim = name + "-log"
	status.Endpoint = fmt.Sprintf("http://%s.%s.svc:8080", name, ns)
	vm.Status = status
	must(t, k8s.Status().Update(context.Background(), vm))
	return vm
}

func ptrTo[T any](v T) *T { return &v }

// healthy is the status of a machine serving its whole menu, Ready for an hour.
func healthy(pod string) vendingv1alpha1.VendingMachineStatus {
	return vendingv1alpha1.VendingMachineStatus{
		Phase: vendingv1alpha1.PhaseRunning, PodName: pod, PodCause: vendingv1alpha1.PodCreated,
		Conditions: []metav1.Condition{
			{Type: "Ready", Status: "True", Reason: "PodReady", LastTransitionTime: at(time.Hour),
				Message: "pod " + pod + " is ready: its event log is replayed and it serves customers"},
			{Type: "Progressing", Status: "False", Reason: "Stable", Message: "the machine's pod is running", LastTransitionTime: at(time.Hour)},
			{Type: "Degraded", Status: "False", Reason: "FullMenu", Message: "serving the whole menu", LastTransitionTime: at(time.Hour)},
			{Type: "Escalated", Status: "False", Reason: "WithinRestartBudget", Message: "0 of 10 restarts used within the window", LastTransitionTime: at(time.Hour)},
		},
	}
}

// escalated is the status of a machine that used its restart window on OutOfCoffeeBeans and
// escalated 8 seconds ago.
func escalated(name, pod, to string) vendingv1alpha1.VendingMachineStatus {
	msg := "OutOfCoffeeBeans after 10 restarts within 1m0s (maxRestarts 10): escalating. Escalated to " + to +
		"; no more restarts until the machine is reset (annotation vending.resilience.dev/reset)."
	times := make([]metav1.Time, 0, 10)
	for i := range 10 {
		times = append(times, at(time.Duration(58-5*i)*time.Second))
	}
	return vendingv1alpha1.VendingMachineStatus{
		Phase: vendingv1alpha1.PhaseEscalated, PodName: pod, PodCause: vendingv1alpha1.PodRestarted, Restarts: 10,
		InPlaceRestarts: 9, RestartTimes: times,
		LastFailure: &vendingv1alpha1.Failure{Time: at(8 * time.Second), Reason: "OutOfCoffeeBeans", ExitCode: 10,
			Message: "out of coffee beans while brewing order o-41", PendingOrder: "o-41", PodName: pod,
			Action: vendingv1alpha1.ActionEscalate, DecisionReason: "RestartIntensityExceeded",
			DecisionMessage: "OutOfCoffeeBeans after 10 restarts within 1m0s (maxRestarts 10): escalating"},
		Conditions: []metav1.Condition{
			{Type: "Ready", Status: "False", Reason: "PodFailed", Message: "pod " + pod + " failed", LastTransitionTime: at(8 * time.Second)},
			{Type: "Progressing", Status: "False", Reason: "Escalated", Message: "escalated: the supervisor waits for a reset", LastTransitionTime: at(8 * time.Second)},
			{Type: "Degraded", Status: "Unknown", Reason: "StateUnknown", Message: "the machine's state was not read", LastTransitionTime: at(8 * time.Second)},
			{Type: "Escalated", Status: "True", Reason: "RestartIntensityExceeded", Message: msg, LastTransitionTime: at(8 * time.Second)},
			{Type: "Stalled", Status: "True", Reason: "RestartIntensityExceeded", Message: msg, LastTransitionTime: at(8 * time.Second)},
		},
	}
}

// pod creates a machine's pod and writes its status as a kubelet would.
func pod(t *testing.T, ns, machine, name string, status corev1.PodStatus) {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{labelMachine: machine}},
		Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{Name: "vending", Image: "vendingpod:test"}}},
	}
	must(t, k8s.Create(context.Background(), p))
	p.Status = status
	must(t, k8s.Status().Update(context.Background(), p))
}

func failedPod(exitCode int32, reason string, ago time.Duration) corev1.PodStatus {
	return corev1.PodStatus{Phase: corev1.PodFailed,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse, LastTransitionTime: at(ago)}},
		ContainerStatuses: []corev1.ContainerStatus{{Name: "vending", Image: "vendingpod:test",
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: exitCode, Reason: reason,
				StartedAt: at(time.Hour), FinishedAt: at(ago)}}}}}
}

func runningPod() corev1.PodStatus {
	return corev1.PodStatus{Phase: corev1.PodRunning,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: at(time.Hour)}},
		ContainerStatuses: []corev1.ContainerStatus{{Name: "vending", Image: "vendingpod:test", Ready: true,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: at(time.Hour)}}}}}
}

// claim creates a machine's log claim, Bound.
func claim(t *testing.T, ns, machine string) {
	t.Helper()
	c := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: machine + "-log", Labels: map[string]string{labelMachine: machine}},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}},
	}
	must(t, k8s.Create(context.Background(), c))
	c.Status = corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound,
		Capacity: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}
	must(t, k8s.Status().Update(context.Background(), c))
}

func key(ns, name string) client.ObjectKey { return client.ObjectKey{Namespace: ns, Name: name} }
