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
	}
	gen := vm.Generation
	set := func(t string, s metav1.ConditionStatus, reason, msg string) {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen})
	}
	pod := o.current
	if pod != nil {
		st.PodName = pod.Name
		st.Restarts = incarnation(pod)
		hist := supervision.RecentRestarts(restartHistory(pod), policyOf(vm).Window, now)
		for _, t := range hist {
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

	ready := pod != nil && pod.DeletionTimestamp == nil && !podTerminal(pod) && podReady(pod)
	switch {
	case ready:
		set(vendingv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonPodReady,
			fmt.Sprintf("pod %s is ready: its event log is replayed and it serves customers", pod.Name))
	case pod == nil:
		set(vendingv1alpha1.ConditionReady, metav1.ConditionFalse, ReasonNoPod, "the machine has no pod")
	case podTerminal(pod):
		set(vendingv1alpha1.ConditionReady, metav1.ConditionFalse, ReasonPodFailed, fmt.Sprintf("pod %s failed", pod.Name))
	default:
		set(vendingv1alpha1.ConditionReady, metav1.ConditionFalse, ReasonPodNotReady,
			fmt.Sprintf("pod %s is not ready yet (replaying its event log, or starting)", pod.Name))
	}

	escalated := o.decision != nil && o.decision.Action == supervision.Escalate
	stopped := o.decision != nil && o.decision.Action == supervision.Stop
	if escalated {
		set(vendingv1alpha1.ConditionEscalated, metav1.ConditionTrue, o.decision.Reason,
			fmt.Sprintf("%s. Escalated to %s; no more restarts until the machine is reset (annotation %s).",
				o.decision.Message, o.escalatedTo, annotationReset))
	} else {
		set(vendingv1alpha1.ConditionEscalated, metav1.ConditionFalse, ReasonWithinBudget,
			fmt.Sprintf("%d of %d restarts used within the window", len(st.RestartTimes), policyOf(vm).MaxRestarts))
	}

	switch {
	case vm.Spec.Paused:
		set(vendingv1alpha1.ConditionProgressing, metav1.ConditionFalse, ReasonPaused, "spec.paused: the supervisor does not act")
	case escalated:
		set(vendingv1alpha1.ConditionProgressing, metav1.ConditionFalse, ReasonEscalated, "escalated: the supervisor waits for a reset")
	case stopped:
		set(vendingv1alpha1.ConditionProgressing, metav1.ConditionFalse, ReasonStopped, o.decision.Message)
	case o.progress == ReasonBackingOff && st.NextRestartAt != nil:
		set(vendingv1alpha1.ConditionProgressing, metav1.ConditionTrue, ReasonBackingOff,
			fmt.Sprintf("restarting at %s (%s)", st.NextRestartAt.UTC().Format(time.RFC3339), o.decision.Message))
	case o.progress != "":
		set(vendingv1alpha1.ConditionProgressing, metav1.ConditionTrue, o.progress, "the supervisor is bringing a pod up")
	case !ready:
		set(vendingv1alpha1.ConditionProgressing, metav1.ConditionTrue, ReasonStartingPod, "waiting for the pod to become ready")
	default:
		set(vendingv1alpha1.ConditionProgressing, metav1.ConditionFalse, ReasonStable, "the machine's pod is running")
	}

	degraded := ready && o.state != nil && o.state.Degraded
	switch {
	case degraded:
		set(vendingv1alpha1.ConditionDegraded, metav1.ConditionTrue, ReasonOutOfMilk,
			"out of milk: serving beverages without milk only")
	case ready && o.state != nil:
		set(vendingv1alpha1.ConditionDegraded, metav1.ConditionFalse, ReasonFullMenu, "serving the whole menu")
	default:
		set(vendingv1alpha1.ConditionDegraded, metav1.ConditionUnknown, ReasonStateUnknown, "the machine's state was not read")
	}

	switch {
	case vm.Spec.Paused:
		st.Phase = vendingv1alpha1.PhasePaused
	case escalated:
		st.Phase = vendingv1alpha1.PhaseEscalated
	case stopped:
		st.Phase = vendingv1alpha1.PhaseStopped
	case pod != nil && podTerminal(pod), o.progress == ReasonRestarting, o.progress == ReasonRecreating:
		st.Phase = vendingv1alpha1.PhaseRestarting
	case !ready:
		st.Phase = vendingv1alpha1.PhasePending
	case degraded:
		st.Phase = vendingv1alpha1.PhaseDegraded
	default:
		st.Phase = vendingv1alpha1.PhaseRunning
	}
	return st
}

func ptrInt64(v int64) *int64 { return &v }
