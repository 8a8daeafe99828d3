package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// FleetStrategy is which machines a fleet resets when one of them escalates (Erlang's restart
// strategies).
// +kubebuilder:validation:Enum=OneForOne;AllForOne;RestForOne
type FleetStrategy string

const (
	// OneForOne resets only the machine that escalated.
	OneForOne FleetStrategy = "OneForOne"
	// AllForOne resets every machine of the fleet together.
	AllForOne FleetStrategy = "AllForOne"
	// RestForOne resets the machine that escalated and every machine after it in index order.
	RestForOne FleetStrategy = "RestForOne"
)

// CorruptLogPolicy is what a fleet does with a machine whose event log is corrupt (the vending
// pod exited with CorruptLog: a record failed its checks before the log's tail).
// +kubebuilder:validation:Enum=Escalate;StartNewLog
type CorruptLogPolicy string

const (
	// CorruptLogEscalate hands the machine to humans with its claim as it is: the fleet neither
	// resets the machine nor touches the claim, and status and events say which claim, file and
	// offset to inspect.
	CorruptLogEscalate CorruptLogPolicy = "Escalate"
	// CorruptLogStartNewLog quarantines the claim (labelled, annotated, kept without owner, never
	// deleted) and starts the machine on a new, empty log.
	CorruptLogStartNewLog CorruptLogPolicy = "StartNewLog"
)

// CorruptLog says what the fleet does when a machine's event log is corrupt.
type CorruptLog struct {
	// policy is Escalate (the default) or StartNewLog.
	//
	// Escalate: the machine stays escalated, its pod stays failed and its claim stays as it is,
	// for a human to inspect (vendinglog dump, in a pod that mounts the claim), then repair or
	// restore the log and reset the machine (annotation vending.resilience.dev/reset), or opt in
	// to StartNewLog. It costs the fleet no escalation of its intensity and resets no other
	// machine, whatever the strategy.
	//
	// StartNewLog: the claim is quarantined and the machine starts on <machine>-log-<n>, an empty
	// log. Everything the old log acknowledged is out of service: inserted coins, pending orders
	// (never brewed), and idempotency keys (a retry of an old key runs again). The old claim keeps
	// the bytes for a human to recover by hand. It is handled like any escalation: it counts
	// against intensity, and AllForOne and RestForOne reset the other machines too.
	// +kubebuilder:default=Escalate
	// +optional
	Policy CorruptLogPolicy `json:"policy,omitempty"`
}

// Intensity is how many machine escalations the fleet absorbs within a window before it
// escalates itself, to humans.
type Intensity struct {
	// maxEscalations the fleet handles (by resetting machines) within window; one more and the
	// fleet is Escalated and acts on no escalation until the window has room again.
	// +kubebuilder:default=3
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	// +optional
	MaxEscalations *int32 `json:"maxEscalations,omitempty"`

	// window over which escalations are counted.
	// +kubebuilder:default="10m"
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s') && duration(self) <= duration('168h')",message="intensity.window must be greater than 0s and at most 168h"
	// +optional
	Window *metav1.Duration `json:"window,omitempty"`
}

// MachineTemplate is what each machine of a fleet is made from.
type MachineTemplate struct {
	// labels added to every machine (and so to nothing else: pods carry the machine's labels).
	// +optional
	Labels map[string]string `json:"labels,omitempty"`

	// spec of every machine.
	// +kubebuilder:default={}
	// +optional
	Spec VendingMachineSpec `json:"spec,omitzero"`
}

// MachineVariant changes some machines of a fleet, for diversity ("don't put all eggs in one
// basket"): machine n takes variant n mod len(variants).
type MachineVariant struct {
	// image of the vending pod for the machines of this variant.
	// +kubebuilder:validation:MaxLength=512
	// +optional
	Image string `json:"image,omitempty"`

	// menu for the machines of this variant.
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	// +optional
	Menu []Beverage `json:"menu,omitempty"`
}

