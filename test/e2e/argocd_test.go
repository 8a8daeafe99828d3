//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/cli-runtime/pkg/printers"
	"k8s.io/client-go/dynamic"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/yaml"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/argocdhealth"
	"github.com/vendingfleet/vending-operator/internal/contract"
)

// fixturesEnv names the directory (config/argocd/resource_customizations/vending.resilience.dev)
// where the Argo CD health tests write the live objects they checked, as testdata of each kind,
// and their cases into each kind's health_test.yaml.
const fixturesEnv = "E2E_ARGOCD_FIXTURES"

const customizations = "../../config/argocd/resource_customizations/vending.resilience.dev"

// Argo CD's view of real machines: each phase a machine goes through on a real cluster, as the
// API server serves it, gets the health Argo CD would show, and kstatus agrees with it. The
// objects checked become the health checks' fixtures (E2E_ARGOCD_FIXTURES).
func TestArgoCDHealthOfLiveMachines(t *testing.T) {
	ns := argoNamespace(t)
	res := dynamicClient(t).Resource(vendingv1alpha1.GroupVersion.WithResource("vendingmachines")).Namespace(ns)
	a := newArgoChecks(t, "VendingMachine")

	// milkless starts out of milk (a full tank of none) and stops on a SIGKILL; it comes up while
	// coffee goes through its phases.
	milkless := watchObject(t, res, "milkless")
	createLive(t, res, liveMachine(ns, "milkless", func(vm *vendingv1alpha1.VendingMachine) {
		vm.Spec.Inventory.Milk = ptr.To[int32](0)
		vm.Spec.Supervision.Decider = []vendingv1alpha1.DeciderRule{{Reason: contract.ReasonKilled, Action: vendingv1alpha1.ActionStop}}
	}))

	// coffee restarts once in its window and escalates on the second failure. Its backoff outlasts
	// the kubelet's report of the failure: the restart time counts from the container's end, and
	// a shorter one is over before the operator hears of the failure (no BackingOff to see).
	coffee := watchObject(t, res, "coffee")
	created := createLive(t, res, liveMachine(ns, "coffee", func(vm *vendingv1alpha1.VendingMachine) {
		vm.Spec.Supervision.MaxRestarts = ptr.To[int32](1)
		vm.Spec.Supervision.Window = &metav1.Duration{Duration: 10 * time.Minute}
		vm.Spec.Supervision.Backoff.Initial = &metav1.Duration{Duration: 15 * time.Second}
	}))
	a.check("new", created, argocdhealth.Progressing)
	// A machine whose pod is Ready within the first status delay (5 s) is first observed Ready:
	// one status write, not two. One whose pod cannot start (an image nobody can pull) is
	// observed starting once the delay is over.
	stuck := watchObject(t, res, "stuck")
	createLive(t, res, liveMachine(ns, "stuck", func(vm *vendingv1alpha1.VendingMachine) {
		vm.Spec.Image = "vending.local/no-such-image:dev"
	}))
	a.check("starting", stuck.await(t, 0, "starting its first pod", func(u *unstructured.Unstructured) bool {
		return observed(u) && conditionIs(u, "Ready", "False", "") && conditionIs(u, "Progressing", "True", "")
	}), argocdhealth.Progressing)
	a.check("ready", coffee.await(t, 0, "ready", machineRunning), argocdhealth.Healthy)

	mark := coffee.len()
	killContainer(NewWithT(t), &vendingv1alpha1.VendingMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "coffee"}})
	a.check("backing-off", coffee.await(t, mark, "backing off", func(u *unstructured.Unstructured) bool {
		return conditionIs(u, "Progressing", "True", "BackingOff")
	}), argocdhealth.Progressing)
	restarting := coffee.await(t, mark, "restarting", func(u *unstructured.Unstructured) bool {
		return conditionIs(u, "Progressing", "True", "Restarting")
	})
	a.check("restarting", restarting, argocdhealth.Progressing)
	coffee.await(t, coffee.after(restarting), "running again", machineRunning)

	mark = coffee.len()
	a.check("generation-not-observed", setPaused(t, res, "coffee", true), argocdhealth.Progressing)
	a.check("paused", coffee.await(t, mark, "paused", func(u *unstructured.Unstructured) bool {
		return observed(u) && phaseIs(u, vendingv1alpha1.PhasePaused)
	}), argocdhealth.Suspended)
	mark = coffee.len()
	setPaused(t, res, "coffee", false)
	coffee.await(t, mark, "running, resumed", machineRunning)

	killContainer(NewWithT(t), &vendingv1alpha1.VendingMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "coffee"}})
	a.check("escalated", coffee.await(t, mark, "escalated", func(u *unstructured.Unstructured) bool {
		return observed(u) && phaseIs(u, vendingv1alpha1.PhaseEscalated)
	}), argocdhealth.Degraded)
	mark = coffee.len()
	setPaused(t, res, "coffee", true)
	a.check("paused-escalated", coffee.await(t, mark, "paused while escalated", func(u *unstructured.Unstructured) bool {
		paused, _, _ := unstructured.NestedBool(u.Object, "spec", "paused")
		return paused && observed(u)
	}), argocdhealth.Degraded)

	a.check("out-of-milk", milkless.await(t, 0, "serving without milk", func(u *unstructured.Unstructured) bool {
		return observed(u) && conditionIs(u, "Ready", "True", "") && conditionIs(u, "Degraded", "True", "OutOfMilk")
	}), argocdhealth.Healthy)
	mark = milkless.len()
	killContainer(NewWithT(t), &vendingv1alpha1.VendingMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "milkless"}})
	a.check("stopped", milkless.await(t, mark, "stopped", func(u *unstructured.Unstructured) bool {
		return observed(u) && phaseIs(u, vendingv1alpha1.PhaseStopped)
	}), argocdhealth.Degraded)
}

