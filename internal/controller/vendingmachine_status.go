package controller

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/fleet"
	"github.com/vendingfleet/vending-operator/internal/supervisor"
)

// observation is what one reconcile pass saw.
type observation struct {
	pods    []corev1.Pod    // the machine's pods
	others  []corev1.Pod    // pods of its name it does not control (a predecessor's)
	state   *contract.State // what the current pod reported, when it was reachable
	stateOf string          // the pod that reported state
	// escalatedTo says who gets an escalation: a VendingFleet, or humans.
	escalatedTo string
	// nodes: the state of the nodes the pods are bound to; pinnedTo: the node the machine's
	// volume is pinned to, read when one of them is not up.
	nodes    map[string]supervisor.NodeState
	pinnedTo string
}

// pod is the machine's pod of that name, nil when there is none.
func (o observation) pod(name string) *corev1.Pod {
	for i := range o.pods {
		if o.pods[i].Name == name && name != "" {
			return &o.pods[i]
		}
	}
	return nil
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
	ReasonResetting    = "Resetting"
	ReasonStartingPod  = "StartingPod"
	// ReasonCreateRefused on Ready and Stalled: the API server refused to create the machine's
	// claim, Service or pod (RBAC, an admission policy, a quota). A human must allow it or
	// change the spec; the operator retries with backoff meanwhile.
	ReasonCreateRefused = "CreateRefused"
	// ReasonCorruptLog on Escalated (of a machine or a fleet): the machine's log is corrupt and
	// waits for humans with its claim intact.
	ReasonCorruptLog = "CorruptLog"
)

// computeStatus is the machine's status after a step: the supervisor's memory as the step
// leaves it, and the rest rebuilt from observation (the conditions' transition times are kept
// by meta.SetStatusCondition). observedGeneration is the caller's.
func computeStatus(vm *vendingv1alpha1.VendingMachine, step supervisor.Step, o observation,
	now time.Time) vendingv1alpha1.VendingMachineStatus {
	st := vendingv1alpha1.VendingMachineStatus{
		ObservedGeneration: vm.Status.ObservedGeneration,
		Conditions:         vm.Status.Conditions,
		Endpoint:           endpoint(vm),
		LogClaim:           pvcName(vm),
	}
	mem := step.Memory
	mem.WriteTo(&st)
	if step.NextRestartAt != nil {
		t := metav1.NewTime(*step.NextRestartAt)
		st.NextRestartAt = &t
	}
	pod := o.pod(mem.PodName)
	if o.state != nil && o.stateOf == mem.PodName {
		st.TotalCoins, st.Sequence = ptrInt64(o.state.TotalCoins), ptrInt64(int64(o.state.Sequence))
	}
	stuck := o.unreachable()
	ready := pod != nil && pod.DeletionTimestamp == nil && !supervisor.Terminal(pod) && supervisor.Ready(pod) && stuck == nil
	escalated, progressing := escalatedCondition(vm, mem, o), progressingCondition(vm, step, ready)
	readyCond := readyCondition(pod, mem, ready)
	if stuck != nil && !mem.Escalated() && !mem.Stopped() && !vm.Spec.Paused {
		// Only a human can say whether the pod still runs: Ready and Progressing say it, and
		// Stalled tells GitOps tools (kstatus: Failed; Argo CD: Degraded) that a human is needed.
		msg := unreachableMessage(stuck, o.pinnedTo)
		readyCond = cond(vendingv1alpha1.ConditionReady, metav1.ConditionFalse, ReasonNodeUnreachable, msg)
		progressing = cond(vendingv1alpha1.ConditionProgressing, metav1.ConditionFalse, ReasonNodeUnreachable, msg)
	}
	for _, c := range []metav1.Condition{
		readyCond,
		escalated,
		progressing,
		degradedCondition(o, ready),
	} {
		c.ObservedGeneration = vm.Generation
		meta.SetStatusCondition(&st.Conditions, c)
	}
	var stalled *metav1.Condition
	switch {
	case mem.Escalated():
		stalled = &escalated
	case mem.Stopped():
		// The decider's words, not Progressing's (which says "paused" on a paused machine).
		stalled = &metav1.Condition{Reason: ReasonStopped, Message: orDefault(mem.Pending().DecisionMessage, "stopped by the decider")}
	case progressing.Reason == ReasonNodeUnreachable:
		stalled = &progressing
	}
	setKstatusConditions(&st.Conditions, vm.Generation, progressing, stalled)
	st.Phase = phaseOf(vm, step, pod, ready, o)
	_ = now
	return st
}

