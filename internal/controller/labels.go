package controller

import (
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"

	"github.com/vendingfleet/vending-operator/internal/supervisor"
)

// Labels and annotations the operator puts on the children it owns. The supervision memory of
// a machine lives in its status (see internal/supervisor), never on a pod: a pod is evidence
// that anyone may delete.
const (
	labelMachine     = "vending.resilience.dev/machine"
	labelIncarnation = supervisor.LabelIncarnation
	// LabelFleet on a machine (and its children) names the VendingFleet it belongs to.
	LabelFleet = "vending.resilience.dev/fleet"
	// labelMachineIndex on a fleet's machine is its index n in <fleet>-<n>.
	labelMachineIndex = "vending.resilience.dev/index"
	// labelQuarantined on a claim says that a fleet set its log aside as corrupt; the value is
	// the machine it belonged to. The claim is kept, with no owner, as evidence.
	labelQuarantined = "vending.resilience.dev/quarantined"

	// annotationTemplateHash is a hash of the spec fields the pod is built from.
	annotationTemplateHash = supervisor.AnnotationTemplateHash
	// annotationCause on a pod says why it was created (for people reading the pod; the
	// supervisor reads status.podCause).
	annotationCause = "vending.resilience.dev/cause"
	// annotationReset on a VendingMachine: change its value to clear an escalation or a stop and
	// restart the machine with a fresh restart window (what a VendingFleet or a human does). Pods
	// carry the value they were created under.
	annotationReset = supervisor.AnnotationReset
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
	// AnnotationReadState on a VendingMachine: change its value to have the operator ask the
	// machine's pod for its state (coins, out of milk) now, instead of at the next refresh.
	AnnotationReadState = "vending.resilience.dev/read-state"
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