// Argo CD's view of a real fleet: new, scaling up, ready, paused, resetting a machine that
// escalated to it (Progressing: the fleet is handling it), and escalated to humans (Degraded).
func TestArgoCDHealthOfLiveFleet(t *testing.T) {
	ns := argoNamespace(t)
	res := dynamicClient(t).Resource(vendingv1alpha1.GroupVersion.WithResource("vendingfleets")).Namespace(ns)
	a := newArgoChecks(t, "VendingFleet")

	// Two machines that escalate on their first failure; the fleet resets one escalation in its
	// window and escalates itself on the second.
	f := &vendingv1alpha1.VendingFleet{
		TypeMeta:   metav1.TypeMeta{APIVersion: vendingv1alpha1.GroupVersion.String(), Kind: "VendingFleet"},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "lobby"},
	}
	f.Spec.Replicas = ptr.To[int32](2)
	f.Spec.Intensity.MaxEscalations = ptr.To[int32](1)
	f.Spec.Intensity.Window = &metav1.Duration{Duration: 10 * time.Minute}
	f.Spec.Template.Spec.EnableFaultInjection = true
	f.Spec.Template.Spec.Image = os.Getenv("E2E_VENDING_IMAGE")
	f.Spec.Template.Spec.Supervision.MaxRestarts = ptr.To[int32](0)
	f.Spec.Template.Spec.Storage.WhenDeleted = vendingv1alpha1.DeletePVC
	lobby := watchObject(t, res, "lobby")
	a.check("new", createLive(t, res, f), argocdhealth.Progressing)
	a.check("scaling", lobby.await(t, 0, "scaling up", func(u *unstructured.Unstructured) bool {
		return observed(u) && conditionIs(u, "Progressing", "True", "Scaling")
	}), argocdhealth.Progressing)
	a.check("ready", lobby.await(t, 0, "ready", fleetReady), argocdhealth.Healthy)

	mark := lobby.len()
	a.check("generation-not-observed", setPaused(t, res, "lobby", true), argocdhealth.Progressing)
	a.check("paused", lobby.await(t, mark, "paused", func(u *unstructured.Unstructured) bool {
		paused, _, _ := unstructured.NestedBool(u.Object, "spec", "paused")
		return paused && observed(u)
	}), argocdhealth.Suspended)
	mark = lobby.len()
	setPaused(t, res, "lobby", false)
	lobby.await(t, mark, "ready, resumed", fleetReady)

	mark = lobby.len()
	killContainer(NewWithT(t), &vendingv1alpha1.VendingMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "lobby-0"}})
	// The fleet answers the escalation in the pass that sees it (it resets the machine before it
	// reports), so what it shows while handling it is a machine not Ready, one escalation used.
	handling := lobby.await(t, mark, "handling an escalated machine", func(u *unstructured.Unstructured) bool {
		n, _, _ := unstructured.NestedInt64(u.Object, "status", "escalationCount")
		return observed(u) && n == 1 && conditionIs(u, "Ready", "False", "") && !conditionIs(u, "Escalated", "True", "")
	})
	a.check("machine-escalated", handling, argocdhealth.Progressing)
	mark = lobby.after(lobby.await(t, lobby.after(handling), "ready after the reset", fleetReady))

	killContainer(NewWithT(t), &vendingv1alpha1.VendingMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "lobby-0"}})
	a.check("escalated", lobby.await(t, mark, "escalated to humans", func(u *unstructured.Unstructured) bool {
		return observed(u) && conditionIs(u, "Escalated", "True", "")
	}), argocdhealth.Degraded)
}