// setKstatusConditions sets kstatus's abnormal-true conditions from ours: Reconciling as
// Progressing says while it is True, Stalled when something (stalled, nil if nothing) needs a
// human. Each is removed while False (Flux's convention), and never both are True: kstatus
// reads the first it meets, and a stalled object makes no progress.
func setKstatusConditions(conds *[]metav1.Condition, generation int64, progressing metav1.Condition, stalled *metav1.Condition) {
	set := func(t string, c *metav1.Condition) {
		if c == nil {
			meta.RemoveStatusCondition(conds, t)
			return
		}
		meta.SetStatusCondition(conds, metav1.Condition{Type: t, Status: metav1.ConditionTrue, Reason: c.Reason,
			Message: c.Message, ObservedGeneration: generation})
	}
	var reconciling *metav1.Condition
	if stalled == nil && progressing.Status == metav1.ConditionTrue {
		reconciling = &progressing
	}
	set(vendingv1alpha1.ConditionReconciling, reconciling)
	set(vendingv1alpha1.ConditionStalled, stalled)
}

// refused: the API server refused a request for good (403 Forbidden: RBAC, an admission
// policy, a quota; 422 Invalid), as opposed to failing it for a while.
func refused(err error) bool {
	return err != nil && (apierrors.IsForbidden(err) || apierrors.IsInvalid(err))
}

// markRefused says, in the conditions kubectl, kstatus and Argo CD read, that the machine
// cannot be brought up until a human allows what was refused: Ready=False and Stalled=True
// with the API server's words, for the spec as it is (observedGeneration). The next pass that
// gets through rebuilds the conditions and Stalled goes.
func markRefused(st *vendingv1alpha1.VendingMachineStatus, generation int64, err error) {
	msg := fmt.Sprintf("%v. Allow it (RBAC, admission policies, quotas) or change the spec; the operator retries meanwhile", err)
	for _, t := range []string{vendingv1alpha1.ConditionReady, vendingv1alpha1.ConditionStalled} {
		s := metav1.ConditionFalse
		if t == vendingv1alpha1.ConditionStalled {
			s = metav1.ConditionTrue
		}
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: t, Status: s, Reason: ReasonCreateRefused,
			Message: msg, ObservedGeneration: generation})
	}
	meta.RemoveStatusCondition(&st.Conditions, vendingv1alpha1.ConditionReconciling)
	st.ObservedGeneration = generation
}

func cond(t string, s metav1.ConditionStatus, reason, msg string) metav1.Condition {
	return metav1.Condition{Type: t, Status: s, Reason: reason, Message: msg}
}

func readyCondition(pod *corev1.Pod, mem supervisor.Memory, ready bool) metav1.Condition {
	const t = vendingv1alpha1.ConditionReady
	switch {
	case ready:
		return cond(t, metav1.ConditionTrue, ReasonPodReady,
			fmt.Sprintf("pod %s is ready: its event log is replayed and it serves customers", pod.Name))
	case pod == nil && mem.Pending() != nil:
		return cond(t, metav1.ConditionFalse, ReasonPodFailed,
			fmt.Sprintf("pod %s failed (its pod object is gone; status.lastFailure keeps what it reported)", mem.PodName))
	case pod == nil:
		return cond(t, metav1.ConditionFalse, ReasonNoPod, fmt.Sprintf("pod %s does not exist yet", mem.PodName))
	case supervisor.Terminal(pod):
		return cond(t, metav1.ConditionFalse, ReasonPodFailed, fmt.Sprintf("pod %s failed", pod.Name))
	}
	return cond(t, metav1.ConditionFalse, ReasonPodNotReady,
		fmt.Sprintf("pod %s is not ready yet (replaying its event log, or starting)", pod.Name))
}

