// Package controller holds the reconcilers of the vending-operator: the thin imperative shell
// that observes children, asks the pure policies (internal/supervision) what to do, acts, and
// writes status and events.
package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/supervisor"
)

// DefaultVendingImage is the vending pod image for machines that name none.
const DefaultVendingImage = "vendingfleet/vendingpod:dev"

// kindVendingFleet is the Kind of a VendingFleet, as a machine's controller reference names it.
const kindVendingFleet = "VendingFleet"

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
	// StateRefresh is how long a quiet machine's reported state is used before its pod is asked
	// again (DefaultStateRefresh when 0).
	StateRefresh time.Duration
	states       *stateReads // made by SetupWithManager (or on first use, for a reconciler run alone)
	// APIReader reads from the API server, not the cache (the manager's GetAPIReader): a step
	// that creates a pod is decided on what it reads. Nil: the Client.
	APIReader client.Reader
	// FirstStatusDelay overrides the package's FirstStatusDelay (tests; negative: none).
	FirstStatusDelay time.Duration
	// PodClusterRole is what the pods' ServiceAccount is bound to in each namespace with
	// machines (DefaultPodClusterRole when empty).
	PodClusterRole string
	// indexed: the client is the manager's cache, with the podsByMachine index (set up by
	// SetupWithManager); a bare client lists by label.
	indexed bool
	// identities are the namespaces whose pod ServiceAccount and RoleBinding this process has
	// made sure of: two creates per namespace, not per pod (set up by SetupWithManager).
	identities *sync.Map
	identityMu *sync.Mutex
}

// +kubebuilder:rbac:groups=vending.resilience.dev,resources=vendingmachines,verbs=get;list;watch
// +kubebuilder:rbac:groups=vending.resilience.dev,resources=vendingmachines/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch;create;delete;patch
// +kubebuilder:rbac:groups="",resources=persistentvolumeclaims,verbs=get;list;watch;create
// +kubebuilder:rbac:groups="",resources=services,verbs=get;list;watch;create
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile moves one VendingMachine toward its spec: observe, ask the supervisor
// (supervisor.Next), remember, act, then write what was observed.
//
// The order is the guarantee: the supervisor's memory (status) is written before anything is
// created or deleted, conditionally on the version it was computed from. A conflict (a stale
// cache, another writer) ends the pass before it acts, so no step is ever taken on a memory
// that is not the latest, and no deletion of a pod can take the memory with it.
func (r *VendingMachineReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	vm := &vendingv1alpha1.VendingMachine{}
	if err := r.Get(ctx, req.NamespacedName, vm); apierrors.IsNotFound(err) {
		// Gone: its pods go with the garbage collector (owner references), once their
		// finalizers are off; a retained claim has no owner and stays.
		r.stateReads().forget(req.NamespacedName)
		return ctrl.Result{}, r.releaseAll(ctx, req.Namespace, req.Name)
	} else if err != nil {
		return ctrl.Result{}, err
	}
	if !vm.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.releaseAll(ctx, vm.Namespace, vm.Name)
	}
	now := r.clock().Now()
	o, err := r.observe(ctx, vm)
	if err != nil {
		return ctrl.Result{}, err
	}
	step, err := r.decide(ctx, vm, &o, now)
	if err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, r.sayRefused(ctx, vm, err)
	}
	r.observeState(ctx, vm, &o, step.Memory.PodName, now)
	return r.carryOut(ctx, vm, step, o, now)
}

// sayRefused puts a refusal to create a child (its claim, Service or pod) into the machine's
// status and a Warning event, where kubectl describe, kstatus and Argo CD look; it returns err
// for the retry with backoff. Other errors (timeouts, a server away) are retried silently.
func (r *VendingMachineReconciler) sayRefused(ctx context.Context, vm *vendingv1alpha1.VendingMachine, err error) error {
	if !refused(err) {
		return err
	}
	before := vm.DeepCopy()
	markRefused(&vm.Status, vm.Generation, err)
	if equality.Semantic.DeepEqual(before.Status, vm.Status) {
		return err // said already
	}
	if werr := r.writeStatus(ctx, vm, before); werr == nil {
		r.Recorder.Eventf(vm, nil, corev1.EventTypeWarning, ReasonCreateRefused, "Create", "%v", err)
	}
	return err
}