// argoChecks checks the Argo CD health of live objects of one kind, and keeps them, to be
// written as fixtures when every check passed.
type argoChecks struct {
	t        *testing.T
	kind     string
	script   string
	fixtures map[string][]byte
	tests    []argocdhealth.Test
}

func newArgoChecks(t *testing.T, kind string) *argoChecks {
	script, err := argocdhealth.ReadScript(filepath.Join(customizations, kind))
	if err != nil {
		t.Fatal(err)
	}
	a := &argoChecks{t: t, kind: kind, script: script, fixtures: map[string][]byte{}}
	t.Cleanup(a.write)
	return a
}

// check runs the kind's health.lua on the object as Argo CD would and expects the health want,
// with a message, and kstatus to agree with it.
func (a *argoChecks) check(name string, u *unstructured.Unstructured, want string) {
	t := a.t
	t.Helper()
	got, err := argocdhealth.Run(a.script, u.DeepCopy().Object)
	if err != nil {
		t.Errorf("%s %s: %v", a.kind, name, err)
		return
	}
	ks, err := status.Compute(u)
	if err != nil {
		t.Errorf("%s %s: kstatus: %v", a.kind, name, err)
		return
	}
	t.Logf("%s %-24s Argo CD %-11s kstatus %-10s %s", a.kind, name, got.Status, ks.Status, got.Message)
	if got.Status != want || got.Message == "" {
		t.Errorf("%s %s: Argo CD health %+v, want %s with a message; the object:\n%s", a.kind, name, got, want, kubectlYAML(t, u))
	}
	if err := argocdhealth.Agree(ks.Status, got.Status, u.Object); err != nil {
		t.Errorf("%s %s: %v", a.kind, name, err)
	}
	path := "testdata/" + name + ".yaml"
	a.fixtures[path] = kubectlYAML(t, u)
	a.tests = append(a.tests, argocdhealth.Test{HealthStatus: got, InputPath: path})
}

// write puts the objects checked, as kubectl get -o yaml shows them, in place of the kind's
// fixtures, and their cases in its health_test.yaml (keeping the hand-written ones), when
// E2E_ARGOCD_FIXTURES names the directory and every check passed.
func (a *argoChecks) write() {
	dir := os.Getenv(fixturesEnv)
	if dir == "" || a.t.Failed() {
		return
	}
	dir = filepath.Join(dir, a.kind)
	for path, b := range a.fixtures {
		if err := os.WriteFile(filepath.Join(dir, path), b, 0o644); err != nil {
			a.t.Error(err)
		}
	}
	tests, err := argocdhealth.ReadTests(dir)
	if err != nil {
		a.t.Error(err)
		return
	}
	b, err := yaml.Marshal(argocdhealth.Merge(tests, a.tests))
	if err != nil {
		a.t.Error(err)
		return
	}
	if err := os.WriteFile(filepath.Join(dir, argocdhealth.TestsFile), b, 0o644); err != nil {
		a.t.Error(err)
	}
	a.t.Logf("wrote %d %s fixtures to %s", len(a.fixtures), a.kind, dir)
}

