package controller

import (
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/fleet"
)

// computeFleetStatus rebuilds the fleet's status from its machines and this pass's decisions.
// Totals are as fresh as each machine's own status: eventually consistent.
func computeFleetStatus(f *vendingv1alpha1.VendingFleet, o *fleetObservation) vendingv1alpha1.VendingFleetStatus {
	replicas := ptr.Deref(f.Spec.Replicas, 3)
	st := vendingv1alpha1.VendingFleetStatus{
		ObservedGeneration: f.Generation,
		Conditions:         f.Status.Conditions,
		Replicas:           int32(len(o.machines)),
	}
	var notReady, escalated, degraded []string
	for n, vm := range o.machines {
		if machineReady(vm) {
			st.ReadyMachines++
		} else {
			notReady = append(notReady, vm.Name)
		}
		if vm.Annotations[annotationFleetTemplateHash] == desiredMachine(f, n).Annotations[annotationFleetTemplateHash] {
			st.UpdatedMachines++
		}
		if machineEscalated(vm) {
			escalated = append(escalated, vm.Name)
		}
		if meta.IsStatusConditionTrue(vm.Status.Conditions, vendingv1alpha1.ConditionDegraded) {
			degraded = append(degraded, vm.Name)
		}
		if vm.Status.TotalCoins != nil {
			st.TotalCoins += *vm.Status.TotalCoins
		}
	}
	slices.Sort(notReady)
	slices.Sort(escalated)
	slices.Sort(degraded)
	st.Ready = fmt.Sprintf("%d/%d", st.ReadyMachines, replicas)
	for _, e := range o.plan.History {
		st.Escalations = append(st.Escalations, apiEscalation(e))
	}
	st.EscalationCount = int32(len(st.Escalations))
	// Not observed but remembered: the plan stays until a pass has written all its machines.
	st.ResetPlan = apiResetPlan(o.resetPlan)
	policy := fleetPolicy(f)
	maxRestarts := int(ptr.Deref(f.Spec.Template.Spec.Supervision.MaxRestarts, 10))
	st.RestartBudget = int32(fleet.RestartBudget(maxRestarts, policy.MaxEscalations))

	progressing := fleetProgressingCondition(f, o, replicas)
	escalatedToHumans := fleetEscalatedCondition(o, policy, maxRestarts, st.RestartBudget)
	for _, c := range []metav1.Condition{
		fleetReadyCondition(st, replicas, notReady),
		progressing,
		fleetDegradedCondition(escalated, degraded),
		escalatedToHumans,
	} {
		c.ObservedGeneration = f.Generation
		meta.SetStatusCondition(&st.Conditions, c)
	}
	// Stalled: only humans can move the fleet on. Machines escalated to the fleet are not: the
	// fleet handles them (Ready=False says the fleet is not there yet).
	var stalled *metav1.Condition
	switch {
	case escalatedToHumans.Status == metav1.ConditionTrue:
		stalled = &escalatedToHumans
	case progressing.Reason == ReasonRolloutStalled:
		stalled = &progressing
	}
	setKstatusConditions(&st.Conditions, f.Generation, progressing, stalled)
	return st
}

func fleetReadyCondition(st vendingv1alpha1.VendingFleetStatus, replicas int32, notReady []string) metav1.Condition {
	if st.ReadyMachines >= replicas && len(notReady) == 0 {
		return metav1.Condition{Type: vendingv1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: ReasonAllMachinesReady,
			Message: fmt.Sprintf("%d of %d machines Ready", st.ReadyMachines, replicas)}
	}
	return metav1.Condition{Type: vendingv1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: ReasonMachinesNotReady,
		Message: fmt.Sprintf("%d of %d machines Ready; not ready: %s", st.ReadyMachines, replicas, list(notReady))}
}

func fleetProgressingCondition(f *vendingv1alpha1.VendingFleet, o *fleetObservation, replicas int32) metav1.Condition {
	c := metav1.Condition{Type: vendingv1alpha1.ConditionProgressing}
	switch {
	case f.Spec.Paused:
		c.Status, c.Reason, c.Message = metav1.ConditionFalse, ReasonPaused, "spec.paused: the fleet acts on nothing"
	case o.scaling || int32(len(o.machines)) != replicas:
		c.Status, c.Reason, c.Message = metav1.ConditionTrue, ReasonScaling,
			fmt.Sprintf("scaling from %d to %d machines", len(o.machines), replicas)
	case o.step.Stalled:
		c.Status, c.Reason, c.Message = metav1.ConditionFalse, ReasonRolloutStalled, o.step.Message
	case o.step.Done:
		c.Status, c.Reason, c.Message = metav1.ConditionFalse, ReasonUpToDate, o.step.Message
	default:
		c.Status, c.Reason, c.Message = metav1.ConditionTrue, ReasonRollingOut, o.step.Message
	}
	return c
}

