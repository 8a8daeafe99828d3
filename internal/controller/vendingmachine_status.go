package controller

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/supervision"
)

// observation is what one reconcile pass saw and decided; status is a pure function of it.
type observation struct {
	current  *corev1.Pod
	decision *recordedDecision // about the current pod's failure, when it failed
	state    *contract.State   // what the pod reported, when it was reachable
	// progress names what the supervisor is doing this pass: Creating, Restarting, BackingOff,
	// Rolling, Recreating; empty when it waits for nothing.
	progress      string
	nextRestartAt *time.Time
	// escalatedTo says who got the escalation: a VendingFleet, or humans.
	escalatedTo string
}

// Condition reasons.
const (
	ReasonPodReady     = "PodReady"
	ReasonPodNotReady  = "PodNotReady"
	ReasonPodFailed    = "PodFailed"
	ReasonNoPod        = "NoPod"
	ReasonPaused       = "Paused"
	ReasonStable       = "Stable"
	ReasonStopped      = "Stopped"
	ReasonEscalated    = "Escalated"
	ReasonWithinBudget = "WithinRestartBudget"
	ReasonOutOfMilk    = "OutOfMilk"
	ReasonFullMenu     = "FullMenu"
	ReasonStateUnknown = "StateUnknown"
	ReasonBackingOff   = "BackingOff"
	ReasonCreating     = "Creating"
	ReasonRestarting   = "Restarting"
	ReasonRolling      = "Rolling"
	ReasonRecreating   = "Recreating"
	ReasonStartingPod  = "StartingPod"
)

// computeStatus rebuilds the machine's status from one pass's observation. It reads nothing
// from the previous status but what it cannot observe elsewhere: the conditions' transition
// times (kept by meta.SetStatusCondition).
func computeStatus(vm *vendingv1alpha1.VendingMachine, o observation, now time.Time) vendingv1alpha1.VendingMachineStatus {
	st := vendingv1alpha1.VendingMachineStatus{
		ObservedGeneration: vm.Generation,
		Conditions:         vm.Status.Conditions,
		Endpoint:           endpoint(vm),
		LogClaim:           pvcName(vm),
		ObservedReset:      vm.Annotations[annotationReset],
	}
	if pod := o.current; pod != nil {
		st.ObservedReset = pod.Annotations[annotationReset]
		st.PodName = pod.Name
		st.Restarts = incarnation(pod)
		for _, t := range supervision.RecentRestarts(restartHistory(pod), policyOf(vm).Window, now) {
			st.RestartTimes = append(st.RestartTimes, metav1.NewTime(t))
		}
		st.LastFailure = lastFailureOf(pod)
	}
	if o.nextRestartAt != nil {
		t := metav1.NewTime(*o.nextRestartAt)
		st.NextRestartAt = &t
	}
	if o.state != nil {
		st.TotalCoins, st.Sequence = ptrInt64(o.state.TotalCoins), ptrInt64(int64(o.state.Sequence))
	}
	ready := o.current != nil && o.current.DeletionTimestamp == nil && !podTerminal(o.current) && podReady(o.current)
	for _, c := range []metav1.Condition{
		readyCondition(o.current, ready),
		escalatedCondition(vm, o, len(st.RestartTimes)),
		progressingCondition(vm, o, ready, st.NextRestartAt),
		degradedCondition(o, ready),
	} {
		c.ObservedGeneration = vm.Generation
		meta.SetStatusCondition(&st.Conditions, c)
	}
	st.Phase = phaseOf(vm, o, ready)
	return st
}

func cond(t string, s metav1.ConditionStatus, reason, msg string) metav1.Condition {
	return metav1.Condition{Type: t, Status: s, Reason: reason, Message: msg}
}

