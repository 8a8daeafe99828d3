package vendcli

import (
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/supervisor"
)

func getMachine(t *testing.T, ns, name string) *vendingv1alpha1.VendingMachine {
	t.Helper()
	vm := &vendingv1alpha1.VendingMachine{}
	must(t, k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, vm))
	return vm
}

// wrote is the fields the plugin owns in the object's managedFields (its merge patches), as
// the API server recorded them.
func wrote(obj metav1.Object) string {
	for _, mf := range obj.GetManagedFields() {
		if mf.Manager == fieldManager && mf.FieldsV1 != nil {
			return mf.FieldsV1.GetRawString()
		}
	}
	return ""
}

// sameExcept fails unless after is before with only the annotations in changed (and
// resourceVersion, managedFields) different: spec, status, labels, generation untouched.
func sameExcept(t *testing.T, before, after *vendingv1alpha1.VendingMachine, changed map[string]string, paused *bool) {
	t.Helper()
	wantAnn := maps.Clone(before.Annotations)
	if wantAnn == nil && len(changed) > 0 {
		wantAnn = map[string]string{}
	}
	maps.Copy(wantAnn, changed)
	if !equality.Semantic.DeepEqual(after.Annotations, wantAnn) {
		t.Errorf("annotations: %v, want %v", after.Annotations, wantAnn)
	}
	wantSpec := before.Spec.DeepCopy()
	if paused != nil {
		wantSpec.Paused = *paused
	}
	if !equality.Semantic.DeepEqual(after.Spec, *wantSpec) {
		t.Errorf("spec changed beyond what was asked:\n%+v\nwant\n%+v", after.Spec, *wantSpec)
	}
	if !equality.Semantic.DeepEqual(after.Status, before.Status) {
		t.Errorf("status changed:\n%+v\nwas\n%+v", after.Status, before.Status)
	}
	if !equality.Semantic.DeepEqual(after.Labels, before.Labels) || !equality.Semantic.DeepEqual(after.OwnerReferences, before.OwnerReferences) {
		t.Errorf("labels or owners changed")
	}
}

// reset writes one annotation, a new value each time, with a merge patch that touches nothing
// else: GitOps tools keep owning the spec, and the status stays the operator's.
func TestResetWritesOnlyTheResetAnnotationANewValueEachTime(t *testing.T) {
	ns := namespace(t, "reset-coffee")
	machine(t, ns, "coffee", nil, 0, func(vm *vendingv1alpha1.VendingMachine) {
		vm.Labels = map[string]string{"team": "beans"}
		vm.Annotations = map[string]string{"owner": "gitops", supervisor.AnnotationReset: "from-git"}
		vm.Spec.Supervision.MaxRestarts = ptr.To[int32](5)
		vm.Spec.EnableFaultInjection = true
	}, escalated("coffee", "coffee-11", "humans"))
	before := getMachine(t, ns, "coffee")

	out := mustVend(t, "-n", ns, "reset", "coffee")
	if out != "vendingmachine/coffee annotated vending.resilience.dev/reset=2026-11-29T12:00:00Z\n" {
		t.Errorf("reset printed %q", out)
	}
	after := getMachine(t, ns, "coffee")
	sameExcept(t, before, after, map[string]string{supervisor.AnnotationReset: "2026-11-29T12:00:00Z"}, nil)
	if after.Generation != before.Generation {
		t.Errorf("generation %d → %d: a reset is metadata, not a new spec", before.Generation, after.Generation)
	}
	if got := wrote(after); got != `{"f:metadata":{"f:annotations":{"f:vending.resilience.dev/reset":{}}}}` {
		t.Errorf("the plugin's managed fields: %s", got)
	}
	// Until the operator carries the reset out (no operator runs here), status says it is pending.
	if out := mustVend(t, "-n", ns, "status", "coffee"); !strings.Contains(out, "RestartIntensityExceeded: reset requested, not yet carried out") {
		t.Errorf("status of a machine with a pending reset:\n%s", out)
	}

	// Again within the same second: a new value all the same (the operator resets on a change).
	again := mustVend(t, "-n", ns, "reset", "machine/coffee")
	second := getMachine(t, ns, "coffee").Annotations[supervisor.AnnotationReset]
	if second == "2026-11-29T12:00:00Z" || !strings.HasSuffix(again, "="+second+"\n") {
		t.Errorf("a second reset wrote %q (printed %q): it must be a new value", second, again)
	}
	later, err := vendAt(t, now.Add(5*time.Minute), "-n", ns, "reset", "coffee")
	must(t, err)
	if later != "vendingmachine/coffee annotated vending.resilience.dev/reset=2026-11-29T12:05:00Z\n" {
		t.Errorf("a later reset printed %q", later)
	}

	// Dry runs print and store nothing.
	before = getMachine(t, ns, "coffee")
	for mode, suffix := range map[string]string{"server": " (server dry run)\n", "client": " (dry run)\n"} {
		out, err := vendAt(t, now.Add(10*time.Minute), "-n", ns, "reset", "coffee", "--dry-run="+mode)
		must(t, err)
		if !strings.HasSuffix(out, suffix) || !strings.Contains(out, "reset=2026-11-29T12:10:00Z") {
			t.Errorf("--dry-run=%s printed %q", mode, out)
		}
	}
	if got := getMachine(t, ns, "coffee"); got.ResourceVersion != before.ResourceVersion {
		t.Errorf("a dry run changed the machine: %v", got.Annotations)
	}
	if _, err := vend(t, "-n", ns, "reset", "nosuch"); err == nil {
		t.Error("reset of a machine that does not exist must fail")
	}
}