// decide is the supervisor's choice for this pass. A step that creates a pod is decided again
// on live reads (vm and o are then replaced by what the API server has).
func (r *VendingMachineReconciler) decide(ctx context.Context, vm *vendingv1alpha1.VendingMachine, o *observation,
	now time.Time) (supervisor.Step, error) {
	if vm.Spec.Paused {
		return supervisor.Step{Memory: supervisor.MemoryOf(&vm.Status)}, nil
	}
	next := func() supervisor.Step {
		return supervisor.Next(supervisor.Input{Machine: vm, Pods: o.pods, Others: o.others,
			TemplateHash: templateHash(vm, r.image(vm)), Now: now, Nodes: o.nodes, PinnedTo: o.pinnedTo})
	}
	step := next()
	// The claim and the Service exist before any pod is created; they, and the live reads
	// below, go at once: a new machine costs one round trip to the API server here, not four.
	var g errgroup.Group
	pvc, svc := buildPVC(vm), buildService(vm)
	g.Go(func() error { return r.ensure(ctx, pvc) })
	g.Go(func() error { return r.ensure(ctx, svc) })
	var live *liveView
	if step.Create {
		// Creating a pod is the one step that could put two pods on the claim (a cache that has
		// not seen a pod yet, or a machine read before its last write): decide it again on live
		// reads. Pods are created rarely, so this costs two reads now and then.
		live = r.readLive(ctx, &g, vm)
	}
	if err := g.Wait(); err != nil {
		return supervisor.Step{}, err
	}
	if live != nil {
		*vm = *live.machine
		o.pods, o.others = splitOwned(live.pods.Items, vm)
		if err := r.observeNodes(ctx, vm, o, true); err != nil {
			return supervisor.Step{}, err
		}
		step = next()
	}
	return step, nil
}

// carryOut remembers, announces and acts on a step, then writes the observed status.
func (r *VendingMachineReconciler) carryOut(ctx context.Context, vm *vendingv1alpha1.VendingMachine, step supervisor.Step,
	o observation, now time.Time) (ctrl.Result, error) {
	before := vm.DeepCopy() // the machine as this pass read it
	read := before.DeepCopy()
	vm.Status = computeStatus(vm, step, o, now)
	acts := len(step.Delete) > 0 || step.Create || len(step.Release) > 0
	// A new machine's first pod (incarnation 0, with the supervisor's finalizer) is its own
	// record until the status is written: a pass that finds it without a memory adopts it
	// (supervisor.Next), and a create of it again fails with AlreadyExists. So its memory is
	// not written before the pod is created, which saves a write per machine.
	first := before.Status.PodName == "" && step.Transition == vendingv1alpha1.PodCreated
	// A pass that does not act writes its memory with the rest (below), or defers both.
	deferred := first || (!acts && r.deferFirstStatus(read, vm, o, false, nil, now) > 0)
	if !deferred && !step.Memory.Equal(supervisor.MemoryOf(&before.Status)) {
		// observedGeneration advances only once the step is done: at once when there is nothing
		// to do, in the same write (one write, not two); after the acts otherwise (below).
		vm.Status.ObservedGeneration = vm.Generation
		if acts {
			vm.Status.ObservedGeneration = before.Status.ObservedGeneration
		}
		if err := r.writeStatus(ctx, vm, before); apierrors.IsConflict(err) {
			return ctrl.Result{RequeueAfter: conflictRetry}, nil
		} else if err != nil {
			return ctrl.Result{}, client.IgnoreNotFound(err) // gone: its next event releases its pods
		}
		before = vm.DeepCopy()
		// Announced on the memory write, which succeeds once per decision and transition: at
		// most once. A write whose response is lost (committed, reported failed) loses its
		// events, never its conditions: the status is the record, events are the news.
		r.announce(ctx, vm, step, o, now)
	}
	var actErr error
	var created bool
	if acts {
		created, actErr = r.act(ctx, vm, step)
	}
	if actErr == nil {
		vm.Status.ObservedGeneration = vm.Generation
	}
	stalledBefore := meta.FindStatusCondition(read.Status.Conditions, vendingv1alpha1.ConditionStalled)
	if refused(actErr) {
		markRefused(&vm.Status, vm.Generation, actErr)
	}
	var result ctrl.Result
	if wait := r.deferFirstStatus(read, vm, o, created, actErr, now); wait > 0 {
		result.RequeueAfter = wait
		return result, nil
	}
	if err := r.writeStatus(ctx, vm, before); apierrors.IsConflict(err) {
		result.RequeueAfter = conflictRetry
	} else if err != nil && actErr == nil {
		actErr = client.IgnoreNotFound(err)
	} else if err == nil {
		r.announceWritten(read, vm, o, actErr, stalledBefore)
	}
	if result.RequeueAfter == 0 {
		result.RequeueAfter = r.nextPass(vm, step, now)
	}
	return result, actErr
}

