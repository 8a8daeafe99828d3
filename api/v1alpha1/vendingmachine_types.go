package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Beverage is one item on a machine's menu.
type Beverage struct {
	// name of the beverage, as customers order it (BlackCoffee, Latte, Espresso, ...).
	// +kubebuilder:validation:Pattern=`^[A-Z][A-Za-z0-9]{0,31}$`
	// +required
	Name string `json:"name"`

	// price in coins.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +required
	Price int32 `json:"price"`

	// usesMilk marks beverages that cannot be served while the machine is out of milk.
	// +optional
	UsesMilk bool `json:"usesMilk,omitempty"`
}

// Inventory is what a full machine holds; the supervisor's restart refills the beans (the
// talk's "ServiceGuy notified").
type Inventory struct {
	// beans is the number of brews a full bean hopper makes.
	// +kubebuilder:default=100
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000
	// +optional
	Beans int32 `json:"beans,omitempty"`

	// milk is the number of milk beverages a full milk tank makes.
	// +kubebuilder:default=50
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000000
	// +optional
	Milk *int32 `json:"milk,omitempty"`
}

// SupervisorAction is what the supervisor does about a failure.
// +kubebuilder:validation:Enum=Restart;Stop;Escalate
type SupervisorAction string

const (
	// ActionRestart starts a fresh pod on the same event log, after the backoff.
	ActionRestart SupervisorAction = "Restart"
	// ActionStop leaves the machine stopped; a human (or spec change) decides what next.
	ActionStop SupervisorAction = "Stop"
	// ActionEscalate stops restarting and hands the failure up: to the owning fleet, or to humans.
	ActionEscalate SupervisorAction = "Escalate"
)

// DeciderRule maps one failure reason (as the vending pod reports it in its termination
// message, or as derived from the container's exit) to an action.
type DeciderRule struct {
	// reason is a failure reason: OutOfCoffeeBeans, Killed, CorruptLog, StorageFailure, ...
	// +kubebuilder:validation:Pattern=`^[A-Z][A-Za-z0-9]{0,63}$`
	// +required
	Reason string `json:"reason"`

	// action for that reason.
	// +required
	Action SupervisorAction `json:"action"`
}

// Backoff spaces restarts out: the n-th restart inside the window waits initial*2^(n-1),
// at most max, spread by up to jitterPercent so that machines failing together do not
// restart together.
// +kubebuilder:validation:XValidation:rule="!has(self.initial) || !has(self.max) || duration(self.initial) <= duration(self.max)",message="backoff.initial must not exceed backoff.max"
type Backoff struct {
	// initial is the delay before the first restart inside the window.
	// +kubebuilder:default="250ms"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('0s')",message="backoff.initial must not be negative"
	// +optional
	Initial *metav1.Duration `json:"initial,omitempty"`

	// max caps the delay.
	// +kubebuilder:default="30s"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('0s') && duration(self) <= duration('1h')",message="backoff.max must be between 0s and 1h"
	// +optional
	Max *metav1.Duration `json:"max,omitempty"`

	// jitterPercent spreads each delay by up to this share of it.
	// +kubebuilder:default=10
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	// +optional
	JitterPercent *int32 `json:"jitterPercent,omitempty"`
}

// Supervision is the machine's supervisor strategy: the talk's
// OneForOneStrategy(maxNrOfRetries = 10, withinTimeRange = 1.minute) with its decider.
type Supervision struct {
	// maxRestarts is how many restarts the supervisor allows within window; the failure
	// after that escalates.
	// +kubebuilder:default=10
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	// +optional
	MaxRestarts *int32 `json:"maxRestarts,omitempty"`

	// window is the time range over which restarts are counted.
	// +kubebuilder:default="1m"
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s') && duration(self) <= duration('24h')",message="supervision.window must be greater than 0s and at most 24h"
	// +optional
	Window *metav1.Duration `json:"window,omitempty"`

	// backoff between restarts.
	// +kubebuilder:default={}
	// +optional
	Backoff Backoff `json:"backoff,omitzero"`

	// decider maps failure reasons to actions. A reason that is not listed escalates (the
	// talk's `case _ => Escalate`). CorruptLog is not listed by default: a machine never
	// restarts on an empty log by itself (a Restart reopens the same, still corrupt, log); a
	// standalone machine escalates it to humans, a fleet's machine to its fleet, which follows
	// its spec.corruptLog.policy. Killed (SIGKILL) and Terminated (SIGTERM, exit 143) restart by
	// default: both are a stop from outside, and a crash-only machine starts again by replaying.
	// +kubebuilder:default={{reason: OutOfCoffeeBeans, action: Restart}, {reason: Killed, action: Restart}, {reason: Terminated, action: Restart}}
	// +listType=map
	// +listMapKey=reason
	// +kubebuilder:validation:MaxItems=64
	// +optional
	Decider []DeciderRule `json:"decider,omitempty"`
}