func fleetDegradedCondition(escalated, degraded []string) metav1.Condition {
	switch {
	case len(escalated) > 0:
		return metav1.Condition{Type: vendingv1alpha1.ConditionDegraded, Status: metav1.ConditionTrue, Reason: ReasonMachinesEscalated,
			Message: "escalated machines: " + list(escalated)}
	case len(degraded) > 0:
		return metav1.Condition{Type: vendingv1alpha1.ConditionDegraded, Status: metav1.ConditionTrue, Reason: ReasonMachinesDegraded,
			Message: "machines serving part of their menu: " + list(degraded)}
	}
	return metav1.Condition{Type: vendingv1alpha1.ConditionDegraded, Status: metav1.ConditionFalse, Reason: ReasonAllMachinesHealth,
		Message: "no machine is escalated or degraded"}
}

func fleetEscalatedCondition(o *fleetObservation, p fleet.Policy, maxRestarts int, budget int32) metav1.Condition {
	if o.plan.Escalated {
		msg := o.plan.Message
		if len(o.plan.Held) > 0 {
			msg += ". Also escalated: " + heldText(o.plan.Held)
		}
		return metav1.Condition{Type: vendingv1alpha1.ConditionEscalated, Status: metav1.ConditionTrue, Reason: ReasonIntensityExceeded,
			Message: msg}
	}
	if len(o.plan.Held) > 0 {
		return metav1.Condition{Type: vendingv1alpha1.ConditionEscalated, Status: metav1.ConditionTrue, Reason: ReasonCorruptLog,
			Message: heldText(o.plan.Held)}
	}
	return metav1.Condition{Type: vendingv1alpha1.ConditionEscalated, Status: metav1.ConditionFalse, Reason: ReasonWithinIntensity,
		Message: fmt.Sprintf("%d of %d escalations used within %v; a machine may restart %d times "+
			"(%d per machine window × (%d fleet resets + 1)) before humans are asked",
			len(o.plan.History), p.MaxEscalations, p.Window, budget, maxRestarts, p.MaxEscalations)}
}

// heldText joins what the fleet says about each machine it holds for humans; a few in full,
// the rest by name, so the condition stays readable in kubectl describe.
func heldText(hs []fleet.Hold) string {
	const full = 3
	parts := make([]string, 0, full+1)
	for i, h := range hs {
		if i == full {
			rest := make([]string, 0, len(hs)-full)
			for _, h := range hs[full:] {
				rest = append(rest, h.Name)
			}
			parts = append(parts, "Also with a corrupt log: "+list(rest)+".")
			break
		}
		parts = append(parts, h.Message)
	}
	return strings.Join(parts, " ")
}

func list(names []string) string {
	if len(names) > 10 {
		return strings.Join(names[:10], ", ") + fmt.Sprintf(" and %d more", len(names)-10)
	}
	return strings.Join(names, ", ")
}

// fleetMemory is what the fleet's status remembers, for fleet.Decide: the escalations it
// handled and the reset plan in progress.
func fleetMemory(f *vendingv1alpha1.VendingFleet) fleet.Memory {
	mem := fleet.Memory{}
	for _, e := range f.Status.Escalations {
		mem.History = append(mem.History, fleetEscalation(e))
	}
	if p := f.Status.ResetPlan; p != nil {
		rp := &fleet.ResetPlan{Token: p.Token, Strategy: fleet.Strategy(p.Strategy), Created: p.CreatedAt.Time, Message: p.Message}
		for _, e := range p.Escalations {
			rp.Escalations = append(rp.Escalations, fleetEscalation(e))
		}
		for _, m := range p.Machines {
			rp.Machines = append(rp.Machines, fleet.PlannedReset{Name: m.Name, Quarantine: m.Quarantine})
		}
		mem.Plan = rp
	}
	return mem
}

func apiResetPlan(rp *fleet.ResetPlan) *vendingv1alpha1.ResetPlan {
	if rp == nil {
		return nil
	}
	p := &vendingv1alpha1.ResetPlan{Token: rp.Token, Strategy: vendingv1alpha1.FleetStrategy(rp.Strategy),
		CreatedAt: metav1.NewTime(rp.Created), Message: rp.Message,
		Escalations: make([]vendingv1alpha1.Escalation, 0, len(rp.Escalations)),
		Machines:    make([]vendingv1alpha1.PlannedReset, 0, len(rp.Machines))}
	for _, e := range rp.Escalations {
		p.Escalations = append(p.Escalations, apiEscalation(e))
	}
	for _, m := range rp.Machines {
		p.Machines = append(p.Machines, vendingv1alpha1.PlannedReset{Name: m.Name, Quarantine: m.Quarantine})
	}
	return p
}

func apiEscalation(e fleet.Escalation) vendingv1alpha1.Escalation {
	out := vendingv1alpha1.Escalation{Machine: e.Machine, Time: metav1.NewTime(e.Time), Reason: e.Reason, Pod: e.Pod,
		ObservedReset: e.ObservedReset, Plan: e.Plan}
	if !e.FailedAt.IsZero() {
		out.FailedAt = ptr.To(metav1.NewTime(e.FailedAt))
	}
	return out
}

func fleetEscalation(e vendingv1alpha1.Escalation) fleet.Escalation {
	out := fleet.Escalation{Machine: e.Machine, Time: e.Time.Time, Reason: e.Reason, Pod: e.Pod,
		ObservedReset: e.ObservedReset, Plan: e.Plan}
	if e.FailedAt != nil {
		out.FailedAt = e.FailedAt.Time
	}
	return out
}