// announceWritten says what the status just written records and the news of it: a refusal
// (once, when it begins), a recovery (once the status that says Ready reached the API server: a
// pass whose write failed announces nothing, and the next one, reading Ready, announces it then).
func (r *VendingMachineReconciler) announceWritten(read, vm *vendingv1alpha1.VendingMachine, o observation, actErr error,
	stalledBefore *metav1.Condition) {
	if refused(actErr) && (stalledBefore == nil || stalledBefore.Reason != ReasonCreateRefused) {
		r.Recorder.Eventf(vm, nil, corev1.EventTypeWarning, ReasonCreateRefused, "Create", "%v", actErr)
	}
	r.announceRecovery(read, vm, o)
	observeRecovery(read, vm, o.pod(vm.Status.PodName))
	if p := o.unreachable(); p != nil && readyReason(read) != ReasonNodeUnreachable && readyReason(vm) == ReasonNodeUnreachable {
		r.Recorder.Eventf(vm, p, corev1.EventTypeWarning, ReasonNodeUnreachable, "Observe", "%s", unreachableMessage(p, o.pinnedTo))
	}
}

func readyReason(vm *vendingv1alpha1.VendingMachine) string {
	if c := meta.FindStatusCondition(vm.Status.Conditions, vendingv1alpha1.ConditionReady); c != nil && c.Status != metav1.ConditionTrue {
		return c.Reason
	}
	return ""
}

// nextPass is when the machine is looked at again without news: its restart when one is due,
// else when its pod's state is due to be asked again (0: never).
func (r *VendingMachineReconciler) nextPass(vm *vendingv1alpha1.VendingMachine, step supervisor.Step, now time.Time) time.Duration {
	if step.NextRestartAt != nil {
		return max(step.NextRestartAt.Sub(now), time.Millisecond)
	}
	return r.stateReads().due(client.ObjectKeyFromObject(vm), now)
}

// FirstStatusDelay is how long a new machine's status may wait for its first write, from its
// first pod's creation: a machine whose pod is Ready sooner gets one status write that says so,
// instead of one that says it starts and another that says it is Ready. Meanwhile the machine
// reads as not yet observed (observedGeneration 0, which kstatus, Argo CD and kubectl wait read
// as in progress). Counted from the pod, not the machine: an operator with a backlog (10,000
// machines applied at once) still writes each machine once.
const FirstStatusDelay = 5 * time.Second

func (r *VendingMachineReconciler) firstStatusDelay() time.Duration {
	if r.FirstStatusDelay != 0 {
		return r.FirstStatusDelay
	}
	return FirstStatusDelay
}

// deferFirstStatus says how long the machine's first status write may still wait (0: write
// now): its status was never written (read is the machine as the pass read it), it is only
// starting (no failure, no refusal, not Ready yet), and its first pod exists (observed, or created
// by this pass: created) and is younger than the first status delay. A first pod that could not be
// created (a predecessor's pod still runs on the claim, or the name is another's) is no reason to
// wait: the status says so at once, and the memory that the name was asked for moves the next
// pass on to the next name.
func (r *VendingMachineReconciler) deferFirstStatus(read, vm *vendingv1alpha1.VendingMachine, o observation, created bool,
	actErr error, now time.Time) time.Duration {
	if read.Status.PodName != "" || actErr != nil || vm.Status.Phase != vendingv1alpha1.PhasePending || vm.Status.LastFailure != nil {
		return 0
	}
	since := now
	if pod := o.pod(vm.Status.PodName); pod != nil {
		since = pod.CreationTimestamp.Time
	} else if !created {
		return 0
	}
	if since.After(now.Add(time.Second)) {
		return 0 // the API server's clock is ahead of ours: an age cannot be told, so no wait
	}
	return max(r.firstStatusDelay()-max(now.Sub(since), 0), 0)
}

