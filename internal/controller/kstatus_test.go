package controller

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/supervisor"
)

// kstatusTable collects what kstatus (the library Flux, kpt and cli-utils use to wait on
// resources) computes for an object in each phase, as the API server serves it, and prints
// the table at the end.
type kstatusTable struct {
	t    *testing.T
	rows []string
}

func (k *kstatusTable) print() {
	k.t.Logf("kstatus of every phase:\n%-40s %-11s %s\n%s", "PHASE", "KSTATUS", "MESSAGE", strings.Join(k.rows, "\n"))
}

// expect waits until kstatus computes want for obj's current state on the API server (the
// operator may still be on its way there), and records the row.
func (k *kstatusTable) expect(g Gomega, phase string, obj client.Object, want status.Status) {
	var res *status.Result
	g.Eventually(func(g Gomega) {
		res = kstatusOf(g, obj)
		g.Expect(res.Status).To(Equal(want), "%s: %s", phase, res.Message)
	}).Should(Succeed())
	k.rows = append(k.rows, fmt.Sprintf("%-40s %-11s %s", phase, res.Status, res.Message))
}

func kstatusOf(g Gomega, obj client.Object) *status.Result {
	u := &unstructured.Unstructured{}
	gvk, err := k8sClient.GroupVersionKindFor(obj)
	g.Expect(err).NotTo(HaveOccurred())
	u.SetGroupVersionKind(gvk)
	g.Expect(k8sClient.Get(context.Background(), client.ObjectKeyFromObject(obj), u)).To(Succeed())
	res, err := status.Compute(u)
	g.Expect(err).NotTo(HaveOccurred())
	return res
}

