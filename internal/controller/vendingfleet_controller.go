package controller

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/fleet"
)

// Fleet condition reasons.
const (
	ReasonAllMachinesReady  = "AllMachinesReady"
	ReasonMachinesNotReady  = "MachinesNotReady"
	ReasonScaling           = "Scaling"
	ReasonRollingOut        = "RollingOut"
	ReasonRolloutStalled    = "RolloutStalled"
	ReasonUpToDate          = "UpToDate"
	ReasonMachinesEscalated = "MachinesEscalated"
	ReasonMachinesDegraded  = "MachinesDegraded"
	ReasonAllMachinesHealth = "AllMachinesHealthy"
	ReasonIntensityExceeded = "IntensityExceeded"
	ReasonWithinIntensity   = "WithinIntensity"
)

// VendingFleetReconciler supervises VendingMachines the way an Erlang supervisor supervises
// its children: it keeps the machines, resets those that escalate according to the fleet's
// strategy and intensity, rolls template changes one machine at a time, and escalates to
// humans when its own budget is spent.
type VendingFleetReconciler struct {
	client.Client
	Scheme   *runtime.Scheme
	Recorder recorder.EventRecorder
	// Clock is injected so tests can reason about time; the real clock when nil.
	Clock clock.PassiveClock
	// indexed: the client is the manager's cache, with the machinesByFleet index.
	indexed bool
}

// +kubebuilder:rbac:groups=vending.resilience.dev,resources=vendingfleets,verbs=get;list;watch
// +kubebuilder:rbac:groups=vending.resilience.dev,resources=vendingfleets/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=vending.resilience.dev,resources=vendingmachines,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=persistentvolumeclaims,verbs=get;list;watch;create;update;patch
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;update;patch

// fleetObservation is what one pass saw of the fleet's machines and decided.
type fleetObservation struct {
	machines map[int]*vendingv1alpha1.VendingMachine
	// memory is what the fleet's status remembered at the start of the pass.
	memory fleet.Memory
	plan   fleet.Plan
	// resetPlan is the reset in progress after this pass (status.resetPlan); retired is the
	// plan this pass completed, announced once the status that clears it is written.
	resetPlan *fleet.ResetPlan
	retired   *fleet.ResetPlan
	// recorded is the fleet as the API server stored it when this pass recorded a plan.
	recorded *vendingv1alpha1.VendingFleet
	step     fleet.Step
	scaling  bool
}

// Reconcile moves one VendingFleet toward its spec: observe the machines, create and delete
// them, reset the escalated ones, roll one machine, then one status patch.
func (r *VendingFleetReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	result, err := r.reconcile(ctx, req)
	if apierrors.IsConflict(err) {
		// A write from a stale read (usually the cache behind this operator's own last write)
		// was refused: routine, as for a machine, not a reconcile error for alerts to count.
		// What the pass did before it is idempotent (the recorded plan), so it runs again anew.
		conflictsTotal.WithLabelValues("VendingFleet").Inc()
		return ctrl.Result{RequeueAfter: conflictRetry}, nil
	}
	return result, err
}