// conflictRetry is how soon a pass that met a conflict (its read was stale: usually the cache
// had not yet seen this operator's previous write) runs again. A conflict is routine, not an
// error: nothing was acted on.
const conflictRetry = 100 * time.Millisecond

// writeStatus patches the status from base to vm, on the condition that the machine is still
// at base's resourceVersion: a status computed from a stale read fails with a conflict and the
// pass is retried on the latest, instead of overwriting newer memory.
func (r *VendingMachineReconciler) writeStatus(ctx context.Context, vm, base *vendingv1alpha1.VendingMachine) error {
	if equality.Semantic.DeepEqual(base.Status, vm.Status) {
		return nil
	}
	err := r.Status().Patch(ctx, vm, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{}))
	if apierrors.IsConflict(err) {
		logf.FromContext(ctx).V(1).Info("Machine changed since it was read: retrying on the latest", "machine", klogRef(vm))
		conflictsTotal.WithLabelValues("VendingMachine").Inc()
	}
	return err
}

// stateReads is the reconciler's memory of what pods reported (made on first use).
func (r *VendingMachineReconciler) stateReads() *stateReads {
	if r.states == nil {
		r.states = newStateReads(r.StateRefresh)
	}
	return r.states
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

// observe reads the machine's pods.
func (r *VendingMachineReconciler) observe(ctx context.Context, vm *vendingv1alpha1.VendingMachine) (observation, error) {
	var o observation
	pods, err := r.podsOf(ctx, vm.Namespace, vm.Name)
	if err != nil {
		return o, err
	}
	o.pods, o.others = splitOwned(pods.Items, vm)
	o.escalatedTo = escalationTarget(vm)
	return o, r.observeNodes(ctx, vm, &o, false)
}

// observeState adds what the machine's current pod (of the step's memory) reports, when it is
// ready: its last answer while nothing it was read after changed (stateReads), else asked now.
func (r *VendingMachineReconciler) observeState(ctx context.Context, vm *vendingv1alpha1.VendingMachine, o *observation,
	podName string, now time.Time) {
	if cur := o.pod(podName); cur != nil && r.StateReader != nil && supervisor.Ready(cur) && cur.DeletionTimestamp == nil &&
		supervisor.NodeOf(cur, o.nodes) == supervisor.NodeUp { // a pod on an unreachable node would only time out
		st, stale, ok := r.stateReads().last(vm, cur, now)
		if !ok {
			var err error
			if st, err = r.StateReader.ReadState(ctx, cur); err == nil {
				r.stateReads().remember(vm, cur, st, now)
			} else {
				// The same life's last answer stands until the pod answers again (asked after a
				// retry delay, not on every pass).
				logf.FromContext(ctx).V(1).Info("Reading machine state", "pod", klogRef(cur), "err", err.Error())
				r.stateReads().failed(vm, cur, stale, now)
				st = stale
			}
		}
		if st != nil {
			o.state, o.stateOf = st, cur.Name
		}
	}
}

// podsOf lists the pods of machine namespace/name (its label) from the cache's index.
func (r *VendingMachineReconciler) podsOf(ctx context.Context, namespace, name string) (*corev1.PodList, error) {
	pods := &corev1.PodList{}
	by := client.ListOption(client.MatchingLabels{labelMachine: name})
	if r.indexed {
		by = client.MatchingFields{podsByMachine: name}
	}
	return pods, r.List(ctx, pods, client.InNamespace(namespace), by)
}

// liveView is the machine and its pods as the API server has them (quorum reads).
type liveView struct {
	machine *vendingv1alpha1.VendingMachine
	pods    *corev1.PodList
}

// readLive reads the machine and its pods again from the API server, in g.
func (r *VendingMachineReconciler) readLive(ctx context.Context, g *errgroup.Group, vm *vendingv1alpha1.VendingMachine) *liveView {
	reader := r.apiReader()
	live := &liveView{machine: &vendingv1alpha1.VendingMachine{}, pods: &corev1.PodList{}}
	g.Go(func() error { return reader.Get(ctx, client.ObjectKeyFromObject(vm), live.machine) })
	g.Go(func() error {
		return reader.List(ctx, live.pods, client.InNamespace(vm.Namespace), client.MatchingLabels(selectorLabels(vm)))
	})
	return live
}

// splitOwned sorts the pods of the machine's label into those it controls and the others.
func splitOwned(pods []corev1.Pod, vm *vendingv1alpha1.VendingMachine) (owned, others []corev1.Pod) {
	for _, p := range pods {
		if metav1.IsControlledBy(&p, vm) {
			owned = append(owned, p)
		} else {
			others = append(others, p)
		}
	}
	return owned, others
}

// escalationTarget names who an escalation goes to: the owning VendingFleet (which decides
// what to do about the machine) or, at the top of the tree, humans.
func escalationTarget(vm *vendingv1alpha1.VendingMachine) string {
	if ref := metav1.GetControllerOf(vm); ref != nil && ref.Kind == kindVendingFleet {
		return "VendingFleet " + ref.Name
	}
	return "humans (kubectl describe)"
}

// ensure creates a child that does not exist yet. Children are never updated in place: the
// claim is immutable, the service constant.
func (r *VendingMachineReconciler) ensure(ctx context.Context, obj client.Object) error {
	// Only whether it exists matters: the cache of claims and Services holds their metadata only.
	gvk, err := r.GroupVersionKindFor(obj)
	if err != nil {
		return err
	}
	probe := &metav1.PartialObjectMetadata{}
	probe.SetGroupVersionKind(gvk)
	if err := r.Get(ctx, client.ObjectKeyFromObject(obj), probe); err == nil || !apierrors.IsNotFound(err) {
		return err
	}
	if err := r.Create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating %s %s: %w", gvk.Kind, obj.GetName(), err)
	}
	logf.FromContext(ctx).Info(fmt.Sprintf("Created %T", obj), "object", klogRef(obj))
	return nil
}