// VendingFleetSpec is the promised state of a fleet: how many machines, made from what, and
// how the fleet supervises them.
type VendingFleetSpec struct {
	// replicas is the number of machines, named <fleet>-0 ... <fleet>-<replicas-1>. Scaling down
	// deletes the highest-numbered machines; their claims follow template.spec.storage.whenDeleted
	// (Retain by default: scaling up again resumes the same logs).
	// +kubebuilder:default=3
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// template of the machines.
	// +kubebuilder:default={}
	// +optional
	Template MachineTemplate `json:"template,omitzero"`

	// variants change the image or menu of some machines, round-robin.
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	// +optional
	Variants []MachineVariant `json:"variants,omitempty"`

	// strategy decides which machines are reset when one escalates.
	// +kubebuilder:default=OneForOne
	// +optional
	Strategy FleetStrategy `json:"strategy,omitempty"`

	// intensity is the fleet's own restart budget. Budgets multiply across levels: a worker
	// is restarted up to maxRestarts times per machine window, and the fleet resets the machine
	// up to maxEscalations times, so status.restartBudget = maxRestarts × (maxEscalations + 1)
	// restarts before a human is asked.
	// +kubebuilder:default={}
	// +optional
	Intensity Intensity `json:"intensity,omitzero"`

	// rolloutDeadline is how long a machine being rolled to a new template may take to become
	// Ready (its log replayed) before the rollout stops with Progressing=False.
	// +kubebuilder:default="5m"
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="rolloutDeadline must be greater than 0s"
	// +optional
	RolloutDeadline *metav1.Duration `json:"rolloutDeadline,omitempty"`

	// corruptLog is what the fleet does with a machine whose log is corrupt. By default it
	// escalates to humans with the claim intact; starting the machine on a new, empty log, which
	// loses what the old log acknowledged, is an explicit opt-in.
	// +kubebuilder:default={}
	// +optional
	CorruptLog CorruptLog `json:"corruptLog,omitzero"`

	// paused stops the fleet from acting (creating, rolling, resetting, deleting machines);
	// the machines keep supervising their own pods.
	// +optional
	Paused bool `json:"paused,omitempty"`
}

// Escalation is one machine escalation the fleet handled.
type Escalation struct {
	// machine that escalated.
	Machine string `json:"machine"`
	// time the fleet acted on it: when it made the reset plan that answers it.
	Time metav1.Time `json:"time"`
	// reason of the machine's last failure.
	// +optional
	Reason string `json:"reason,omitempty"`
	// pod of the machine that failed last before it escalated.
	// +optional
	Pod string `json:"pod,omitempty"`
	// failedAt is when that pod failed.
	// +optional
	FailedAt *metav1.Time `json:"failedAt,omitempty"`
	// observedReset is the machine's status.observedReset when it escalated. A machine stays
	// escalated until its vending.resilience.dev/reset annotation changes, so machine and
	// observedReset name one escalation: the fleet answers it with one reset plan, once.
	// +optional
	ObservedReset string `json:"observedReset,omitempty"`
	// plan is the token of the reset plan that answered it (empty on records older than plans).
	// +optional
	Plan string `json:"plan,omitempty"`
}

// PlannedReset is one machine of a reset plan.
type PlannedReset struct {
	// name of the machine.
	Name string `json:"name"`
	// quarantine: the machine's log is corrupt and spec.corruptLog.policy is StartNewLog; its
	// claim is set aside and it starts on a new, empty log.
	// +optional
	Quarantine bool `json:"quarantine,omitempty"`
}

// ResetPlan is a reset the fleet recorded before carrying it out. A reset of several machines
// (AllForOne, RestForOne) is one write per machine, and a conflict or an operator restart can
// stop it between two; the recorded plan is what every later pass completes first.
type ResetPlan struct {
	// token is the value each machine of the plan gets in its vending.resilience.dev/reset
	// annotation; a machine that carries it is done, so the plan writes each machine once.
	Token string `json:"token"`
	// strategy the plan carries out.
	Strategy FleetStrategy `json:"strategy"`
	// escalations the plan answers.
	// +listType=atomic
	Escalations []Escalation `json:"escalations"`
	// machines to reset, in the order they are written (the escalated machines first).
	// +listType=atomic
	Machines []PlannedReset `json:"machines"`
	// createdAt is when the fleet made the plan.
	CreatedAt metav1.Time `json:"createdAt"`
	// message says what the plan answers and why, as the Reset event will.
	// +optional
	Message string `json:"message,omitempty"`
}