func (r *VendingFleetReconciler) reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	f := &vendingv1alpha1.VendingFleet{}
	if err := r.Get(ctx, req.NamespacedName, f); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !f.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil // machines go with the garbage collector
	}
	now := r.clock().Now()
	before := f.DeepCopy()
	machines, err := r.machines(ctx, f)
	if err != nil {
		return ctrl.Result{}, err
	}
	mem := fleetMemory(f)
	o := &fleetObservation{machines: machines, memory: mem, resetPlan: mem.Plan}
	var result ctrl.Result
	var actErr error
	if !f.Spec.Paused {
		result, actErr = r.act(ctx, f, o, now)
	} else {
		o.plan = fleet.Decide(fleetPolicy(f), fleetMachines(o.machines), mem, now)
		o.step = fleet.NextRollout(rolloutMachines(f, o.machines), rolloutDeadline(f), now)
	}
	f.Status = computeFleetStatus(f, o)
	// The status is the fleet's memory (its escalations, the plan in progress): written only
	// from a fresh view (resourceVersion), so a pass that read a stale fleet cannot drop what
	// a later pass recorded; it fails with a conflict and the next pass sees the fleet anew.
	// Events follow the write, so a pass whose write failed announces nothing.
	base := before
	if o.recorded != nil {
		base = o.recorded // this pass wrote the status already (the plan): the patch starts from there
	}
	if !equality.Semantic.DeepEqual(base.Status, f.Status) {
		err := r.Status().Patch(ctx, f, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{}))
		if err != nil {
			if !apierrors.IsNotFound(err) && actErr == nil {
				actErr = err
			}
			return result, actErr
		}
	}
	r.announceFleet(before, f, o)
	// Come back when the oldest escalation leaves the window: an escalated fleet has room again.
	if len(o.plan.History) > 0 {
		result.RequeueAfter = minPositive(result.RequeueAfter, o.plan.History[0].Time.Add(fleetPolicy(f).Window).Sub(now)+time.Second)
	}
	return result, actErr
}

func (r *VendingFleetReconciler) clock() clock.PassiveClock {
	if r.Clock == nil {
		return clock.RealClock{}
	}
	return r.Clock
}

// machines lists the fleet's machines by index.
func (r *VendingFleetReconciler) machines(ctx context.Context,
	f *vendingv1alpha1.VendingFleet) (map[int]*vendingv1alpha1.VendingMachine, error) {
	list := &vendingv1alpha1.VendingMachineList{}
	by := client.ListOption(client.MatchingLabels{LabelFleet: f.Name})
	if r.indexed {
		by = client.MatchingFields{machinesByFleet: f.Name}
	}
	if err := r.List(ctx, list, client.InNamespace(f.Namespace), by); err != nil {
		return nil, err
	}
	out := map[int]*vendingv1alpha1.VendingMachine{}
	for i := range list.Items {
		vm := &list.Items[i]
		n, err := strconv.Atoi(vm.Labels[labelMachineIndex])
		if err != nil || !metav1.IsControlledBy(vm, f) || vm.Name != machineName(f, n) {
			continue
		}
		out[n] = vm
	}
	return out, nil
}

// act does this pass's work: scale, protect, reset, roll.
func (r *VendingFleetReconciler) act(ctx context.Context, f *vendingv1alpha1.VendingFleet, o *fleetObservation,
	now time.Time) (ctrl.Result, error) {
	replicas := int(ptr.Deref(f.Spec.Replicas, 3))
	var missing []*vendingv1alpha1.VendingMachine
	for n := range replicas {
		if _, ok := o.machines[n]; !ok {
			missing = append(missing, desiredMachine(f, n))
		}
	}
	created, err := slowStartCreate(ctx, r.Client, missing)
	if err != nil {
		return ctrl.Result{}, err
	}
	var deleted []string
	for n, vm := range o.machines {
		if n < replicas || vm.DeletionTimestamp != nil {
			continue
		}
		if err := r.Delete(ctx, vm); client.IgnoreNotFound(err) != nil {
			return ctrl.Result{}, err
		}
		deleted = append(deleted, vm.Name)
		delete(o.machines, n)
	}
	o.scaling = len(created)+len(deleted) > 0
	if len(created) > 0 {
		r.Recorder.Eventf(f, nil, corev1.EventTypeNormal, "MachinesCreated", "Scale", "created %s", names(created))
	}
	if len(deleted) > 0 {
		r.Recorder.Eventf(f, nil, corev1.EventTypeNormal, "MachinesDeleted", "Scale",
			"deleted %s; their log claims follow the template's storage.whenDeleted", names(deleted))
	}
	if err := r.ensureDisruptionBudget(ctx, f, replicas); err != nil {
		return ctrl.Result{}, err
	}

	o.plan = fleet.Decide(fleetPolicy(f), fleetMachines(o.machines), o.memory, now)
	if err := r.hold(ctx, f, o); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.reset(ctx, f, o, now); err != nil {
		return ctrl.Result{}, err
	}

	o.step = fleet.NextRollout(rolloutMachines(f, o.machines), rolloutDeadline(f), now)
	if o.step.Roll != "" {
		return ctrl.Result{}, r.roll(ctx, f, o.machines[machineIndex(f, o.step.Roll)], now)
	}
	if !o.step.Done && !o.step.Stalled {
		return ctrl.Result{RequeueAfter: rolloutDeadline(f)}, nil // look again when the deadline may have passed
	}
	return ctrl.Result{}, nil
}