// releaseAll takes the supervisor's finalizer off the pods of a machine that is gone or going,
// each once that cannot let its object vanish while it runs (a pod force-deleted while it runs
// is released when it is terminal: its status update brings the next pass).
func (r *VendingMachineReconciler) releaseAll(ctx context.Context, namespace, name string) error {
	pods, err := r.podsOf(ctx, namespace, name)
	if err != nil {
		return err
	}
	for i := range pods.Items {
		// A pod not yet deleted keeps it: the garbage collector's graceful deletion brings the
		// next pass. One nobody deletes (orphaned with --cascade=orphan) keeps it until it ends
		// or is deleted, so that a force delete cannot make its object vanish while it runs.
		if p := &pods.Items[i]; supervisor.MayRelease(p, false) {
			if err := r.release(ctx, p); err != nil {
				return err
			}
		}
	}
	return nil
}

// release takes the supervisor's finalizer off a pod: a JSON patch that tests the entry before
// it removes it, so another controller's finalizer added meanwhile is kept, and a status update
// of the pod (its kubelet) does not make it conflict.
func (r *VendingMachineReconciler) release(ctx context.Context, pod *corev1.Pod) error {
	i := slices.Index(pod.Finalizers, supervisor.Finalizer)
	if i < 0 {
		return nil
	}
	path := fmt.Sprintf("/metadata/finalizers/%d", i)
	patch, err := json.Marshal([]map[string]string{
		{"op": "test", "path": path, "value": supervisor.Finalizer},
		{"op": "remove", "path": path},
	})
	if err != nil {
		return err
	}
	return client.IgnoreNotFound(r.Patch(ctx, pod, client.RawPatch(types.JSONPatchType, patch)))
}