// A machine in every phase is what a kstatus-based tool should see: InProgress while the
// operator works (a new machine, a pod starting, a backoff, a roll), Current when Ready
// (paused too: the operator does not act, the pod serves), and Failed (not a wait until the
// timeout) when only a human can help: escalated or stopped.
func TestKstatusOfEveryPhase(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	table := &kstatusTable{t: t}
	defer table.print()
	setPodState(contract.State{TotalCoins: 7, Sequence: 3})

	// New: what the create call returns, before the operator wrote any status. The CRD's
	// status default (observedGeneration 0) makes it InProgress rather than Current.
	created := &unstructured.Unstructured{}
	created.SetGroupVersionKind(vendingv1alpha1.GroupVersion.WithKind("VendingMachine"))
	created.SetNamespace(ns)
	created.SetName("coffee")
	g.Expect(k8sClient.Create(ctx, created)).To(Succeed())
	res, err := status.Compute(created)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.Status).To(Equal(status.InProgressStatus), res.Message)
	table.rows = append(table.rows, fmt.Sprintf("%-40s %-11s %s", "new (as created)", res.Status, res.Message))
	vm := newMachine(ns, "coffee", nil)

	waitReconciling(g, vm, ReasonStartingPod)
	table.expect(g, "pending (pod not ready)", vm, status.InProgressStatus)
	pod := waitPod(g, vm, 0)
	kubeletRun(g, pod)
	table.expect(g, "ready", vm, status.CurrentStatus)
	got := getMachine(g, vm)
	g.Expect(condition(got, vendingv1alpha1.ConditionReconciling)).To(BeNil(), "abnormal-true: absent while False")
	g.Expect(condition(got, vendingv1alpha1.ConditionStalled)).To(BeNil(), "abnormal-true: absent while False")

	// Degraded: out of milk, serving the rest of the menu (its state is read as its pod turns Ready).
	setPodState(contract.State{TotalCoins: 7, Sequence: 3, Degraded: true})
	milk := createMachine(t, ns, "milk", nil)
	kubeletRun(g, waitPod(g, milk, 0))
	g.Eventually(func(g Gomega) {
		g.Expect(getMachine(g, milk).Status.Phase).To(Equal(vendingv1alpha1.PhaseDegraded))
	}).Should(Succeed())
	table.expect(g, "degraded (out of milk, serving)", milk, status.CurrentStatus)
	setPodState(contract.State{TotalCoins: 7, Sequence: 3})

	// Paused: the operator acts on nothing; the pod still serves.
	patchMachine(g, vm, `{"spec":{"paused":true}}`)
	g.Eventually(func(g Gomega) { g.Expect(getMachine(g, vm).Status.Phase).To(Equal(vendingv1alpha1.PhasePaused)) }).Should(Succeed())
	table.expect(g, "paused (pod ready)", vm, status.CurrentStatus)
	patchMachine(g, vm, `{"spec":{"paused":false}}`)
	table.expect(g, "resumed", vm, status.CurrentStatus)

	// Rolling: a change to the supervision policy rolls the pod (both levels apply one policy).
	patchMachine(g, vm, `{"spec":{"supervision":{"maxRestarts":9}}}`)
	waitReconciling(g, vm, ReasonRolling)
	table.expect(g, "rolling (new template)", vm, status.InProgressStatus)
	kubeletRun(g, waitPod(g, vm, 1))
	table.expect(g, "rolled", vm, status.CurrentStatus)

	// Backing off: a failure, then an hour's backoff before the restart.
	patchMachine(g, vm, `{"spec":{"supervision":{"backoff":{"initial":"1h","max":"1h"}}}}`)
	kubeletRun(g, waitPod(g, vm, 2))
	table.expect(g, "ready again", vm, status.CurrentStatus)
	kubeletFail(g, waitPod(g, vm, 2), contract.ExitOutOfCoffeeBeans, outOfBeansMessage("o-1"))
	waitReconciling(g, vm, ReasonBackingOff)
	table.expect(g, "backing off (restart in 1h)", vm, status.InProgressStatus)

	// Restarting: no backoff; the new pod is not ready yet.
	fast := createMachine(t, ns, "fast", fastBackoff(0))
	kubeletRun(g, waitPod(g, fast, 0))
	table.expect(g, "ready (second machine)", fast, status.CurrentStatus)
	kubeletFail(g, waitPod(g, fast, 0), contract.ExitOutOfCoffeeBeans, outOfBeansMessage("o-2"))
	waitPod(g, fast, 1)
	table.expect(g, "restarting (new pod not ready)", fast, status.InProgressStatus)

	// Escalated: a failure its decider does not list. Failed at once, with the escalation's words.
	kubeletFail(g, waitPod(g, fast, 1), 2, failureMessage("Panic"))
	table.expect(g, "escalated", fast, status.FailedStatus)
	got = getMachine(g, fast)
	stalled, escalated := condition(got, vendingv1alpha1.ConditionStalled), condition(got, vendingv1alpha1.ConditionEscalated)
	g.Expect(stalled.Reason).To(Equal(escalated.Reason))
	g.Expect(stalled.Message).To(Equal(escalated.Message))
	g.Expect(stalled.ObservedGeneration).To(Equal(got.Generation))
	g.Expect(condition(got, vendingv1alpha1.ConditionReconciling)).To(BeNil(), "never Reconciling and Stalled at once")

	// Reset: the machine works again, and Stalled goes away.
	patchMachine(g, fast, fmt.Sprintf(`{"metadata":{"annotations":{%q:"r1"}}}`, annotationReset))
	kubeletRun(g, waitPod(g, fast, 2))
	table.expect(g, "reset, ready", fast, status.CurrentStatus)
	g.Expect(condition(getMachine(g, fast), vendingv1alpha1.ConditionStalled)).To(BeNil())

	// Stopped: the decider says Stop.
	stop := createMachine(t, ns, "stop", func(vm *vendingv1alpha1.VendingMachine) {
		vm.Spec.Supervision.Decider = []vendingv1alpha1.DeciderRule{{Reason: "Panic", Action: vendingv1alpha1.ActionStop}}
	})
	kubeletRun(g, waitPod(g, stop, 0))
	kubeletFail(g, waitPod(g, stop, 0), 2, failureMessage("Panic"))
	g.Eventually(func(g Gomega) { g.Expect(getMachine(g, stop).Status.Phase).To(Equal(vendingv1alpha1.PhaseStopped)) }).Should(Succeed())
	table.expect(g, "stopped (decider: Stop)", stop, status.FailedStatus)
	g.Expect(condition(getMachine(g, stop), vendingv1alpha1.ConditionStalled).Reason).To(Equal(ReasonStopped))
}