// reset carries out the reset plan in progress, or records a new one first and then carries
// it out: each machine of the plan gets, in one update, the plan's token in its reset
// annotation and the escalations it answers; a corrupt log is quarantined first. A machine
// that records the plan is done, so a pass that follows a conflict, an error or an operator
// restart writes only what is left; when nothing is, the plan is retired (by the status write
// at the end of the pass).
func (r *VendingFleetReconciler) reset(ctx context.Context, f *vendingv1alpha1.VendingFleet, o *fleetObservation, now time.Time) error {
	rp := o.resetPlan
	if rp == nil {
		if o.plan.Record == nil {
			return nil
		}
		if err := r.recordPlan(ctx, f, o.plan.Record); err != nil {
			return err
		}
		o.recorded = f.DeepCopy()
		rp = o.plan.Record
		o.resetPlan = rp
	}
	window := fleetPolicy(f).Window
	machines := fleetMachines(o.machines)
	byName := make(map[string]fleet.Machine, len(machines))
	for _, m := range machines {
		byName[m.Name] = m
	}
	for _, pr := range fleet.Remaining(rp, machines) {
		m := byName[pr.Name]
		vm := o.machines[m.Index]
		if pr.Quarantine {
			if err := r.quarantine(ctx, f, vm, now); err != nil {
				return err
			}
		}
		history, err := json.Marshal(fleet.MachineHistory(m.History, rp, window, now))
		if err != nil {
			return err
		}
		if vm.Annotations == nil {
			vm.Annotations = map[string]string{}
		}
		vm.Annotations[annotationReset] = rp.Token
		vm.Annotations[annotationFleetEscalations] = string(history)
		delete(vm.Annotations, annotationCorruptLogHeld) // a reset ends a hold (an opt-in after it, say)
		if pr.Quarantine {
			// In the same update as the plan's record on the machine, which marks this bump done:
			// it happens once.
			gen, _ := strconv.Atoi(vm.Annotations[annotationLogGeneration])
			vm.Annotations[annotationLogGeneration] = strconv.Itoa(gen + 1)
		}
		// Update, not patch: a machine read from a stale cache fails with a conflict, and the
		// next pass continues the plan from what the machine really carries.
		if err := r.Update(ctx, vm); err != nil {
			return err
		}
	}
	o.retired, o.resetPlan = rp, nil
	return nil
}

// recordPlan writes the plan into the fleet's status before any machine is touched. The patch
// carries the fleet's resourceVersion: a pass that read a stale fleet (one that does not show
// a plan recorded, or retired, meanwhile) fails with a conflict instead of recording a second
// plan for the same escalation.
func (r *VendingFleetReconciler) recordPlan(ctx context.Context, f *vendingv1alpha1.VendingFleet, rp *fleet.ResetPlan) error {
	base := f.DeepCopy()
	f.Status.ResetPlan = apiResetPlan(rp)
	if err := r.Status().Patch(ctx, f, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return err
	}
	logf.FromContext(ctx).Info("Recorded reset plan", "token", rp.Token, "machines", len(rp.Machines))
	return nil
}