// PVCRetention says what happens to the event log's claim when the machine is deleted.
// +kubebuilder:validation:Enum=Retain;Delete
type PVCRetention string

const (
	// RetainPVC keeps the claim (and so the log, which is the truth) after the machine is gone.
	RetainPVC PVCRetention = "Retain"
	// DeletePVC deletes the claim with the machine.
	DeletePVC PVCRetention = "Delete"
)

// Storage describes the PersistentVolumeClaim that holds the machine's event log. It is fixed
// once the machine exists: the claim is created once and the log on it is the machine's truth.
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="storage is immutable once the machine exists"
type Storage struct {
	// size of the claim.
	// +kubebuilder:default="1Gi"
	// +optional
	Size *resource.Quantity `json:"size,omitempty"`

	// storageClassName of the claim; the cluster's default class when empty.
	// +optional
	StorageClassName *string `json:"storageClassName,omitempty"`

	// whenDeleted is what happens to the claim when the machine is deleted.
	// +kubebuilder:default=Retain
	// +optional
	WhenDeleted PVCRetention `json:"whenDeleted,omitempty"`
}

// VendingMachineSpec is the promised state of one vending machine.
type VendingMachineSpec struct {
	// menu is what the machine sells, at which price.
	// +kubebuilder:default={{name: BlackCoffee, price: 2}, {name: Latte, price: 2, usesMilk: true}, {name: Espresso, price: 2}}
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	// +optional
	Menu []Beverage `json:"menu,omitempty"`

	// inventory is what a full machine holds.
	// +kubebuilder:default={}
	// +optional
	Inventory Inventory `json:"inventory,omitzero"`

	// supervision is how failures of the machine's pod are handled.
	// +kubebuilder:default={}
	// +optional
	Supervision Supervision `json:"supervision,omitzero"`

	// storage of the machine's event log.
	// +kubebuilder:default={}
	// +optional
	Storage Storage `json:"storage,omitzero"`

	// image of the vending pod; the operator's --vending-image when empty.
	// +kubebuilder:validation:MaxLength=512
	// +optional
	Image string `json:"image,omitempty"`

	// paused stops the supervisor from acting on this machine (for humans mid-incident):
	// nothing is created, restarted or deleted while it is true.
	// +optional
	Paused bool `json:"paused,omitempty"`

	// enableFaultInjection starts the pod with --enable-faults, which opens
	// POST /v1/faults/out-of-beans (the talk's TriggerOutOfCoffeeBeansFailure). For demos and tests.
	// +optional
	EnableFaultInjection bool `json:"enableFaultInjection,omitempty"`

	// resources of the vending container; small defaults when empty.
	// +optional
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`

	// topologySpreadConstraints of the machine's pod (a VendingFleet spreads its machines over
	// nodes with them).
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=8
	// +optional
	TopologySpreadConstraints []corev1.TopologySpreadConstraint `json:"topologySpreadConstraints,omitempty"`
}

// MachinePhase is a one-word summary of the machine for printer columns; conditions carry
// the detail.
// +kubebuilder:validation:Enum=Pending;Running;Restarting;Degraded;Stopped;Escalated;Paused
type MachinePhase string

const (
	PhasePending    MachinePhase = "Pending"
	PhaseRunning    MachinePhase = "Running"
	PhaseRestarting MachinePhase = "Restarting"
	PhaseDegraded   MachinePhase = "Degraded"
	PhaseStopped    MachinePhase = "Stopped"
	PhaseEscalated  MachinePhase = "Escalated"
	PhasePaused     MachinePhase = "Paused"
)

// Condition types of a VendingMachine.
const (
	// ConditionReady is True while the machine's pod is Ready (its log replayed) and serving.
	ConditionReady = "Ready"
	// ConditionProgressing is True while the supervisor is bringing a pod up or backing off.
	ConditionProgressing = "Progressing"
	// ConditionDegraded is True while the machine serves only part of its menu (out of milk).
	ConditionDegraded = "Degraded"
	// ConditionEscalated is True once the supervisor has given up and handed the failure up.
	ConditionEscalated = "Escalated"

	// ConditionReconciling and ConditionStalled are kstatus's abnormal-true conditions, read
	// by Flux, kpt, cli-utils and every other kstatus-based tool: present only while True.
	// ConditionReconciling is True while the operator works toward the spec (Progressing=True):
	// the object is InProgress.
	ConditionReconciling = "Reconciling"
	// ConditionStalled is True while the operator cannot make progress without a human: the
	// machine is escalated or stopped, or the API server refuses to create its claim or pod
	// (CreateRefused); the fleet escalated to humans, or a machine of its stayed not Ready past
	// spec.rolloutDeadline (RolloutStalled).
	// The object is Failed, so a pipeline waiting on it fails at once instead of at its timeout.
	ConditionStalled = "Stalled"
)

// Failure is the last failure the supervisor observed, as the pod reported it.
type Failure struct {
	// time the container terminated.
	Time metav1.Time `json:"time"`
	// reason from the termination message, or derived from the exit (Killed, OOMKilled, Error).
	Reason string `json:"reason"`
	// exitCode of the vending container.
	// +optional
	ExitCode int32 `json:"exitCode,omitempty"`
	// message from the termination message.
	// +optional
	Message string `json:"message,omitempty"`
	// pendingOrder that was persisted but not yet dispensed when the pod failed.
	// +optional
	PendingOrder string `json:"pendingOrder,omitempty"`
	// sequence of the event log when the pod failed: the last durable record it knew of.
	// +optional
	Sequence int64 `json:"sequence,omitempty"`
	// file of the event log that the failure is about (CorruptLog: the segment or snapshot
	// that failed its checks), as a path inside the pod (the claim is mounted at /data).
	// +optional
	File string `json:"file,omitempty"`
	// offset in file where the damage starts (CorruptLog).
	// +optional
	Offset int64 `json:"offset,omitempty"`
	// podName of the pod that failed.
	// +optional
	PodName string `json:"podName,omitempty"`
	// action the supervisor decided.
	// +optional
	Action SupervisorAction `json:"action,omitempty"`
	// decisionReason is why the supervisor decided action, in CamelCase (DeciderRestart,
	// RestartIntensityExceeded, UnknownFailure, ...).
	// +optional
	DecisionReason string `json:"decisionReason,omitempty"`
	// decisionMessage says the same for humans.
	// +optional
	DecisionMessage string `json:"decisionMessage,omitempty"`
	// restartAt is when the supervisor restarts the machine (action Restart): the failure time
	// plus the backoff.
	// +optional
	RestartAt *metav1.MicroTime `json:"restartAt,omitempty"`
	// external is true when the pod was stopped from outside (evicted, terminated by its kubelet
	// for a node shutdown, a DisruptionTarget condition): not the machine's fault, so it is
	// recreated at once and does not count against the restart window.
	// +optional
	External bool `json:"external,omitempty"`
	// inPlace is true when the pod's own supervisor restarted the vending process inside the
	// pod (action Restart, already carried out): the pod stayed, only its process was replaced.
	// +optional
	InPlace bool `json:"inPlace,omitempty"`
}

// PodCause says why the machine's current pod exists.
// +kubebuilder:validation:Enum=Created;Restarted;Recreated;Rolled;Reset
type PodCause string

// Pod causes.
const (
	// PodCreated: the machine's first pod.
	PodCreated PodCause = "Created"
	// PodRestarted: the supervisor restarted the machine after its own failure.
	PodRestarted PodCause = "Restarted"
	// PodRecreated: the previous pod was lost from outside (deleted, evicted, its node shut
	// down) and the supervisor recreated it.
	PodRecreated PodCause = "Recreated"
	// PodRolled: the spec changed and the supervisor replaced the pod.
	PodRolled PodCause = "Rolled"
	// PodReset: a reset (a VendingFleet or a human) replaced the pod with a fresh window.
	PodReset PodCause = "Reset"
)

// VendingMachineStatus is the observed state of a machine and the supervisor's memory.
//
// The memory (podName, podUID, podCause, restarts, recreations, rolls, resets, restartTimes,
// lastFailure, observedReset) is carried from pass to pass and written before the supervisor
// acts on it, conditionally on the version it was read from: no pod deletion, operator restart
// or stale cache can erase or fork it; only a reset clears the window and the escalation. The
// rest is rebuilt from observation on every pass.
type VendingMachineStatus struct {
	// observedGeneration is the generation of the spec this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready, Progressing, Degraded, Escalated; and Reconciling or Stalled, only
	// while True (kstatus).
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// phase is a one-word summary for printer columns.
	// +optional
	Phase MachinePhase `json:"phase,omitempty"`

	// restarts the supervisors have made after the machine's own failures, in the machine's
	// life: the operator's (a new pod) and the in-pod supervisor's (inPlaceRestarts, the vending
	// process restarted inside its pod). Pods replaced for other causes are counted apart
	// (recreations, rolls, resets).
	// +optional
	Restarts int32 `json:"restarts,omitempty"`

	// inPlaceRestarts: how many of restarts the in-pod supervisor made inside a pod.
	// +optional
	InPlaceRestarts int32 `json:"inPlaceRestarts,omitempty"`

	// podInPlaceRestarts: the in-place restarts of podName already counted in restarts (the
	// pod reports its total; the difference is new).
	// +optional
	PodInPlaceRestarts int32 `json:"podInPlaceRestarts,omitempty"`

	// previousPodName is the pod podName replaced, and previousPodInPlaceRestarts the in-place
	// restarts of it counted: a pod replaced (rolled, reset, recreated) may tell restarts it
	// could not report live only in its termination message, after it was replaced.
	// +optional
	PreviousPodName string `json:"previousPodName,omitempty"`
	// +optional
	PreviousPodInPlaceRestarts int32 `json:"previousPodInPlaceRestarts,omitempty"`

	// recreations of pods lost from outside (deleted, evicted, terminated by their kubelet):
	// not the machine's fault, not counted against the restart window.
	// +optional
	Recreations int32 `json:"recreations,omitempty"`

	// rolls: pods replaced because the spec changed.
	// +optional
	Rolls int32 `json:"rolls,omitempty"`

	// resets carried out (each starts a fresh restart window and clears an escalation).
	// +optional
	Resets int32 `json:"resets,omitempty"`

	// restartTimes are the restarts still inside the supervision window.
	// +listType=atomic
	// +optional
	RestartTimes []metav1.Time `json:"restartTimes,omitempty"`

	// nextRestartAt is when the supervisor will restart the pod, while it backs off.
	// +optional
	NextRestartAt *metav1.Time `json:"nextRestartAt,omitempty"`

	// lastFailure is the most recent failure of the machine's pod and what the supervisor
	// decided about it. While lastFailure.podName is podName, the decision is in force: a
	// Restart waits for restartAt, a Stop or an Escalate holds until a reset, even if the
	// failed pod is deleted.
	// +optional
	LastFailure *Failure `json:"lastFailure,omitempty"`

	// podName of the machine's current pod: reserved before the pod is created, so a name is
	// never used for two incarnations.
	// +optional
	PodName string `json:"podName,omitempty"`

	// podUID of podName, once the supervisor has seen it: a pod missing after that was lost
	// from outside.
	// +optional
	PodUID types.UID `json:"podUID,omitempty"`

	// podRequested is true once podName has been asked of the API server. A pod missing
	// after that, never seen, may have been created and deleted unseen: the supervisor moves on
	// to the next name rather than use one name for two pods.
	// +optional
	PodRequested bool `json:"podRequested,omitempty"`

	// podCause says why podName exists.
	// +optional
	PodCause PodCause `json:"podCause,omitempty"`

	// endpoint of the machine's HTTP API inside the cluster (its Service).
	// +optional
	Endpoint string `json:"endpoint,omitempty"`

	// totalCoins the machine's pod last reported. The operator asks the pod when it turns
	// Ready, after an in-place restart, when the annotation vending.resilience.dev/read-state
	// changes, and otherwise every 20 minutes (the manager's --state-refresh-interval), so that
	// 10,000 quiet machines cost a few requests a second; the pod's GET /v1/state is live.
	// +optional
	TotalCoins *int64 `json:"totalCoins,omitempty"`

	// sequence of the event log the machine's pod last reported (read as totalCoins is).
	// +optional
	Sequence *int64 `json:"sequence,omitempty"`

	// logClaim is the PersistentVolumeClaim that holds the machine's event log.
	// +optional
	LogClaim string `json:"logClaim,omitempty"`

	// observedReset is the value of the vending.resilience.dev/reset annotation that this status
	// reflects. While the annotation differs, a reset is pending.
	// +optional
	ObservedReset string `json:"observedReset,omitempty"`
}

// VendingMachine is one supervised vending machine: a pod that serves customers and keeps its
// state in an append-only event log on its own PersistentVolumeClaim, restarted by the
// operator according to spec.supervision and escalated when failures persist.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=vmach;vend,categories=vending
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Restarts",type=integer,JSONPath=`.status.restarts`
// +kubebuilder:printcolumn:name="In Place",type=integer,JSONPath=`.status.inPlaceRestarts`,priority=1
// +kubebuilder:printcolumn:name="Last Failure",type=string,JSONPath=`.status.lastFailure.reason`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type VendingMachine struct {
	metav1.TypeMeta `json:",inline"`

	// metadata is standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitzero"`

	// spec is the promised state of the machine.
	// +kubebuilder:default={}
	// +optional
	Spec VendingMachineSpec `json:"spec,omitzero"`

	// status is what the supervisor observed. Until the operator first writes it, it reads as
	// observedGeneration 0, so kstatus-based tools see a new machine as InProgress, not Current.
	// +kubebuilder:default={observedGeneration: 0}
	// +optional
	Status VendingMachineStatus `json:"status,omitzero"`
}

// +kubebuilder:object:root=true

// VendingMachineList is a list of VendingMachines.
type VendingMachineList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitzero"`
	Items           []VendingMachine `json:"items"`
}