// Condition types of a VendingFleet: Ready, Progressing, Degraded, Escalated, Reconciling and
// Stalled (the same words as a machine's, at the fleet's level).

// VendingFleetStatus is the observed state of a fleet, rebuilt from its machines on every pass.
type VendingFleetStatus struct {
	// observedGeneration is the generation of the spec this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready, Progressing, Degraded, Escalated; and Reconciling or Stalled, only
	// while True (kstatus).
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// replicas is the number of machines that exist.
	// +optional
	Replicas int32 `json:"replicas,omitempty"`

	// readyMachines is the number of machines that are Ready.
	// +optional
	ReadyMachines int32 `json:"readyMachines,omitempty"`

	// updatedMachines is the number of machines made from the current template.
	// +optional
	UpdatedMachines int32 `json:"updatedMachines,omitempty"`

	// ready is readyMachines/replicas, for printer columns.
	// +optional
	Ready string `json:"ready,omitempty"`

	// escalations the fleet handled inside the intensity window, oldest first. Part of the
	// fleet's memory (with the same records on the machines it reset): an escalation listed
	// here is never answered again.
	// +listType=atomic
	// +optional
	Escalations []Escalation `json:"escalations,omitempty"`

	// resetPlan is the reset in progress: recorded (with optimistic concurrency) before any
	// machine is written, continued by every pass until each of its machines carries its
	// token, then cleared, its escalations kept in escalations. Absent when no reset is in
	// progress.
	// +optional
	ResetPlan *ResetPlan `json:"resetPlan,omitempty"`

	// escalationCount is len(escalations), for printer columns.
	// +optional
	EscalationCount int32 `json:"escalationCount,omitempty"`

	// restartBudget is how many restarts one machine may take, across both levels of
	// supervision, before the fleet escalates to humans: maxRestarts × (maxEscalations + 1).
	// +optional
	RestartBudget int32 `json:"restartBudget,omitempty"`

	// totalCoins is the sum of what the machines last reported. Eventually consistent: each
	// machine's figure is as old as its own status.
	// +optional
	TotalCoins int64 `json:"totalCoins,omitempty"`
}

// VendingFleet supervises VendingMachines the way an Erlang supervisor supervises its
// children: it keeps spec.replicas machines, resets those that escalate (OneForOne, AllForOne
// or RestForOne), hands a machine with a corrupt log to humans with its claim intact (or, if
// spec.corruptLog.policy opts in, quarantines the claim and starts a new log), rolls template
// changes one machine at a time, and escalates to humans when its own intensity is spent.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=vfleet,categories=vending
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.ready`
// +kubebuilder:printcolumn:name="Machines",type=integer,JSONPath=`.status.replicas`
// +kubebuilder:printcolumn:name="Escalations",type=integer,JSONPath=`.status.escalationCount`
// +kubebuilder:printcolumn:name="Escalated",type=string,JSONPath=`.status.conditions[?(@.type=="Escalated")].status`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type VendingFleet struct {
	metav1.TypeMeta `json:",inline"`

	// metadata is standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitzero"`

	// spec is the promised state of the fleet.
	// +kubebuilder:default={}
	// +optional
	Spec VendingFleetSpec `json:"spec,omitzero"`

	// status is what the fleet observed of its machines. Until the operator first writes it, it
	// reads as observedGeneration 0 (kstatus: InProgress), as a machine's does.
	// +kubebuilder:default={observedGeneration: 0}
	// +optional
	Status VendingFleetStatus `json:"status,omitzero"`
}

// +kubebuilder:object:root=true

// VendingFleetList is a list of VendingFleets.
type VendingFleetList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is standard list metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitzero"`
	Items           []VendingFleet `json:"items"`
}