// hold hands the machines with a corrupt log to humans (spec.corruptLog.policy Escalate): the
// claim and the failed pod stay as they are. Each occurrence (failed pod) is recorded on the
// machine before it is announced, with a Warning event on the fleet and on the machine, so a
// requeue never repeats the events and a conflict (stale cache) announces nothing.
func (r *VendingFleetReconciler) hold(ctx context.Context, f *vendingv1alpha1.VendingFleet, o *fleetObservation) error {
	for _, h := range o.plan.Held {
		if !h.Announce {
			continue
		}
		vm := o.machines[h.Index]
		if vm.Annotations == nil {
			vm.Annotations = map[string]string{}
		}
		vm.Annotations[annotationCorruptLogHeld] = h.Evidence.Pod
		// Update, not patch: a stale cache must fail with a conflict rather than announce twice.
		if err := r.Update(ctx, vm); err != nil {
			return err
		}
		escalationsTotal.Inc()
		logf.FromContext(ctx).Info("Escalated a corrupt log to humans", "machine", klogRef(vm), "claim", h.Evidence.Claim,
			"file", h.Evidence.File, "offset", h.Evidence.Offset)
		summary := truncate(corruptLogSummary(vm.Name, h.Evidence), 600)
		r.Recorder.Eventf(f, vm, corev1.EventTypeWarning, ReasonCorruptLog, "Escalate",
			"%s; escalated to humans, no new log (spec.corruptLog.policy: Escalate); kubectl describe vfleet %s says what to do",
			summary, f.Name)
		r.Recorder.Eventf(vm, nil, corev1.EventTypeWarning, ReasonCorruptLog, "Escalate",
			"%s; VendingFleet %s escalated it to humans, no new log (spec.corruptLog.policy: Escalate); "+
				"kubectl describe vend %s says what to do", summary, f.Name, vm.Name)
	}
	return nil
}

// quarantine sets a corrupt log's claim aside: labelled, annotated with why, and without
// owner, so that no deletion of the machine takes the evidence with it.
func (r *VendingFleetReconciler) quarantine(ctx context.Context, f *vendingv1alpha1.VendingFleet, vm *vendingv1alpha1.VendingMachine,
	now time.Time) error {
	// The claim's metadata is all this changes (and all the cache keeps of claims).
	pvc := &metav1.PartialObjectMetadata{}
	pvc.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("PersistentVolumeClaim"))
	if err := r.Get(ctx, client.ObjectKey{Namespace: vm.Namespace, Name: pvcName(vm)}, pvc); err != nil {
		return client.IgnoreNotFound(err)
	}
	base := pvc.DeepCopy()
	if pvc.Labels[labelQuarantined] != "" {
		return nil
	}
	why := "unknown"
	if vm.Status.LastFailure != nil {
		why = vm.Status.LastFailure.Message
	}
	if pvc.Labels == nil {
		pvc.Labels = map[string]string{}
	}
	pvc.Labels[labelQuarantined] = vm.Name
	if pvc.Annotations == nil {
		pvc.Annotations = map[string]string{}
	}
	pvc.Annotations[annotationQuarantineReason] = fmt.Sprintf("%s: quarantined by VendingFleet %s at %s: %s",
		fleet.ReasonCorruptLog, f.Name, now.UTC().Format(time.RFC3339), truncate(why, 500))
	pvc.OwnerReferences = nil
	if err := r.Patch(ctx, pvc, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return err
	}
	r.Recorder.Eventf(f, pvc, corev1.EventTypeWarning, "Quarantined", "Quarantine",
		"machine %s has a corrupt log: claim %s is kept aside (label %s) and, as spec.corruptLog.policy StartNewLog asks, "+
			"the machine starts on a new, empty log; what the old log acknowledged is out of service: %s",
		vm.Name, pvc.Name, labelQuarantined, truncate(why, 300))
	return nil
}