// pause and resume write spec.paused and nothing else; a second pause writes nothing.
func TestPauseAndResumeWriteOnlySpecPaused(t *testing.T) {
	ns := namespace(t, "pause-coffee")
	machine(t, ns, "coffee", nil, 0, func(vm *vendingv1alpha1.VendingMachine) {
		vm.Annotations = map[string]string{"owner": "gitops"}
		vm.Spec.Supervision.MaxRestarts = ptr.To[int32](5)
	}, backingOffStatus())
	before := getMachine(t, ns, "coffee")

	if out := mustVend(t, "-n", ns, "pause", "coffee"); out != "vendingmachine/coffee patched spec.paused=true\n" {
		t.Errorf("pause printed %q", out)
	}
	paused := getMachine(t, ns, "coffee")
	sameExcept(t, before, paused, nil, ptr.To(true))
	if got := wrote(paused); got != `{"f:spec":{"f:paused":{}}}` {
		t.Errorf("the plugin's managed fields: %s", got)
	}
	if out := mustVend(t, "-n", ns, "pause", "coffee"); out != "vendingmachine/coffee unchanged: spec.paused is already true\n" {
		t.Errorf("a second pause printed %q", out)
	}
	if got := getMachine(t, ns, "coffee"); got.ResourceVersion != paused.ResourceVersion {
		t.Error("a second pause wrote the machine")
	}

	if out := mustVend(t, "-n", ns, "resume", "coffee"); out != "vendingmachine/coffee patched spec.paused=false\n" {
		t.Errorf("resume printed %q", out)
	}
	sameExcept(t, before, getMachine(t, ns, "coffee"), nil, ptr.To(false))
}

// reset fleet/NAME resets the fleet's stalled machines (escalated or stopped) and only them;
// pause fleet/NAME pauses the fleet, not its machines.
func TestResetAndPauseOfAFleet(t *testing.T) {
	ns := namespace(t, "reset-lobby")
	f := &vendingv1alpha1.VendingFleet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "lobby"},
		Spec: vendingv1alpha1.VendingFleetSpec{Replicas: ptr.To[int32](3)}}
	must(t, k8s.Create(context.Background(), f))
	stopped := escalated("lobby-2", "lobby-2-1", "humans")
	stopped.Conditions[3].Status, stopped.Phase = metav1.ConditionFalse, vendingv1alpha1.PhaseStopped
	stopped.Conditions[4].Reason = "Stopped"
	machine(t, ns, "lobby-0", f, 0, nil, healthy("lobby-0-1"))
	machine(t, ns, "lobby-1", f, 1, nil, escalated("lobby-1", "lobby-1-4", "VendingFleet lobby"))
	machine(t, ns, "lobby-2", f, 2, nil, stopped)
	healthyBefore := getMachine(t, ns, "lobby-0")

	out := mustVend(t, "-n", ns, "reset", "fleet/lobby")
	want := "vendingmachine/lobby-1 annotated vending.resilience.dev/reset=2026-11-29T12:00:00Z\n" +
		"vendingmachine/lobby-2 annotated vending.resilience.dev/reset=2026-11-29T12:00:00Z\n"
	if out != want {
		t.Errorf("reset fleet/lobby printed\n%s\nwant\n%s", out, want)
	}
	if got := getMachine(t, ns, "lobby-0"); got.ResourceVersion != healthyBefore.ResourceVersion {
		t.Errorf("the healthy machine was written: %v", got.Annotations)
	}
	for _, m := range []string{"lobby-1", "lobby-2"} {
		if got := getMachine(t, ns, m).Annotations[supervisor.AnnotationReset]; got != "2026-11-29T12:00:00Z" {
			t.Errorf("%s: reset annotation %q", m, got)
		}
	}

	if out := mustVend(t, "-n", ns, "pause", "vfleet/lobby"); out != "vendingfleet/lobby patched spec.paused=true\n" {
		t.Errorf("pause fleet printed %q", out)
	}
	got := &vendingv1alpha1.VendingFleet{}
	must(t, k8s.Get(context.Background(), client.ObjectKeyFromObject(f), got))
	if !got.Spec.Paused || *got.Spec.Replicas != 3 || wrote(got) != `{"f:spec":{"f:paused":{}}}` {
		t.Errorf("pause fleet wrote %+v (managed %s)", got.Spec, wrote(got))
	}
	if getMachine(t, ns, "lobby-0").Spec.Paused {
		t.Error("pausing the fleet paused its machine")
	}
}