func readyCondition(pod *corev1.Pod, ready bool) metav1.Condition {
	const t = vendingv1alpha1.ConditionReady
	switch {
	case ready:
		return cond(t, metav1.ConditionTrue, ReasonPodReady,
			fmt.Sprintf("pod %s is ready: its event log is replayed and it serves customers", pod.Name))
	case pod == nil:
		return cond(t, metav1.ConditionFalse, ReasonNoPod, "the machine has no pod")
	case podTerminal(pod):
		return cond(t, metav1.ConditionFalse, ReasonPodFailed, fmt.Sprintf("pod %s failed", pod.Name))
	}
	return cond(t, metav1.ConditionFalse, ReasonPodNotReady,
		fmt.Sprintf("pod %s is not ready yet (replaying its event log, or starting)", pod.Name))
}

func escalated(o observation) bool {
	return o.decision != nil && o.decision.Action == supervision.Escalate
}
func stopped(o observation) bool { return o.decision != nil && o.decision.Action == supervision.Stop }

func escalatedCondition(vm *vendingv1alpha1.VendingMachine, o observation, recent int) metav1.Condition {
	const t = vendingv1alpha1.ConditionEscalated
	if escalated(o) {
		return cond(t, metav1.ConditionTrue, o.decision.Reason,
			fmt.Sprintf("%s. Escalated to %s; no more restarts until the machine is reset (annotation %s).",
				o.decision.Message, o.escalatedTo, annotationReset))
	}
	return cond(t, metav1.ConditionFalse, ReasonWithinBudget,
		fmt.Sprintf("%d of %d restarts used within the window", recent, policyOf(vm).MaxRestarts))
}

func progressingCondition(vm *vendingv1alpha1.VendingMachine, o observation, ready bool, next *metav1.Time) metav1.Condition {
	const t = vendingv1alpha1.ConditionProgressing
	switch {
	case vm.Spec.Paused:
		return cond(t, metav1.ConditionFalse, ReasonPaused, "spec.paused: the supervisor does not act")
	case escalated(o):
		return cond(t, metav1.ConditionFalse, ReasonEscalated, "escalated: the supervisor waits for a reset")
	case stopped(o):
		return cond(t, metav1.ConditionFalse, ReasonStopped, o.decision.Message)
	case o.progress == ReasonBackingOff && next != nil:
		return cond(t, metav1.ConditionTrue, ReasonBackingOff,
			fmt.Sprintf("restarting at %s (%s)", next.UTC().Format(time.RFC3339), o.decision.Message))
	case o.progress != "":
		return cond(t, metav1.ConditionTrue, o.progress, "the supervisor is bringing a pod up")
	case !ready:
		return cond(t, metav1.ConditionTrue, ReasonStartingPod, "waiting for the pod to become ready")
	}
	return cond(t, metav1.ConditionFalse, ReasonStable, "the machine's pod is running")
}

func degradedCondition(o observation, ready bool) metav1.Condition {
	const t = vendingv1alpha1.ConditionDegraded
	switch {
	case ready && o.state != nil && o.state.Degraded:
		return cond(t, metav1.ConditionTrue, ReasonOutOfMilk, "out of milk: serving beverages without milk only")
	case ready && o.state != nil:
		return cond(t, metav1.ConditionFalse, ReasonFullMenu, "serving the whole menu")
	}
	return cond(t, metav1.ConditionUnknown, ReasonStateUnknown, "the machine's state was not read")
}

func phaseOf(vm *vendingv1alpha1.VendingMachine, o observation, ready bool) vendingv1alpha1.MachinePhase {
	switch {
	case vm.Spec.Paused:
		return vendingv1alpha1.PhasePaused
	case escalated(o):
		return vendingv1alpha1.PhaseEscalated
	case stopped(o):
		return vendingv1alpha1.PhaseStopped
	case o.current != nil && podTerminal(o.current), o.progress == ReasonRestarting, o.progress == ReasonRecreating:
		return vendingv1alpha1.PhaseRestarting
	case !ready:
		return vendingv1alpha1.PhasePending
	case o.state != nil && o.state.Degraded:
		return vendingv1alpha1.PhaseDegraded
	}
	return vendingv1alpha1.PhaseRunning
}

func ptrInt64(v int64) *int64 { return &v }