// roll updates one machine to the fleet's template; its own supervisor replaces its pod,
// which replays the same log.
func (r *VendingFleetReconciler) roll(ctx context.Context, f *vendingv1alpha1.VendingFleet,
	vm *vendingv1alpha1.VendingMachine, now time.Time) error {
	want := desiredMachine(f, machineIndex(f, vm.Name))
	// A machine's pause is a human's switch on that machine (kubectl vend pause f-0): a roll
	// takes the template's spec but keeps it. The fleet's own spec.paused stops the fleet.
	paused := vm.Spec.Paused
	vm.Spec = want.Spec
	vm.Spec.Paused = paused
	for k, v := range want.Labels {
		vm.Labels[k] = v
	}
	if vm.Annotations == nil {
		vm.Annotations = map[string]string{}
	}
	vm.Annotations[annotationFleetTemplateHash] = want.Annotations[annotationFleetTemplateHash]
	vm.Annotations[annotationFleetUpdatedAt] = now.UTC().Format(time.RFC3339Nano)
	if err := r.Update(ctx, vm); err != nil {
		return err
	}
	logf.FromContext(ctx).Info("Rolled machine to the fleet's template", "machine", klogRef(vm))
	return nil
}

func (r *VendingFleetReconciler) ensureDisruptionBudget(ctx context.Context, f *vendingv1alpha1.VendingFleet, replicas int) error {
	pdb := &policyv1.PodDisruptionBudget{ObjectMeta: metav1.ObjectMeta{Name: f.Name, Namespace: f.Namespace}}
	_, err := controllerutil.CreateOrUpdate(ctx, r.Client, pdb, func() error {
		// Voluntary disruptions (a node drain) take one machine at a time.
		pdb.Spec.MinAvailable = ptr.To(intstr.FromInt32(int32(max(replicas-1, 0))))
		pdb.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{LabelFleet: f.Name}}
		return controllerutil.SetControllerReference(f, pdb, r.Scheme)
	})
	return err
}

// announceFleet emits the fleet's events once the status that records them is written: Reset
// when a plan completed, Escalated on the transition only.
func (r *VendingFleetReconciler) announceFleet(before, f *vendingv1alpha1.VendingFleet, o *fleetObservation) {
	if o.retired != nil {
		r.Recorder.Eventf(f, nil, corev1.EventTypeNormal, "Reset", "Reset", "%s", o.retired.Message)
	}
	if o.plan.Escalated && !meta.IsStatusConditionTrue(before.Status.Conditions, vendingv1alpha1.ConditionEscalated) {
		escalationsTotal.Inc()
		r.Recorder.Eventf(f, nil, corev1.EventTypeWarning, "Escalated", "Escalate", "%s", o.plan.Message)
	}
	if o.step.Stalled && !stalled(before) {
		r.Recorder.Eventf(f, nil, corev1.EventTypeWarning, ReasonRolloutStalled, "Roll", "%s", o.step.Message)
	}
}

func stalled(f *vendingv1alpha1.VendingFleet) bool {
	c := meta.FindStatusCondition(f.Status.Conditions, vendingv1alpha1.ConditionProgressing)
	return c != nil && c.Reason == ReasonRolloutStalled
}