// A fleet: Current when its machines are Ready (some out of milk too), InProgress while it
// handles a machine's escalation itself, Failed once it escalated to humans.
func TestKstatusOfAFleet(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	table := &kstatusTable{t: t}
	defer table.print()
	setPodState(contract.State{TotalCoins: 7, Sequence: 3})
	f := createFleet(t, ns, 2, func(f *vendingv1alpha1.VendingFleet) { f.Spec.Intensity.MaxEscalations = ptr.To[int32](1) })
	table.expect(g, "fleet: machines starting", f, status.InProgressStatus)
	setPodState(contract.State{TotalCoins: 7, Sequence: 3, Degraded: true}) // read as the pods turn Ready
	runFleet(g, f, 2)
	g.Eventually(func(g Gomega) {
		g.Expect(fleetCondition(getFleet(g, f), vendingv1alpha1.ConditionDegraded).Reason).To(Equal(ReasonMachinesDegraded))
	}).Should(Succeed())
	table.expect(g, "fleet: ready, degraded (out of milk)", f, status.CurrentStatus)
	setPodState(contract.State{TotalCoins: 7, Sequence: 3})

	// A machine escalates to the fleet; the fleet resets it (its one escalation): the fleet is
	// not there yet, but working on it.
	kubeletFail(g, waitPod(g, fleetMachine(ns, 0), 0), 2, failureMessage("Panic"))
	waitPod(g, fleetMachine(ns, 0), 1)
	table.expect(g, "fleet: resetting an escalated machine", f, status.InProgressStatus)
	g.Expect(fleetCondition(getFleet(g, f), vendingv1alpha1.ConditionStalled).Type).To(BeEmpty(),
		"a machine escalated to the fleet is the fleet's to handle, not a human's")
	kubeletRun(g, waitPod(g, fleetMachine(ns, 0), 1))
	table.expect(g, "fleet: ready after the reset", f, status.CurrentStatus)

	// Past its intensity, the fleet escalates to humans: Failed.
	kubeletFail(g, waitPod(g, fleetMachine(ns, 0), 1), 2, failureMessage("Panic"))
	table.expect(g, "fleet: escalated to humans", f, status.FailedStatus)
	got := getFleet(g, f)
	g.Expect(fleetCondition(got, vendingv1alpha1.ConditionStalled).Reason).To(Equal(ReasonIntensityExceeded))
	g.Expect(fleetCondition(got, vendingv1alpha1.ConditionReconciling).Type).To(BeEmpty())
}

// waitReconciling waits until the machine says Reconciling for that reason.
func waitReconciling(g Gomega, vm *vendingv1alpha1.VendingMachine, reason string) {
	g.Eventually(func(g Gomega) {
		c := condition(getMachine(g, vm), vendingv1alpha1.ConditionReconciling)
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.Reason).To(Equal(reason))
	}).Should(Succeed())
}

func patchMachine(g Gomega, vm *vendingv1alpha1.VendingMachine, mergePatch string) {
	g.Expect(k8sClient.Patch(context.Background(), newMachine(vm.Namespace, vm.Name, nil),
		client.RawPatch("application/merge-patch+json", []byte(mergePatch)))).To(Succeed())
}

// Stalled says why a machine needs a human in the decider's words, also while it is paused
// (Progressing then says "paused"; Argo CD shows Stalled's message as the Degraded message).
func TestStalledOfAPausedStoppedMachineSaysTheDecision(t *testing.T) {
	vm := &vendingv1alpha1.VendingMachine{ObjectMeta: metav1.ObjectMeta{Name: "m", Namespace: "n", Generation: 2}}
	vm.Spec.Paused = true
	vm.Status.PodName = "m-0"
	vm.Status.LastFailure = &vendingv1alpha1.Failure{PodName: "m-0", Reason: "Panic", Action: vendingv1alpha1.ActionStop,
		DecisionReason: "DeciderStops", DecisionMessage: "the decider stops the machine on Panic"}
	st := computeStatus(vm, supervisor.Step{Memory: supervisor.MemoryOf(&vm.Status)}, observation{}, time.Now())
	stalled := meta.FindStatusCondition(st.Conditions, vendingv1alpha1.ConditionStalled)
	if stalled == nil || stalled.Reason != ReasonStopped || stalled.Message != "the decider stops the machine on Panic" {
		t.Fatalf("Stalled = %+v, want Stopped with the decider's message", stalled)
	}
}
