package controller

import (
	"fmt"
	"testing"

	. "github.com/onsi/gomega"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
)

// Red team: pausing an escalated machine (a human takes over while they look) must not hide
// the escalation from kstatus: it stays Failed, with the escalation's reason on Stalled, across
// an operator restart; and once resumed and reset, Stalled is gone and it is Current again.
func TestKstatusOfAPausedEscalatedMachine(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	vm := createMachine(t, ns, "paused-escalated", fastBackoff(0))
	kubeletRun(g, waitPod(g, vm, 0))
	kubeletFail(g, waitPod(g, vm, 0), 2, failureMessage("Panic"))
	g.Eventually(func(g Gomega) { g.Expect(kstatusOf(g, vm).Status).To(Equal(status.FailedStatus)) }).Should(Succeed())

	patchMachine(g, vm, `{"spec":{"paused":true}}`)
	g.Eventually(func(g Gomega) {
		got := getMachine(g, vm)
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhasePaused))
		g.Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
	}).Should(Succeed())
	expectStalledByEscalation(g, vm)

	// A new operator process reads the same memory: still Failed.
	g.Expect(restartManager()).To(Succeed())
	patchMachine(g, vm, `{"metadata":{"annotations":{"redteam/touched":"after-restart"}}}`) // wakes the new process
	expectStalledByEscalation(g, vm)

	patchMachine(g, vm, fmt.Sprintf(`{"spec":{"paused":false},"metadata":{"annotations":{%q:"r1"}}}`, annotationReset))
	kubeletRun(g, waitPod(g, vm, 1))
	g.Eventually(func(g Gomega) { g.Expect(kstatusOf(g, vm).Status).To(Equal(status.CurrentStatus)) }).Should(Succeed())
	g.Expect(condition(getMachine(g, vm), vendingv1alpha1.ConditionStalled)).To(BeNil(), "Stalled lingers after the reset")
}

// expectStalledByEscalation: kstatus Failed, Stalled carrying the Escalated condition's reason,
// and no Reconciling beside it.
func expectStalledByEscalation(g Gomega, vm *vendingv1alpha1.VendingMachine) {
	g.Expect(kstatusOf(g, vm).Status).To(Equal(status.FailedStatus))
	got := getMachine(g, vm)
	stalled := condition(got, vendingv1alpha1.ConditionStalled)
	g.Expect(stalled).NotTo(BeNil())
	g.Expect(stalled.Reason).To(Equal(condition(got, vendingv1alpha1.ConditionEscalated).Reason))
	g.Expect(condition(got, vendingv1alpha1.ConditionReconciling)).To(BeNil())
}