// SetupWithManager registers the reconciler: it watches fleets, and the machines and
// disruption budgets they own.
func (r *VendingFleetReconciler) SetupWithManager(mgr ctrl.Manager, opts Options) error {
	if err := indexByLabel(context.Background(), mgr, &vendingv1alpha1.VendingMachine{}, machinesByFleet, LabelFleet); err != nil {
		return err
	}
	r.indexed = true
	return ctrl.NewControllerManagedBy(mgr).
		For(&vendingv1alpha1.VendingFleet{}, builder.WithPredicates(
			predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Owns(&vendingv1alpha1.VendingMachine{}).
		Owns(&policyv1.PodDisruptionBudget{}).
		WithOptions(opts).
		Named("vendingfleet").
		Complete(r)
}

// slowStartCreate creates machines as the ReplicaSet controller creates pods (its
// slowStartBatch): in batches of 1, 2, 4, ... at once, stopping at the first batch with an error,
// so a fleet of 1,000 is created in about ten round trips, and a create the API server refuses
// (a quota, a policy) is tried once, not a thousand times. It returns the names created.
func slowStartCreate(ctx context.Context, c client.Client, machines []*vendingv1alpha1.VendingMachine) ([]string, error) {
	var created []string
	for batch := 1; len(machines) > 0; batch = min(2*batch, 64) {
		n := min(batch, len(machines))
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i, vm := range machines[:n] {
			wg.Go(func() {
				if err := c.Create(ctx, vm); err != nil && !apierrors.IsAlreadyExists(err) {
					errs[i] = err
				}
			})
		}
		wg.Wait()
		for i, vm := range machines[:n] {
			if errs[i] == nil {
				created = append(created, vm.Name)
			}
		}
		if err := errors.Join(errs...); err != nil {
			return created, err
		}
		machines = machines[n:]
	}
	return created, nil
}

// names lists machine names for an event, the first few and how many: an event's note has room
// for about a kilobyte, and a fleet of 1,000 would not fit.
func names(list []string) string {
	slices.SortFunc(list, func(a, b string) int { return cmp.Or(cmp.Compare(len(a), len(b)), cmp.Compare(a, b)) })
	if len(list) == 1 {
		return "machine " + list[0]
	}
	if len(list) <= 10 {
		return fmt.Sprintf("%d machines: %s", len(list), strings.Join(list, ", "))
	}
	return fmt.Sprintf("%d machines: %s, … %s", len(list), strings.Join(list[:5], ", "), list[len(list)-1])
}

func machineName(f *vendingv1alpha1.VendingFleet, n int) string {
	return fmt.Sprintf("%s-%d", f.Name, n)
}

func machineIndex(f *vendingv1alpha1.VendingFleet, name string) int {
	n, err := strconv.Atoi(name[len(f.Name)+1:])
	if err != nil {
		return -1
	}
	return n
}

// desiredMachine is machine n as the fleet's template (and its variant) makes it.
func desiredMachine(f *vendingv1alpha1.VendingFleet, n int) *vendingv1alpha1.VendingMachine {
	spec := f.Spec.Template.Spec.DeepCopy()
	if len(f.Spec.Variants) > 0 {
		v := f.Spec.Variants[n%len(f.Spec.Variants)]
		if v.Image != "" {
			spec.Image = v.Image
		}
		if len(v.Menu) > 0 {
			spec.Menu = slices.Clone(v.Menu)
		}
	}
	if len(spec.TopologySpreadConstraints) == 0 {
		// Bulkheads: spread the machines over nodes, but never leave one unscheduled for it.
		spec.TopologySpreadConstraints = []corev1.TopologySpreadConstraint{{
			MaxSkew: 1, TopologyKey: corev1.LabelHostname, WhenUnsatisfiable: corev1.ScheduleAnyway,
			LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{LabelFleet: f.Name}},
		}}
	}
	labels := map[string]string{}
	for k, v := range f.Spec.Template.Labels {
		labels[k] = v
	}
	labels[LabelFleet] = f.Name
	labels[labelMachineIndex] = strconv.Itoa(n)
	vm := &vendingv1alpha1.VendingMachine{
		ObjectMeta: metav1.ObjectMeta{Name: machineName(f, n), Namespace: f.Namespace, Labels: labels,
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(f, vendingv1alpha1.GroupVersion.WithKind("VendingFleet"))}},
		Spec: *spec,
	}
	b, _ := json.Marshal(struct {
		Labels map[string]string
		Spec   *vendingv1alpha1.VendingMachineSpec
	}{labels, spec})
	h := fnv.New64a()
	_, _ = h.Write(b)
	vm.Annotations = map[string]string{annotationFleetTemplateHash: strconv.FormatUint(h.Sum64(), 36)}
	return vm
}