// act carries out a step whose memory is written: finalizers released (the pods' ends are
// recorded), deletions, then the new incarnation. All are idempotent, so a pass that fails half
// way is finished by the next. created: this pass created the step's pod (not: it existed).
func (r *VendingMachineReconciler) act(ctx context.Context, vm *vendingv1alpha1.VendingMachine,
	step supervisor.Step) (created bool, err error) {
	for _, p := range step.Release {
		if err := r.release(ctx, p); err != nil {
			return false, err
		}
	}
	for _, d := range step.Delete {
		opts := []client.DeleteOption{client.Preconditions{UID: &d.Pod.UID}}
		if !d.Graceful {
			opts = append(opts, client.GracePeriodSeconds(0)) // terminal: nothing runs to stop
		}
		if err := r.Delete(ctx, d.Pod, opts...); client.IgnoreNotFound(err) != nil && !apierrors.IsConflict(err) {
			return false, err
		}
	}
	if !step.Create {
		return false, nil
	}
	if err := r.ensurePodIdentity(ctx, vm.Namespace); err != nil {
		return false, err
	}
	pod := buildPod(vm, r.image(vm), step.Memory.PodName, step.Memory.PodCause, step.Memory.RestartTimes)
	if err := r.Create(ctx, pod); err != nil {
		if apierrors.IsAlreadyExists(err) {
			// A stale cache (the pod is there, the next pass sees it), or a pod of the name
			// that is not the machine's: the memory says the name was asked for, and the next
			// pass takes the next one.
			return false, nil
		}
		if r.identities != nil {
			r.identities.Delete(vm.Namespace) // the ServiceAccount may be gone: made sure of again
		}
		return false, fmt.Errorf("creating Pod %s: %w", pod.Name, err)
	}
	logf.FromContext(ctx).Info("Created Pod", "pod", klogRef(pod), "cause", step.Memory.PodCause)
	if step.Memory.PodCause == vendingv1alpha1.PodRestarted {
		restartsTotal.WithLabelValues(failureReason(step.Memory.LastFailure)).Inc()
	}
	return true, nil
}

// ensurePodIdentity makes sure of the pods' ServiceAccount in namespace once per process (and
// again after a pod create fails).
func (r *VendingMachineReconciler) ensurePodIdentity(ctx context.Context, namespace string) error {
	if r.identities != nil {
		if _, done := r.identities.Load(namespace); done {
			return nil
		}
		// One worker makes sure of it while the others wait (a thousand machines applied to a
		// new namespace would otherwise each send the two creates).
		r.identityMu.Lock()
		defer r.identityMu.Unlock()
		if _, done := r.identities.Load(namespace); done {
			return nil
		}
	}
	role := r.PodClusterRole
	if role == "" {
		role = DefaultPodClusterRole
	}
	if err := EnsurePodIdentity(ctx, r.Client, namespace, role); err != nil {
		return err
	}
	if r.identities != nil {
		r.identities.Store(namespace, true)
	}
	return nil
}

func failureReason(f *vendingv1alpha1.Failure) string {
	if f == nil {
		return ""
	}
	return f.Reason
}

// announce emits the events (and metrics) of a step whose memory was just written: once per
// decision and once per transition, since that write succeeds once.
func (r *VendingMachineReconciler) announce(ctx context.Context, vm *vendingv1alpha1.VendingMachine, step supervisor.Step,
	o observation, now time.Time) {
	mem := step.Memory
	if step.InPlace > 0 {
		r.announceInPlace(vm, o.pod(mem.PodName), step.InPlace, step.InPlaceLast, mem)
	}
	if step.Decided && mem.LastFailure != nil {
		r.announceDecision(vm, o.pod(mem.LastFailure.PodName), *mem.LastFailure, now)
	}
	if step.Transition == "" {
		return
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: mem.PodName, Namespace: vm.Namespace}}
	// A first start is routine: the status says it, and an event per machine would cost a
	// write per machine (10,000 at a fleet's creation).
	switch step.Transition {
	case vendingv1alpha1.PodRestarted:
		f := mem.LastFailure
		r.Recorder.Eventf(vm, pod, corev1.EventTypeNormal, "Restarted", "CreatePod",
			"restarting as pod %s after %s of pod %s (restart %d within the window; %s); it replays the event log and completes pending orders",
			mem.PodName, f.Reason, f.PodName, len(mem.RestartTimes), f.DecisionReason)
	case vendingv1alpha1.PodRecreated:
		r.Recorder.Eventf(vm, pod, corev1.EventTypeNormal, "Recreated", "CreatePod",
			"the previous pod was lost from outside (%s): recreating it as pod %s on the same event log; "+
				"not counted against the restart window", lostHow(mem), mem.PodName)
	case vendingv1alpha1.PodRolled:
		r.Recorder.Eventf(vm, pod, corev1.EventTypeNormal, "Rolling", "Roll",
			"spec changed: replacing the pod with %s (it replays the same log)", mem.PodName)
	case vendingv1alpha1.PodReset:
		r.Recorder.Eventf(vm, pod, corev1.EventTypeNormal, "Reset", "Reset",
			"reset requested (%s=%s): replacing the pod with %s, with a fresh restart window (it replays the same log)",
			annotationReset, mem.ObservedReset, mem.PodName)
	}
	logf.FromContext(ctx).Info("Supervisor step", "machine", klogRef(vm), "step", step.String())
}

