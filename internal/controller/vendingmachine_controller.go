// Package controller holds the reconcilers of the vending-operator: the thin imperative shell
// that observes children, asks the pure policies (internal/supervision) what to do, acts, and
// writes status and events.
package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/supervision"
)

// DefaultVendingImage is the vending pod image for machines that name none.
const DefaultVendingImage = "vendingfleet/vendingpod:dev"

// kindVendingFleet is the Kind of a VendingFleet, as a machine's controller reference names it.
const kindVendingFleet = "VendingFleet"

// stateRefresh is how often a ready machine's reported state (coins, degraded) is read again.
const stateRefresh = 30 * time.Second

// Options tunes the controllers.
type Options = controller.Options

// VendingMachineReconciler supervises VendingMachines: the talk's CoffeeMachineManager at
// cluster scale.
type VendingMachineReconciler struct {
	client.Client
	Scheme       *runtime.Scheme
	Recorder     recorder.EventRecorder
	VendingImage string
	// Clock is injected so tests can reason about time; the real clock when nil.
	Clock clock.PassiveClock
	// StateReader reads what a ready pod reports; nil: not read.
	StateReader StateReader
}

// +kubebuilder:rbac:groups=vending.resilience.dev,resources=vendingmachines,verbs=get;list;watch
// +kubebuilder:rbac:groups=vending.resilience.dev,resources=vendingmachines/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch;create;delete;patch
// +kubebuilder:rbac:groups="",resources=persistentvolumeclaims,verbs=get;list;watch;create
// +kubebuilder:rbac:groups="",resources=services,verbs=get;list;watch;create
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile moves one VendingMachine toward its spec: observe, decide, act, then one status
// patch rebuilt from what was observed.
func (r *VendingMachineReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	vm := &vendingv1alpha1.VendingMachine{}
	if err := r.Get(ctx, req.NamespacedName, vm); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !vm.DeletionTimestamp.IsZero() {
		// Children go with the garbage collector (owner references); a retained claim has none.
		return ctrl.Result{}, nil
	}
	now := r.clock().Now()
	before := vm.DeepCopy()
	o, err := r.observe(ctx, vm)
	if err != nil {
		return ctrl.Result{}, err
	}
	if !vm.Spec.Paused {
		result, err = r.reconcileNormal(ctx, vm, &o, now)
		if err != nil {
			retErr = err
		}
	}
	vm.Status = computeStatus(vm, o, now)
	r.announceRecovery(before, vm)
	if !equality.Semantic.DeepEqual(before.Status, vm.Status) {
		if err := r.Status().Patch(ctx, vm, client.MergeFrom(before)); err != nil && !apierrors.IsNotFound(err) {
			retErr = err
		}
	}
	if o.state != nil && result.RequeueAfter == 0 {
		result.RequeueAfter = stateRefresh
	}
	return result, retErr
}

func (r *VendingMachineReconciler) clock() clock.PassiveClock {
	if r.Clock == nil {
		return clock.RealClock{}
	}
	return r.Clock
}

func (r *VendingMachineReconciler) image(vm *vendingv1alpha1.VendingMachine) string {
	if vm.Spec.Image != "" {
		return vm.Spec.Image
	}
	return r.VendingImage
}

// observe reads the machine's pods, and what a ready pod reports.
func (r *VendingMachineReconciler) observe(ctx context.Context, vm *vendingv1alpha1.VendingMachine) (observation, error) {
	var o observation
	pods := &corev1.PodList{}
	if err := r.List(ctx, pods, client.InNamespace(vm.Namespace), client.MatchingLabels(selectorLabels(vm))); err != nil {
		return o, err
	}
	owned := pods.Items[:0]
	for _, p := range pods.Items {
		if metav1.IsControlledBy(&p, vm) {
			owned = append(owned, p)
		}
	}
	o.current, _ = splitPods(owned)
	if o.current != nil {
		if d, ok := decisionOf(o.current); ok && podTerminal(o.current) {
			o.decision = &d
		}
		if r.StateReader != nil && podReady(o.current) && o.current.DeletionTimestamp == nil {
			if st, err := r.StateReader.ReadState(ctx, o.current); err == nil {
				o.state = st
			} else {
				logf.FromContext(ctx).V(1).Info("Reading machine state", "pod", klogRef(o.current), "err", err.Error())
			}
		}
	}
	o.escalatedTo = escalationTarget(vm)
	return o, nil
}