func fleetPolicy(f *vendingv1alpha1.VendingFleet) fleet.Policy {
	p := fleet.Policy{Strategy: fleet.Strategy(f.Spec.Strategy), MaxEscalations: 3, Window: 10 * time.Minute}
	if p.Strategy == "" {
		p.Strategy = fleet.OneForOne
	}
	if m := f.Spec.Intensity.MaxEscalations; m != nil {
		p.MaxEscalations = int(*m)
	}
	if w := f.Spec.Intensity.Window; w != nil {
		p.Window = w.Duration
	}
	p.CorruptLog = fleet.CorruptLogPolicy(f.Spec.CorruptLog.Policy)
	return p
}

func rolloutDeadline(f *vendingv1alpha1.VendingFleet) time.Duration {
	if d := f.Spec.RolloutDeadline; d != nil {
		return d.Duration
	}
	return 5 * time.Minute
}

// machineEscalated: the machine gave up on its failure and no reset of it is pending (its
// status reflects the reset annotation it has).
func machineEscalated(vm *vendingv1alpha1.VendingMachine) bool {
	return meta.IsStatusConditionTrue(vm.Status.Conditions, vendingv1alpha1.ConditionEscalated) &&
		vm.Annotations[annotationReset] == vm.Status.ObservedReset
}

func fleetMachines(ms map[int]*vendingv1alpha1.VendingMachine) []fleet.Machine {
	out := make([]fleet.Machine, 0, len(ms))
	for n, vm := range ms {
		m := fleet.Machine{Index: n, Name: vm.Name, Escalated: machineEscalated(vm), ObservedReset: vm.Status.ObservedReset}
		m.Evidence.Claim = pvcName(vm)
		m.Held = vm.Annotations[annotationCorruptLogHeld]
		if lf := vm.Status.LastFailure; lf != nil {
			m.Reason, m.FailedAt = lf.Reason, lf.Time.Time
			m.Evidence.Pod, m.Evidence.File, m.Evidence.Offset, m.Evidence.Sequence = lf.PodName, lf.File, lf.Offset, lf.Sequence
		}
		_ = json.Unmarshal([]byte(vm.Annotations[annotationFleetEscalations]), &m.History)
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b fleet.Machine) int { return a.Index - b.Index })
	return out
}

// machineReady: the machine's status describes its current spec and says Ready.
func machineReady(vm *vendingv1alpha1.VendingMachine) bool {
	return vm.Status.ObservedGeneration == vm.Generation &&
		meta.IsStatusConditionTrue(vm.Status.Conditions, vendingv1alpha1.ConditionReady)
}

func rolloutMachines(f *vendingv1alpha1.VendingFleet, ms map[int]*vendingv1alpha1.VendingMachine) []fleet.RolloutMachine {
	out := make([]fleet.RolloutMachine, 0, len(ms))
	for n, vm := range ms {
		rm := fleet.RolloutMachine{Index: n, Name: vm.Name, Ready: machineReady(vm),
			Updated: vm.Annotations[annotationFleetTemplateHash] == desiredMachine(f, n).Annotations[annotationFleetTemplateHash]}
		if !rm.Ready {
			if c := meta.FindStatusCondition(vm.Status.Conditions, vendingv1alpha1.ConditionReady); c != nil {
				rm.NotReadySince = c.LastTransitionTime.Time
			}
			if t, err := time.Parse(time.RFC3339Nano, vm.Annotations[annotationFleetUpdatedAt]); err == nil && t.After(rm.NotReadySince) {
				rm.NotReadySince = t
			}
			if rm.NotReadySince.IsZero() {
				rm.NotReadySince = vm.CreationTimestamp.Time
			}
		}
		out = append(out, rm)
	}
	slices.SortFunc(out, func(a, b fleet.RolloutMachine) int { return a.Index - b.Index })
	return out
}

func minPositive(a, b time.Duration) time.Duration {
	if a <= 0 || (b > 0 && b < a) {
		return b
	}
	return a
}