// kubectlYAML is the object as kubectl get -o yaml prints it (without managedFields).
func kubectlYAML(t *testing.T, u *unstructured.Unstructured) []byte {
	var buf bytes.Buffer
	p := &printers.OmitManagedFieldsPrinter{Delegate: &printers.YAMLPrinter{}}
	if err := p.PrintObj(u, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// argoNamespace is a namespace of the test's own, deleted after it unless it failed and
// E2E_KEEP is set.
func argoNamespace(t *testing.T) string { return testNamespace(t, "e2e-argocd-") }

func dynamicClient(t *testing.T) *dynamic.DynamicClient {
	cfg, err := ctrl.GetConfig()
	if err != nil {
		t.Fatal(err)
	}
	d, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// liveMachine is a machine like createMachine's (faults enabled, its claim deleted with it).
func liveMachine(ns, name string, mutate func(*vendingv1alpha1.VendingMachine)) *vendingv1alpha1.VendingMachine {
	vm := &vendingv1alpha1.VendingMachine{
		TypeMeta:   metav1.TypeMeta{APIVersion: vendingv1alpha1.GroupVersion.String(), Kind: "VendingMachine"},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       vendingv1alpha1.VendingMachineSpec{EnableFaultInjection: true, Image: os.Getenv("E2E_VENDING_IMAGE")},
	}
	vm.Spec.Storage.WhenDeleted = vendingv1alpha1.DeletePVC
	mutate(vm)
	return vm
}

// createLive creates the object and returns it as the API server answered: new, as a GitOps
// tool sees it right after applying it, before the operator wrote anything.
func createLive(t *testing.T, res dynamic.ResourceInterface, obj runtime.Object) *unstructured.Unstructured {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		t.Fatal(err)
	}
	u, err := res.Create(context.Background(), &unstructured.Unstructured{Object: m}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// setPaused sets spec.paused and returns the object as the API server answered: a new
// generation the operator has not observed yet.
func setPaused(t *testing.T, res dynamic.ResourceInterface, name string, paused bool) *unstructured.Unstructured {
	patch := []byte(`{"spec":{"paused":false}}`)
	if paused {
		patch = []byte(`{"spec":{"paused":true}}`)
	}
	u, err := res.Patch(context.Background(), name, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// versions records every version of one object, through a watch started before the object
// exists (and resumed from the last version seen when the server ends it), so that a phase the
// object passes through is seen however briefly it lasts.
type versions struct {
	mu   sync.Mutex
	seen []*unstructured.Unstructured
}

func watchObject(t *testing.T, res dynamic.ResourceInterface, name string) *versions {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	v := &versions{}
	opts := func(rv string) metav1.ListOptions {
		return metav1.ListOptions{FieldSelector: "metadata.name=" + name, ResourceVersion: rv}
	}
	// The first watch is open before the object is created: it sees every version.
	w, err := res.Watch(ctx, opts(""))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		rv := ""
		for {
			for ev := range w.ResultChan() {
				u, ok := ev.Object.(*unstructured.Unstructured)
				switch {
				case !ok || ev.Type == watch.Error: // e.g. the version is too old: list again
					rv = ""
				case ev.Type == watch.Added || ev.Type == watch.Modified:
					rv = u.GetResourceVersion()
					v.add(u)
				}
			}
			w.Stop()
			for ctx.Err() == nil {
				if w, err = res.Watch(ctx, opts(rv)); err == nil {
					break
				}
				time.Sleep(time.Second)
			}
			if ctx.Err() != nil {
				return
			}
		}
	}()
	return v
}

func (v *versions) add(u *unstructured.Unstructured) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if n := len(v.seen); n > 0 && v.seen[n-1].GetResourceVersion() == u.GetResourceVersion() {
		return // a resumed watch's first event
	}
	v.seen = append(v.seen, u)
}

func (v *versions) len() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.seen)
}

// after is the index just after version u.
func (v *versions) after(u *unstructured.Unstructured) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	for i := range v.seen {
		if v.seen[i] == u {
			return i + 1
		}
	}
	return len(v.seen)
}

// await waits for the first version from index from on that matches, and returns it.
func (v *versions) await(t *testing.T, from int, what string, match func(*unstructured.Unstructured) bool) *unstructured.Unstructured {
	t.Helper()
	var found *unstructured.Unstructured
	NewWithT(t).Eventually(func() bool {
		v.mu.Lock()
		defer v.mu.Unlock()
		for _, u := range v.seen[min(from, len(v.seen)):] {
			if match(u) {
				found = u
				return true
			}
		}
		return false
	}).WithTimeout(4*time.Minute).Should(BeTrue(), "no version of the object was %s; the versions seen:\n%s", what, v)
	return found
}

// String lists the versions seen, one a line: what the awaiting tells apart.
func (v *versions) String() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var b strings.Builder
	for i, u := range v.seen {
		og, _, _ := unstructured.NestedInt64(u.Object, "status", "observedGeneration")
		phase, _, _ := unstructured.NestedString(u.Object, "status", "phase")
		escalations, _, _ := unstructured.NestedInt64(u.Object, "status", "escalationCount")
		fmt.Fprintf(&b, "%3d rv %s generation %d observed %d phase %s escalations %d:", i, u.GetResourceVersion(), u.GetGeneration(),
			og, phase, escalations)
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			c, _ := c.(map[string]any)
			fmt.Fprintf(&b, " %v=%v(%v)", c["type"], c["status"], c["reason"])
		}
		b.WriteString("\n")
	}
	return b.String()
}

// observed: the status describes the object's current generation.
func observed(u *unstructured.Unstructured) bool {
	g, found, _ := unstructured.NestedInt64(u.Object, "status", "observedGeneration")
	return found && g == u.GetGeneration()
}

// conditionIs: the object has condition t with status want, and that reason unless reason is "".
func conditionIs(u *unstructured.Unstructured, t, want, reason string) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		c, _ := c.(map[string]any)
		if c["type"] == t {
			return c["status"] == want && (reason == "" || c["reason"] == reason)
		}
	}
	return false
}

func phaseIs(u *unstructured.Unstructured, p vendingv1alpha1.MachinePhase) bool {
	phase, _, _ := unstructured.NestedString(u.Object, "status", "phase")
	return phase == string(p)
}

func machineRunning(u *unstructured.Unstructured) bool {
	return observed(u) && phaseIs(u, vendingv1alpha1.PhaseRunning)
}

func fleetReady(u *unstructured.Unstructured) bool {
	return observed(u) && conditionIs(u, "Ready", "True", "")
}
