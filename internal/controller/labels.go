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
)

// MachineLabelRequirement selects the children of VendingMachines (for the manager's cache).
func MachineLabelRequirement() labels.Requirement {
	r, err := labels.NewRequirement(labelMachine, selection.Exists, nil)
	if err != nil {
		panic(err)
	}
	return *r
}