func escalatedCondition(vm *vendingv1alpha1.VendingMachine, mem supervisor.Memory, o observation) metav1.Condition {
	const t = vendingv1alpha1.ConditionEscalated
	if f := mem.Pending(); mem.Escalated() && f.Reason == contract.ReasonCorruptLog {
		return cond(t, metav1.ConditionTrue, ReasonCorruptLog, corruptLogMessage(vm, o.pod(f.PodName), *f, f.DecisionMessage))
	}
	if f := mem.Pending(); mem.Escalated() {
		return cond(t, metav1.ConditionTrue, orDefault(f.DecisionReason, ReasonEscalated),
			fmt.Sprintf("%s. Escalated to %s; no more restarts until the machine is reset (annotation %s).",
				orDefault(f.DecisionMessage, "pod "+f.PodName+" failed: "+f.Reason), o.escalatedTo, annotationReset))
	}
	return cond(t, metav1.ConditionFalse, ReasonWithinBudget,
		fmt.Sprintf("%d of %d restarts used within the window", len(mem.RestartTimes), supervisor.PolicyOf(vm).MaxRestarts))
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// corruptLogMessage says, on an escalated machine whose log is corrupt, what is affected, where
// the evidence is, who has the escalation and what a human can do next. A machine never starts
// on a new log by itself: only its fleet can, and only when its spec.corruptLog.policy opts in.
func corruptLogMessage(vm *vendingv1alpha1.VendingMachine, pod *corev1.Pod, f vendingv1alpha1.Failure, decided string) string {
	claim := claimOf(vm, pod)
	var who string
	ref := metav1.GetControllerOf(vm)
	switch {
	case ref != nil && ref.Kind == kindVendingFleet && vm.Annotations[annotationCorruptLogHeld] == f.PodName:
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

func progressingCondition(vm *vendingv1alpha1.VendingMachine, step supervisor.Step, ready bool) metav1.Condition {
	const t = vendingv1alpha1.ConditionProgressing
	mem := step.Memory
	switch {
	case vm.Spec.Paused:
		return cond(t, metav1.ConditionFalse, ReasonPaused, "spec.paused: the supervisor does not act")
	case mem.Escalated():
		return cond(t, metav1.ConditionFalse, ReasonEscalated, "escalated: the supervisor waits for a reset")
	case mem.Stopped():
		return cond(t, metav1.ConditionFalse, ReasonStopped, orDefault(mem.Pending().DecisionMessage, "stopped by the decider"))
	case step.Progress == supervisor.BackingOff && step.NextRestartAt != nil:
		return cond(t, metav1.ConditionTrue, ReasonBackingOff,
			fmt.Sprintf("restarting at %s (%s)", step.NextRestartAt.UTC().Format(time.RFC3339), mem.Pending().DecisionMessage))
	case step.Progress != supervisor.Idle:
		return cond(t, metav1.ConditionTrue, string(step.Progress),
			fmt.Sprintf("the supervisor is bringing pod %s up", mem.PodName))
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

func phaseOf(vm *vendingv1alpha1.VendingMachine, step supervisor.Step, pod *corev1.Pod, ready bool,
	o observation) vendingv1alpha1.MachinePhase {
	mem := step.Memory
	switch {
	case vm.Spec.Paused:
		return vendingv1alpha1.PhasePaused
	case mem.Escalated():
		return vendingv1alpha1.PhaseEscalated
	case mem.Stopped():
		return vendingv1alpha1.PhaseStopped
	case pod != nil && supervisor.Terminal(pod), step.Progress == supervisor.Restarting, step.Progress == supervisor.Recreating,
		step.Progress == supervisor.BackingOff, step.Progress == supervisor.Resetting:
		return vendingv1alpha1.PhaseRestarting
	case !ready:
		return vendingv1alpha1.PhasePending
	case o.state != nil && o.state.Degraded:
		return vendingv1alpha1.PhaseDegraded
	}
	return vendingv1alpha1.PhaseRunning
}

func ptrInt64(v int64) *int64 { return &v }