// announceInPlace emits RestartedInPlace for restarts the pod's own supervisor made, once per
// report counted (the memory write that counts them succeeds once). Reports coalesce while the
// API server is away: the event then says how many, and describes the latest.
func (r *VendingMachineReconciler) announceInPlace(vm *vendingv1alpha1.VendingMachine, pod *corev1.Pod, n int32,
	f *vendingv1alpha1.Failure, mem supervisor.Memory) {
	inPlaceRestartsTotal.WithLabelValues(failureReason(f)).Add(float64(n))
	if f == nil {
		return
	}
	what := "the vending process"
	if n > 1 {
		what = fmt.Sprintf("%d restarts in place; the latest: the vending process", n)
	}
	r.Recorder.Eventf(vm, relatedPod(pod), corev1.EventTypeWarning, "RestartedInPlace", "RestartInPlace",
		"%s of pod %s failed: %s (exit %d): %s; the pod's supervisor restarted it in place (%d restarts within the window; %s)",
		what, f.PodName, f.Reason, f.ExitCode, truncate(f.Message, 300), len(mem.RestartTimes), f.DecisionReason)
}

// lostHow says how the previous pod was lost: stopped from outside with a reason, or gone.
func lostHow(mem supervisor.Memory) string {
	if f := mem.LastFailure; f != nil && f.External && f.Action == vendingv1alpha1.ActionRestart {
		return f.Reason
	}
	return "its pod object was deleted"
}

// announceDecision emits the events and metrics of a new decision: once per failure, because
// the decision is remembered before it is announced.
func (r *VendingMachineReconciler) announceDecision(vm *vendingv1alpha1.VendingMachine, pod *corev1.Pod,
	f vendingv1alpha1.Failure, now time.Time) {
	related := relatedPod(pod)
	switch {
	case f.External && f.Action != vendingv1alpha1.ActionEscalate:
		r.Recorder.Eventf(vm, related, corev1.EventTypeWarning, "Disrupted", "Observe",
			"pod %s was stopped from outside: %s: %s; not the machine's failure", f.PodName, f.Reason, truncate(f.Message, 300))
		return
	case f.External:
		// Not the machine's failure, and yet it cannot go on (its volume is pinned to a lost node).
		r.Recorder.Eventf(vm, related, corev1.EventTypeWarning, "Disrupted", "Observe",
			"pod %s was stopped from outside: %s: %s", f.PodName, f.Reason, truncate(f.Message, 300))
	default:
		r.Recorder.Eventf(vm, related, corev1.EventTypeWarning, "Failed", "Observe",
			"pod %s failed: %s (exit %d): %s", f.PodName, f.Reason, f.ExitCode, truncate(f.Message, 300))
	}
	switch f.Action {
	case vendingv1alpha1.ActionEscalate:
		escalationsTotal.Inc()
		if f.Reason == contract.ReasonCorruptLog {
			r.Recorder.Eventf(vm, related, corev1.EventTypeWarning, "Escalated", "Escalate",
				"%s; escalated to %s; see the Escalated condition for what to do",
				truncate(corruptLogSummary(vm.Name, evidenceOf(claimOf(vm, pod), f)), 600), escalationTarget(vm))
			return
		}
		r.Recorder.Eventf(vm, related, corev1.EventTypeWarning, "Escalated", "Escalate",
			"%s; escalated to %s", f.DecisionMessage, escalationTarget(vm))
	case vendingv1alpha1.ActionStop:
		r.Recorder.Eventf(vm, related, corev1.EventTypeWarning, "Stopped", "Stop", "%s", f.DecisionMessage)
	case vendingv1alpha1.ActionRestart:
		if f.RestartAt != nil {
			backoffSeconds.Observe(max(0, f.RestartAt.Sub(now).Seconds()))
		}
	}
}

