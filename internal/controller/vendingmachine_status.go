package controller

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/fleet"
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
	// ReasonCorruptLog on Escalated (of a machine or a fleet): the machine's log is corrupt and
	// waits for humans with its claim intact.
	ReasonCorruptLog = "CorruptLog"
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
	if escalated(o) && o.decision.Failure.Reason == contract.ReasonCorruptLog {
		return cond(t, metav1.ConditionTrue, ReasonCorruptLog, corruptLogMessage(vm, o.current, o.decision.Failure, o.decision.Message))
	}
	if escalated(o) {
		return cond(t, metav1.ConditionTrue, o.decision.Reason,
			fmt.Sprintf("%s. Escalated to %s; no more restarts until the machine is reset (annotation %s).",
				o.decision.Message, o.escalatedTo, annotationReset))
	}
	return cond(t, metav1.ConditionFalse, ReasonWithinBudget,
		fmt.Sprintf("%d of %d restarts used within the window", recent, policyOf(vm).MaxRestarts))
}

// corruptLogMessage says, on an escalated machine whose log is corrupt, what is affected, where
// the evidence is, who has the escalation and what a human can do next. A machine never starts
// on a new log by itself: only its fleet can, and only when its spec.corruptLog.policy opts in.
func corruptLogMessage(vm *vendingv1alpha1.VendingMachine, pod *corev1.Pod, f vendingv1alpha1.Failure, decided string) string {
	claim := claimOf(vm, pod)
	var who string
	ref := metav1.GetControllerOf(vm)
	switch {
	case ref != nil && ref.Kind == kindVendingFleet && pod != nil && vm.Annotations[annotationCorruptLogHeld] == pod.Name:
		who = fmt.Sprintf("VendingFleet %s escalated it to humans and keeps the claim as it is (spec.corruptLog.policy: Escalate)", ref.Name)
	case ref != nil && ref.Kind == kindVendingFleet:
		who = fmt.Sprintf("Escalated to VendingFleet %s, whose spec.corruptLog.policy decides: Escalate (the default) "+
			"keeps the claim for humans, StartNewLog quarantines it and starts the machine on a new, empty log", ref.Name)
	default:
		who = "Escalated to humans: a machine never starts on a new log by itself"
	}
	next := fmt.Sprintf("Then repair or restore the log and reset the machine (kubectl annotate vend %s %s=<new value> --overwrite)",
		vm.Name, annotationReset)
	if ref != nil && ref.Kind == kindVendingFleet {
		next += fmt.Sprintf(", or give up what the log acknowledged: set VendingFleet %s spec.corruptLog.policy to StartNewLog", ref.Name)
	}
	return fmt.Sprintf("pod %s cannot open its event log: %s; %s. "+
		"The machine's coins, pending orders and idempotency keys are out of service until the log opens again. %s. "+
		"%s %s.",
		f.PodName, evidenceOf(claim, f), decided, who, fleet.InspectHint(claim), next)
}

func evidenceOf(claim string, f vendingv1alpha1.Failure) fleet.Evidence {
	return fleet.Evidence{Claim: claim, Pod: f.PodName, File: f.File, Offset: f.Offset, Sequence: f.Sequence}
}

// claimOf is the claim the pod really had (a fleet may have moved the machine to a new log
// since), or the machine's current claim without a pod.
func claimOf(vm *vendingv1alpha1.VendingMachine, pod *corev1.Pod) string {
	if pod != nil {
		for _, v := range pod.Spec.Volumes {
			if v.PersistentVolumeClaim != nil {
				return v.PersistentVolumeClaim.ClaimName
			}
		}
	}
	return pvcName(vm)
}

// corruptLogSummary is the one line an event says about a corrupt log: which machine, claim,
// file and offset. The conditions carry the rest (what next), as events are short.
func corruptLogSummary(machine string, e fleet.Evidence) string {
	return fmt.Sprintf("machine %s: %s; the claim is kept as it is", machine, e)
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
