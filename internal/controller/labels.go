package controller

import (
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
)

// Labels and annotations the operator puts on the children it owns. The supervision memory of
// a machine lives on its current pod, so that status can be rebuilt from observation on every
// pass and an operator restart resumes exactly where it was.
const (
	labelMachine     = "vending.resilience.dev/machine"
	labelIncarnation = "vending.resilience.dev/incarnation"
	// LabelFleet on a machine (and its children) names the VendingFleet it belongs to.
	LabelFleet = "vending.resilience.dev/fleet"
	// labelMachineIndex on a fleet's machine is its index n in <fleet>-<n>.
	labelMachineIndex = "vending.resilience.dev/index"
	// labelQuarantined on a claim says that a fleet set its log aside as corrupt; the value is
	// the machine it belonged to. The claim is kept, with no owner, as evidence.
	labelQuarantined = "vending.resilience.dev/quarantined"

	// annotationTemplateHash is a hash of the spec fields the pod is built from.
	annotationTemplateHash = "vending.resilience.dev/template-hash"
	// annotationRestartHistory lists (RFC 3339) the restarts inside the supervision window when
	// the pod was created, this pod's own start included when it was a restart.
	annotationRestartHistory = "vending.resilience.dev/restart-history"
	// annotationLastFailure is the JSON Failure that this pod replaced.
	annotationLastFailure = "vending.resilience.dev/last-failure"
	// annotationDecision is the JSON decision about this pod's failure: written once, when the
	// failure is first observed, so events fire once and the backoff survives operator restarts.
	annotationDecision = "vending.resilience.dev/decision"
	// annotationReset on a VendingMachine: change its value to clear an escalation or a stop and
	// restart the machine with a fresh restart window (what a VendingFleet or a human does). Pods
	// carry the value they were created under.
	annotationReset = "vending.resilience.dev/reset"
	// annotationLogGeneration on a VendingMachine: n > 0 puts its log on the claim
	// <machine>-log-<n>; a fleet bumps it after quarantining a corrupt log.
	annotationLogGeneration = "vending.resilience.dev/log-generation"
	// annotationFleetEscalations on a fleet's machine: the JSON list of escalations the fleet
	// handled (inside its window) by resetting this machine. The fleet's memory, like the
	// machine's, lives on the child.
	annotationFleetEscalations = "vending.resilience.dev/fleet-escalations"
	// annotationFleetTemplateHash on a fleet's machine: the hash of the template (and variant)
	// it was last made from; a different hash means it has to be rolled.
	annotationFleetTemplateHash = "vending.resilience.dev/fleet-template-hash"
	// annotationFleetUpdatedAt on a fleet's machine: when the fleet last rolled it (RFC 3339),
	// so a rollout's deadline counts from the update.
	annotationFleetUpdatedAt = "vending.resilience.dev/fleet-updated-at"
	// annotationCorruptLogHeld on a fleet's machine: the failed pod whose corrupt log the fleet
	// handed to humans (spec.corruptLog.policy Escalate). Written once per occurrence, before
	// the events, so that a requeue or a restarted operator does not announce it again.
	annotationCorruptLogHeld = "vending.resilience.dev/corrupt-log-held"
	// annotationQuarantineReason on a quarantined claim: why, when and by whom.
	annotationQuarantineReason = "vending.resilience.dev/quarantine-reason"
)

// MachineLabelRequirement selects the children of VendingMachines (for the manager's cache).
func MachineLabelRequirement() labels.Requirement {
	r, err := labels.NewRequirement(labelMachine, selection.Exists, nil)
	if err != nil {
		panic(err)
	}
	return *r
}