// announceRecovery emits Recovered when a machine whose pod was restarted, recreated or reset
// becomes Ready again: the one event that compares with the previous status, since a
// transition is what it reports. A roll or a first start is no recovery.
func (r *VendingMachineReconciler) announceRecovery(before, after *vendingv1alpha1.VendingMachine, o observation) {
	was := meta.IsStatusConditionTrue(before.Status.Conditions, vendingv1alpha1.ConditionReady)
	is := meta.IsStatusConditionTrue(after.Status.Conditions, vendingv1alpha1.ConditionReady)
	if was || !is {
		return
	}
	st := after.Status
	switch st.PodCause {
	case vendingv1alpha1.PodRestarted:
		r.Recorder.Eventf(after, relatedPod(o.pod(st.PodName)), corev1.EventTypeNormal, "Recovered", "Recover",
			"pod %s is ready again after the restart on %s: its event log is replayed (%d restarts in the machine's life)",
			st.PodName, failureReason(st.LastFailure), st.Restarts)
	case vendingv1alpha1.PodRecreated, vendingv1alpha1.PodReset:
		r.Recorder.Eventf(after, relatedPod(o.pod(st.PodName)), corev1.EventTypeNormal, "Recovered", "Recover",
			"pod %s is ready again (%s): its event log is replayed", st.PodName, strings.ToLower(string(st.PodCause)))
	}
}

// machineOfPod names the machine a pod belongs to: by its controller reference and by its label.
func machineOfPod(_ context.Context, obj client.Object) []reconcile.Request {
	var out []reconcile.Request
	add := func(name string) {
		for _, r := range out {
			if r.Name == name {
				return
			}
		}
		out = append(out, reconcile.Request{NamespacedName: client.ObjectKey{Namespace: obj.GetNamespace(), Name: name}})
	}
	ref := metav1.GetControllerOf(obj)
	if ref != nil && ref.Kind == "VendingMachine" && ref.APIVersion == vendingv1alpha1.GroupVersion.String() {
		add(ref.Name)
	}
	if name := obj.GetLabels()[labelMachine]; name != "" {
		add(name)
	}
	return out
}

// relatedPod is an event's related object: the pod, or none (a nil *Pod is not a nil Object).
func relatedPod(p *corev1.Pod) runtime.Object {
	if p == nil {
		return nil
	}
	return p
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
	r.identities, r.identityMu = new(sync.Map), new(sync.Mutex)
	r.states = newStateReads(r.StateRefresh)
	if err := indexByLabel(context.Background(), mgr, &corev1.Pod{}, podsByMachine, labelMachine); err != nil {
		return err
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &corev1.Pod{}, podsByNode, func(o client.Object) []string {
		if n := o.(*corev1.Pod).Spec.NodeName; n != "" {
			return []string{n}
		}
		return nil
	}); err != nil {
		return err
	}
	r.indexed = true
	return ctrl.NewControllerManagedBy(mgr).
		// Our own status writes do not wake us: only spec changes and annotations (the reset
		// a fleet or a human asks for) do, besides the children.
		For(&vendingv1alpha1.VendingMachine{}, builder.WithPredicates(
			predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		// Pods map to their machine by label as well as by owner: a pod whose owner reference
		// was removed (an orphaned predecessor) still carries a finalizer to release.
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(machineOfPod)).
		Owns(&corev1.Service{}, builder.OnlyMetadata).
		// A node that stops answering, is fenced or deleted concerns the machines on it.
		Watches(&corev1.Node{}, handler.EnqueueRequestsFromMapFunc(r.machinesOnNode), builder.WithPredicates(nodeHealthChanged)).
		WithOptions(opts).
		Named("vendingmachine").
		Complete(r)
}