// escalationTarget names who an escalation goes to: the owning VendingFleet (which decides
// what to do about the machine) or, at the top of the tree, humans.
func escalationTarget(vm *vendingv1alpha1.VendingMachine) string {
	if ref := metav1.GetControllerOf(vm); ref != nil && ref.Kind == kindVendingFleet {
		return "VendingFleet " + ref.Name
	}
	return "humans (kubectl describe)"
}

// reconcileNormal runs the phases in order; each returns when it has acted or has to wait.
func (r *VendingMachineReconciler) reconcileNormal(ctx context.Context, vm *vendingv1alpha1.VendingMachine,
	o *observation, now time.Time) (ctrl.Result, error) {
	if err := r.ensure(ctx, buildPVC(vm)); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.ensure(ctx, buildService(vm)); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.deleteOlderPods(ctx, vm, o.current); err != nil {
		return ctrl.Result{}, err
	}
	return r.supervise(ctx, vm, o, now)
}

// ensure creates a child that does not exist yet. Children are never updated in place: the
// claim is immutable, the service constant.
func (r *VendingMachineReconciler) ensure(ctx context.Context, obj client.Object) error {
	if err := r.Get(ctx, client.ObjectKeyFromObject(obj), obj.DeepCopyObject().(client.Object)); err == nil || !apierrors.IsNotFound(err) {
		return err
	}
	if err := r.Create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	logf.FromContext(ctx).Info(fmt.Sprintf("Created %T", obj), "object", klogRef(obj))
	return nil
}

// deleteOlderPods removes pods of earlier incarnations: the restart that replaced them is done.
func (r *VendingMachineReconciler) deleteOlderPods(ctx context.Context, vm *vendingv1alpha1.VendingMachine, current *corev1.Pod) error {
	if current == nil {
		return nil
	}
	pods := &corev1.PodList{}
	if err := r.List(ctx, pods, client.InNamespace(vm.Namespace), client.MatchingLabels(selectorLabels(vm))); err != nil {
		return err
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Name == current.Name || !metav1.IsControlledBy(p, vm) || p.DeletionTimestamp != nil {
			continue
		}
		if err := r.Delete(ctx, p, client.GracePeriodSeconds(0)); client.IgnoreNotFound(err) != nil {
			return err
		}
	}
	return nil
}

// supervise is the supervisor proper: create the first pod, recreate a lost one, roll a pod
// whose spec changed, and decide about a failed one.
func (r *VendingMachineReconciler) supervise(ctx context.Context, vm *vendingv1alpha1.VendingMachine,
	o *observation, now time.Time) (ctrl.Result, error) {
	pod := o.current
	switch {
	case pod == nil && vm.Status.PodName == "":
		o.progress = ReasonCreating
		return ctrl.Result{}, r.createPod(ctx, vm, podMemory{incarnation: 0}, "Created", "created pod %s", corev1.EventTypeNormal)
	case pod == nil:
		// Deleted from outside (or by a roll): recreate at once, on the same log.
		o.progress = ReasonRecreating
		n := incarnationFromName(vm) + 1
		return ctrl.Result{}, r.createPod(ctx, vm, podMemory{incarnation: n}, "Recreated",
			"pod %s was missing: recreated it on the same event log", corev1.EventTypeNormal)
	case pod.DeletionTimestamp != nil:
		o.progress = ReasonRecreating
		return ctrl.Result{}, nil // its deletion will trigger the next pass
	case !podTerminal(pod):
		if reset, ok := vm.Annotations[annotationReset]; ok && reset != pod.Annotations[annotationReset] {
			// A reset of a running machine (a fleet's AllForOne or RestForOne, or a human)
			// restarts it: the next pass creates a fresh pod with a fresh window.
			o.progress = ReasonRestarting
			r.Recorder.Eventf(vm, pod, corev1.EventTypeNormal, "Reset", "Reset",
				"reset requested (%s=%s): replacing pod %s (the new one replays the same log)", annotationReset, reset, pod.Name)
			return ctrl.Result{}, r.deleteToReplace(ctx, pod, now)
		}
		if pod.Annotations[annotationTemplateHash] != templateHash(vm, r.image(vm)) {
			o.progress = ReasonRolling
			r.Recorder.Eventf(vm, pod, corev1.EventTypeNormal, "Rolling", "Roll",
				"spec changed: replacing pod %s (the new one replays the same log)", pod.Name)
			return ctrl.Result{}, r.deleteToReplace(ctx, pod, now)
		}
		return ctrl.Result{}, nil
	}
	return r.superviseFailure(ctx, vm, o, now)
}

// deleteToReplace deletes a running pod that the next pass replaces, and marks the observed
// copy as going, so that this pass's status does not call the machine Ready on a pod that is
// being replaced (a fleet rolling its machines waits on exactly that).
func (r *VendingMachineReconciler) deleteToReplace(ctx context.Context, pod *corev1.Pod, now time.Time) error {
	if err := r.Delete(ctx, pod); client.IgnoreNotFound(err) != nil {
		return err
	}
	pod.DeletionTimestamp = &metav1.Time{Time: now}
	return nil
}

// incarnationFromName is the incarnation the status last named, for recreating a lost pod.
func incarnationFromName(vm *vendingv1alpha1.VendingMachine) int32 {
	n, err := strconv.Atoi(strings.TrimPrefix(vm.Status.PodName, vm.Name+"-"))
	if err != nil {
		return vm.Status.Restarts
	}
	return max(int32(n), vm.Status.Restarts)
}

// superviseFailure decides about a failed pod once, records the decision on it, and acts.
func (r *VendingMachineReconciler) superviseFailure(ctx context.Context, vm *vendingv1alpha1.VendingMachine,
	o *observation, now time.Time) (ctrl.Result, error) {
	pod := o.current
	policy := policyOf(vm)
	if o.decision == nil {
		f, apiFailure := failureOf(pod)
		d := supervision.Decide(policy, restartHistory(pod), f, vm.Namespace+"/"+vm.Name, now)
		rec := recordedDecision{Action: d.Action, RestartAt: d.RestartAt, Reason: d.Reason, Message: d.Message, Failure: apiFailure}
		if err := r.recordDecision(ctx, pod, rec); err != nil {
			return ctrl.Result{}, err
		}
		o.decision = &rec
		r.announceDecision(vm, pod, rec, now)
	}
	d := o.decision
	if reset, ok := vm.Annotations[annotationReset]; ok && reset != pod.Annotations[annotationReset] && d.Action != supervision.Restart {
		// A reset (from a fleet or a human) clears the escalation: a fresh pod, a fresh window.
		o.decision = nil
		o.progress = ReasonRestarting
		return ctrl.Result{}, r.restart(ctx, vm, pod, *d, nil, "Reset")
	}
	if d.Action != supervision.Restart {
		return ctrl.Result{}, nil // Stop or Escalate: the failed pod stays, as evidence
	}
	if wait := d.RestartAt.Sub(now); wait > 0 {
		o.progress, o.nextRestartAt = ReasonBackingOff, &d.RestartAt
		return ctrl.Result{RequeueAfter: wait}, nil
	}
	o.progress = ReasonRestarting
	history := append(supervision.RecentRestarts(restartHistory(pod), policy.Window, now), now)
	return ctrl.Result{}, r.restart(ctx, vm, pod, *d, history, string(d.Action)+" by the decider")
}

func (r *VendingMachineReconciler) recordDecision(ctx context.Context, pod *corev1.Pod, d recordedDecision) error {
	b, err := json.Marshal(d)
	if err != nil {
		return err
	}
	patch := client.MergeFrom(pod.DeepCopy())
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[annotationDecision] = string(b)
	return r.Patch(ctx, pod, patch)
}

// announceDecision emits the events and metrics of a new decision: once per failure, because
// the decision is recorded on the pod before.
func (r *VendingMachineReconciler) announceDecision(vm *vendingv1alpha1.VendingMachine, pod *corev1.Pod,
	d recordedDecision, now time.Time) {
	f := d.Failure
	r.Recorder.Eventf(vm, pod, corev1.EventTypeWarning, "Failed", "Observe",
		"pod %s failed: %s (exit %d): %s", pod.Name, f.Reason, f.ExitCode, truncate(f.Message, 300))
	switch d.Action {
	case supervision.Escalate:
		escalationsTotal.Inc()
		if f.Reason == contract.ReasonCorruptLog {
			r.Recorder.Eventf(vm, pod, corev1.EventTypeWarning, "Escalated", "Escalate",
				"%s; escalated to %s; see the Escalated condition for what to do",
				truncate(corruptLogSummary(vm.Name, evidenceOf(claimOf(vm, pod), f)), 600), escalationTarget(vm))
			return
		}
		r.Recorder.Eventf(vm, pod, corev1.EventTypeWarning, "Escalated", "Escalate",
			"%s; escalated to %s", d.Message, escalationTarget(vm))
	case supervision.Stop:
		r.Recorder.Eventf(vm, pod, corev1.EventTypeWarning, "Stopped", "Stop", "%s", d.Message)
	case supervision.Restart:
		backoffSeconds.Observe(max(0, d.RestartAt.Sub(now).Seconds()))
	}
}

// restart creates the next incarnation on the same claim, carrying the supervisor's memory,
// then removes the failed pod.
func (r *VendingMachineReconciler) restart(ctx context.Context, vm *vendingv1alpha1.VendingMachine, failed *corev1.Pod,
	d recordedDecision, history []time.Time, why string) error {
	f := d.Failure
	f.Action = vendingv1alpha1.SupervisorAction(d.Action)
	lf, _ := json.Marshal(f)
	mem := podMemory{incarnation: incarnation(failed) + 1, history: formatHistory(history), lastFailure: string(lf)}
	if err := r.createPod(ctx, vm, mem, "Restarted",
		fmt.Sprintf("restarted as pod %%s after %s (%s); it replays the event log and completes pending orders",
			f.Reason, why), corev1.EventTypeNormal); err != nil {
		return err
	}
	restartsTotal.WithLabelValues(f.Reason).Inc()
	return client.IgnoreNotFound(r.Delete(ctx, failed, client.GracePeriodSeconds(0)))
}

func (r *VendingMachineReconciler) createPod(ctx context.Context, vm *vendingv1alpha1.VendingMachine, mem podMemory,
	reason, format, eventType string) error {
	pod := buildPod(vm, r.image(vm), mem)
	if err := r.Create(ctx, pod); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return nil // a stale cache: the pod is there, the next pass sees it
		}
		return err
	}
	logf.FromContext(ctx).Info("Created Pod", "pod", klogRef(pod), "incarnation", mem.incarnation, "reason", reason)
	r.Recorder.Eventf(vm, pod, eventType, reason, "CreatePod", format, pod.Name)
	return nil
}

// announceRecovery emits Recovered when a machine that had restarted becomes Ready again: the
// one event that compares with the previous status, since a transition is what it reports.
func (r *VendingMachineReconciler) announceRecovery(before, after *vendingv1alpha1.VendingMachine) {
	was := meta.IsStatusConditionTrue(before.Status.Conditions, vendingv1alpha1.ConditionReady)
	is := meta.IsStatusConditionTrue(after.Status.Conditions, vendingv1alpha1.ConditionReady)
	if !was && is && after.Status.Restarts > 0 {
		r.Recorder.Eventf(after, nil, corev1.EventTypeNormal, "Recovered", "Recover",
			"pod %s is ready again after %d restarts: its event log is replayed", after.Status.PodName, after.Status.Restarts)
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// SetupWithManager registers the reconciler: it watches machines and the pods, claims and
// services they own.
func (r *VendingMachineReconciler) SetupWithManager(mgr ctrl.Manager, opts Options) error {
	return ctrl.NewControllerManagedBy(mgr).
		// Our own status writes do not wake us: only spec changes and annotations (the reset
		// a fleet or a human asks for) do, besides the children.
		For(&vendingv1alpha1.VendingMachine{}, builder.WithPredicates(
			predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Owns(&corev1.Pod{}).
		Owns(&corev1.Service{}).
		WithOptions(opts).
		Named("vendingmachine").
		Complete(r)
}
