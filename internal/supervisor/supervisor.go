// Package supervisor is the VendingMachine supervisor's choice as a pure function: given the
// machine (its spec, its reset annotation and its status, which holds the supervisor's
// memory), the pods it owns and the time, what to remember and what to do. No client, no clock:
// the reconciler observes, calls Next, writes the memory, then acts.
//
// The memory (status.podName, podUID, podCause, lastFailure with its decision, restartTimes,
// the counters, observedReset) is never rebuilt from pods: pods are evidence that anyone may
// delete. Next returns the memory after the step; the reconciler writes it, conditionally on the
// version it read, before it creates or deletes anything, so that a crash, a conflict or a
// stale cache can delay a step but never fork or erase what was decided.
package supervisor

import (
	"fmt"
	"math"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/supervision"
)

// Input is everything the supervisor's choice depends on.
type Input struct {
	// Machine: spec (policy, paused), the reset annotation, and status (the memory).
	Machine *vendingv1alpha1.VendingMachine
	// Pods the machine controls.
	Pods []corev1.Pod
	// Others are pods of the machine's name it does not control: a predecessor's (a machine
	// deleted and created again under its name, whose pods the garbage collector has not
	// removed yet). They may run on the same claim, so no pod is created while one may run.
	Others []corev1.Pod
	// TemplateHash of the pod the spec asks for now; a running pod with another is rolled.
	TemplateHash string
	Now          time.Time
	// Nodes: the state of the nodes the pods are bound to, by name (a node not listed is up).
	Nodes map[string]NodeState
	// PinnedTo names the node the machine's volume is pinned to (local storage), "" when it
	// can follow the pod to any node. Read only when a pod's node is not up.
	PinnedTo string
}

// Memory is what the supervisor must not forget; it lives in the machine's status.
type Memory struct {
	PodName        string
	PodUID         types.UID
	PodRequested   bool
	PodCause       vendingv1alpha1.PodCause
	Restarts       int32
	InPlace        int32 // of Restarts, made by the in-pod supervisor
	PodInPlace     int32 // in-place restarts of PodName counted so far
	PrevPod        string
	PrevPodInPlace int32 // in-place restarts of PrevPod counted so far
	Recreations    int32
	Rolls          int32
	Resets         int32
	RestartTimes   []metav1.Time
	LastFailure    *vendingv1alpha1.Failure
	ObservedReset  string
}

// MemoryOf reads the memory from a status.
func MemoryOf(st *vendingv1alpha1.VendingMachineStatus) Memory {
	m := Memory{PodName: st.PodName, PodUID: st.PodUID, PodRequested: st.PodRequested, PodCause: st.PodCause, Restarts: st.Restarts,
		InPlace: st.InPlaceRestarts, PodInPlace: st.PodInPlaceRestarts,
		PrevPod: st.PreviousPodName, PrevPodInPlace: st.PreviousPodInPlaceRestarts,
		Recreations: st.Recreations, Rolls: st.Rolls, Resets: st.Resets, ObservedReset: st.ObservedReset}
	m.RestartTimes = append(m.RestartTimes, st.RestartTimes...)
	if st.LastFailure != nil {
		m.LastFailure = st.LastFailure.DeepCopy()
	}
	return m
}

// WriteTo puts the memory into a status.
func (m Memory) WriteTo(st *vendingv1alpha1.VendingMachineStatus) {
	st.PodName, st.PodUID, st.PodRequested, st.PodCause = m.PodName, m.PodUID, m.PodRequested, m.PodCause
	st.Restarts, st.Recreations, st.Rolls, st.Resets = m.Restarts, m.Recreations, m.Rolls, m.Resets
	st.InPlaceRestarts, st.PodInPlaceRestarts = m.InPlace, m.PodInPlace
	st.PreviousPodName, st.PreviousPodInPlaceRestarts = m.PrevPod, m.PrevPodInPlace
	st.RestartTimes, st.LastFailure, st.ObservedReset = m.RestartTimes, m.LastFailure, m.ObservedReset
}

// Equal: the same memory (so nothing needs writing).
func (m Memory) Equal(o Memory) bool { return equality.Semantic.DeepEqual(m, o) }

// Pending is the decision in force: about the failure of the current incarnation, until a
// restart or a reset moves the machine on to the next one. A Stop or an Escalate stays in force
// when the failed pod is deleted.
func (m Memory) Pending() *vendingv1alpha1.Failure {
	if decidedPod(m.LastFailure) == m.PodName && m.PodName != "" {
		return m.LastFailure
	}
	return nil
}

// decidedPod is the pod whose end the failure's decision is about ("" for none). An in-place
// restart is carried out inside a pod that lives on: it decides nothing about the pod.
func decidedPod(f *vendingv1alpha1.Failure) string {
	if f == nil || f.Action == "" || f.InPlace {
		return ""
	}
	return f.PodName
}

// Escalated: the supervisor gave up on the current incarnation and waits for a reset.
func (m Memory) Escalated() bool {
	p := m.Pending()
	return p != nil && p.Action == vendingv1alpha1.ActionEscalate
}

// Stopped: the decider stopped the machine; it waits for a reset.
func (m Memory) Stopped() bool {
	p := m.Pending()
	return p != nil && p.Action == vendingv1alpha1.ActionStop
}

// Progress names what the supervisor is doing, for the Progressing condition.
type Progress string

// Progress values.
const (
	Idle       Progress = ""
	Creating   Progress = "Creating"
	Restarting Progress = "Restarting"
	Recreating Progress = "Recreating"
	BackingOff Progress = "BackingOff"
	Rolling    Progress = "Rolling"
	Resetting  Progress = "Resetting"
)

// Deletion is a pod to delete. Graceful for a pod whose container may still run (it gets its
// SIGTERM and the API object stays until the kubelet confirms); at once for a terminal one.
type Deletion struct {
	Pod      *corev1.Pod
	Graceful bool
}

// Step is what the supervisor chose.
type Step struct {
	// Memory after the step: written before any action.
	Memory Memory
	// Transition, when the step moves the machine to a new incarnation (or creates its first),
	// says why: one event per transition, since the memory write that records it happens once.
	Transition vendingv1alpha1.PodCause
	// Decided: the step made a new decision about a failure (Memory.LastFailure), to announce.
	Decided bool
	// Delete these pods, then Create (when set): the incarnation in Memory.PodName, which no
	// pod that may still run on the claim precedes.
	Delete []Deletion
	Create bool
	// Release: pods whose finalizer the supervisor no longer needs (their end is recorded, or
	// they are not the current incarnation's): removed after the memory write, before deletes.
	Release []*corev1.Pod
	// InPlace: restarts the in-pod supervisor reported that this step counts, and the latest's
	// failure (to announce; the memory's LastFailure may be a newer decision about the pod).
	InPlace     int32
	InPlaceLast *vendingv1alpha1.Failure
	// Progress and, while backing off, when the restart is due.
	Progress      Progress
	NextRestartAt *time.Time
	// current is the pod of the current incarnation, when it exists (for the step's own use).
	current *corev1.Pod
	// pinnedTo is Input.PinnedTo.
	pinnedTo string
}

// Next is the supervisor's choice for one pass. See the package comment for the contract.
func Next(in Input) Step {
	in.Pods, in.Others = endLost(in.Pods, in.Nodes, in.Now), endLost(in.Others, in.Nodes, in.Now)
	s := choose(in)
	s.stayPinned(in)
	s.singleWriter(in.Pods, in.Others)
	s.release(in)
	if s.Create {
		s.Memory.PodRequested = true // remembered before the pod is asked for
	}
	return *s
}

func choose(in Input) *Step {
	vm, now := in.Machine, in.Now
	policy := PolicyOf(vm)
	mem := MemoryOf(&vm.Status)
	mem.RestartTimes = recentTimes(mem.RestartTimes, policy.Window, now)
	s := &Step{Memory: mem, pinnedTo: in.PinnedTo}

	if mem.PodName == "" && len(in.Pods) == 0 {
		// A new machine: it has nothing to reset, and its first pod is incarnation 0.
		s.Memory.ObservedReset = vm.Annotations[AnnotationReset]
		s.next(vm, 0, vendingv1alpha1.PodCreated, Creating)
		s.Create = true
		return s
	}
	if mem.PodName == "" {
		// Pods without a memory: the status was lost (restored from a backup without it).
		// Adopt the newest (below) rather than start another beside it; its reset is taken as
		// carried out.
		s.Memory.ObservedReset = vm.Annotations[AnnotationReset]
	}

	cur := s.adoptNewest(vm, in.Pods, mem.PodName == "")
	var olderRunning bool
	for i := range in.Pods {
		p := &in.Pods[i]
		switch {
		case p.Name == s.Memory.PodName:
			s.current = p
		case Incarnation(p) < cur:
			// An earlier incarnation: the step that replaced it is done; it goes.
			if !Terminal(p) {
				olderRunning = true
			}
			if mayDelete(p) {
				s.Delete = append(s.Delete, Deletion{Pod: p, Graceful: !Terminal(p)})
			}
		}
	}
	s.seeCurrent(policy, now)
	s.seePrevious(in.Pods, policy, now)

	if reset := vm.Annotations[AnnotationReset]; reset != "" && reset != s.Memory.ObservedReset {
		s.reset(vm, cur, reset, olderRunning)
		return s
	}

	pod := s.current
	switch {
	case pod == nil:
		s.lost(vm, cur, olderRunning, now)
	case s.Memory.Pending() != nil:
		// The supervisor saw this pod fail (a pod never runs again after restartPolicy Never):
		// a view of it running is a stale cache, and the decision in force stands.
		s.failed(vm, cur, policy, olderRunning, now)
	case Terminal(pod):
		s.failed(vm, cur, policy, olderRunning, now)
	case pod.DeletionTimestamp != nil:
		// Deleted from outside while it runs (kubectl delete, a drain): lost from outside. The
		// next incarnation is reserved now; it is created once this one is gone.
		s.Memory.Recreations++
		s.next(vm, cur+1, vendingv1alpha1.PodRecreated, Recreating)
	case pod.Annotations[AnnotationTemplateHash] != in.TemplateHash:
		s.Memory.Rolls++
		s.next(vm, cur+1, vendingv1alpha1.PodRolled, Rolling)
		s.Delete = append(s.Delete, Deletion{Pod: pod, Graceful: true})
	}
	return s
}

// adoptNewest takes as the current incarnation a pod newer than the memory, and returns the
// current incarnation's number. Such a pod means the memory was lost (a status restored without
// its status, say), or a new machine's first pod was created before anything was written (the
// reconciler does not write the memory of a first start: the pod is its record). The pod is
// adopted rather than its name reused: it was asked for, and incarnation 0 is always a first
// start. blank: the memory was empty.
func (s *Step) adoptNewest(vm *vendingv1alpha1.VendingMachine, pods []corev1.Pod, blank bool) int32 {
	cur := incarnationOfName(vm, s.Memory.PodName)
	for i := range pods {
		if n := Incarnation(&pods[i]); n > cur {
			cur = n
			s.Memory.PodName, s.Memory.PodUID, s.Memory.PodRequested = pods[i].Name, "", true
		}
	}
	if blank && cur == 0 {
		// A first start, adopted: the reset carried out is the one its pod was created under
		// (pods carry it), so a reset asked for since then is not taken as done.
		s.Memory.PodCause = vendingv1alpha1.PodCreated
		for i := range pods {
			if pods[i].Name == s.Memory.PodName {
				s.Memory.ObservedReset = pods[i].Annotations[AnnotationReset]
			}
		}
	}
	return cur
}

// release lists the pods whose finalizer is no longer needed once this step's memory is
// written: a pod of an earlier incarnation (its end does not matter to the memory any more), a
// current pod whose failure is decided, and a predecessor's pod (not this machine's).
//
// A pod that may still run is released only while its deletion is graceful: the API server then
// keeps the object until its kubelet confirms the containers ended, so the single-writer check
// still sees it. A running pod deleted with --force keeps the finalizer (and so its object) until
// it is terminal: released earlier, its object would vanish while its container still writes.
func (s *Step) release(in Input) {
	graceful := map[types.UID]bool{}
	for _, d := range s.Delete {
		graceful[d.Pod.UID] = d.Graceful
	}
	mayRelease := func(p *corev1.Pod) bool { return MayRelease(p, graceful[p.UID]) }
	for i := range in.Pods {
		p := &in.Pods[i]
		if !HasFinalizer(p) || !mayRelease(p) {
			continue
		}
		if p.Name != s.Memory.PodName || decidedPod(s.Memory.LastFailure) == p.Name {
			s.Release = append(s.Release, p)
		}
	}
	for i := range in.Others {
		if p := &in.Others[i]; HasFinalizer(p) && mayRelease(p) {
			s.Release = append(s.Release, p)
		}
	}
}

// MayRelease: the pod's finalizer may come off without its object vanishing while its
// container may still run: it is terminal, or its deletion is graceful (asked for, or about to
// be: deletingGracefully), so the API server keeps it until its kubelet confirms.
func MayRelease(p *corev1.Pod, deletingGracefully bool) bool {
	switch {
	case Terminal(p), p.Spec.NodeName == "": // ended, or never scheduled: nothing runs
		return true
	case p.DeletionTimestamp != nil:
		return ptrDeref(p.DeletionGracePeriodSeconds) > 0
	}
	return deletingGracefully
}

// mayDelete: the pod is to be deleted (again): it is not being deleted yet, or it is ended on a
// lost node and its deletion waits for a grace period no kubelet will ever end (the taint
// manager evicts the pods of a node tainted out of service gracefully).
func mayDelete(p *corev1.Pod) bool {
	return p.DeletionTimestamp == nil || (p.Status.Reason == ReasonNodeLost && Terminal(p) && ptrDeref(p.DeletionGracePeriodSeconds) > 0)
}

// singleWriter is the last word on a step: a new pod is created only when no other pod of the
// machine may still run on the claim (the log has one writer), and only a terminal pod, or one
// the supervisor saw fail, is deleted without its grace period.
func (s *Step) singleWriter(pods, others []corev1.Pod) {
	failed := decidedPod(s.Memory.LastFailure) // seen failed: a view of it running is stale
	for i := range s.Delete {
		if p := s.Delete[i].Pod; !Terminal(p) && p.Name != failed {
			s.Delete[i].Graceful = true
		}
	}
	if !s.Create {
		return
	}
	for i := range pods {
		if p := &pods[i]; p.Name != s.Memory.PodName && !Terminal(p) && p.Name != failed {
			s.Create = false
			return
		}
	}
	// A predecessor's pod blocks whatever its name (it may bear the very name to create) and
	// whatever this machine's memory says of that name.
	for i := range others {
		if !Terminal(&others[i]) {
			s.Create = false
			return
		}
	}
}

// next moves the memory to incarnation n, for cause.
func (s *Step) next(vm *vendingv1alpha1.VendingMachine, n int32, cause vendingv1alpha1.PodCause, p Progress) {
	if s.Memory.PodUID != "" {
		// The pod being replaced may still tell restarts in its termination message.
		s.Memory.PrevPod, s.Memory.PrevPodInPlace = s.Memory.PodName, s.Memory.PodInPlace
	}
	s.Memory.PodInPlace = 0
	s.Memory.PodName, s.Memory.PodUID, s.Memory.PodRequested, s.Memory.PodCause = PodName(vm, n), "", false, cause
	s.Transition, s.Progress = cause, p
}

// reset clears the window and any decision in force, and replaces the current pod with a new
// incarnation: a fresh start on the same log.
func (s *Step) reset(vm *vendingv1alpha1.VendingMachine, cur int32, reset string, olderRunning bool) {
	s.Memory.ObservedReset, s.Memory.RestartTimes = reset, nil
	s.Memory.Resets++
	pod := s.current
	s.next(vm, cur+1, vendingv1alpha1.PodReset, Resetting)
	s.current = nil
	if pod != nil && mayDelete(pod) {
		s.Delete = append(s.Delete, Deletion{Pod: pod, Graceful: !Terminal(pod)})
	}
	s.Create = !olderRunning && (pod == nil || Terminal(pod))
}

// lost: the current incarnation has no pod. Either a decision is in force (its failed pod was
// deleted: the decision still holds), or the pod was seen and is gone (lost from outside:
// recreated at once, outside the window), or it was asked for and never seen: not created
// (a create that failed) or created and deleted before the supervisor saw it. The two cannot be
// told apart, and a name is never used for two pods, so the next name is taken, with the same
// cause. (The reconciler decides every step that creates a pod again on live reads, so a pod
// merely missing from a lagging cache is found there and nothing moves.) A name reserved and
// not yet asked for (a roll or a reset waiting for the old pod to go) is asked for now.
func (s *Step) lost(vm *vendingv1alpha1.VendingMachine, cur int32, olderRunning bool, now time.Time) {
	if d := s.Memory.Pending(); d != nil {
		if d.Action == vendingv1alpha1.ActionRestart {
			s.restart(vm, cur, d, olderRunning, now)
		}
		return // Stop or Escalate holds, evidence or not
	}
	switch {
	case olderRunning:
		// An earlier incarnation may still run on the claim: wait for it to go first.
		s.Progress = progressOf(s.Memory.PodCause)
		if s.Memory.PodUID != "" {
			s.Progress = Recreating
		}
		return
	case s.Memory.PodUID != "":
		s.Memory.Recreations++
		s.next(vm, cur+1, vendingv1alpha1.PodRecreated, Recreating)
	case s.Memory.PodRequested:
		cause := s.Memory.PodCause
		s.next(vm, cur+1, cause, progressOf(cause))
		s.Transition = "" // announced when it was reserved
	default:
		s.Progress = progressOf(s.Memory.PodCause) // reserved, never asked for: ask now
	}
	s.Create = true
}

// failed: the current pod ended. Decide once (the decision goes into the memory before it is
// announced or acted on), then carry the decision in force out.
func (s *Step) failed(vm *vendingv1alpha1.VendingMachine, cur int32, policy supervision.Policy, olderRunning bool,
	now time.Time) {
	d := s.Memory.Pending()
	if d == nil {
		f, api := FailureOf(s.current)
		dec := supervision.Decide(policy, timesOf(s.Memory.RestartTimes), f, vm.Namespace+"/"+vm.Name, now)
		api.Action = vendingv1alpha1.SupervisorAction(dec.Action)
		api.DecisionReason, api.DecisionMessage = dec.Reason, dec.Message
		if dec.Action == supervision.Restart {
			api.RestartAt = &metav1.MicroTime{Time: dec.RestartAt}
		}
		if node := s.current.Spec.NodeName; api.Reason == ReasonNodeLost && node != "" && node == s.pinnedTo {
			// It could only start again where its volume is, and that node is lost: a new pod
			// would wait there for good. Only a human can bring the node or the data back.
			p := pinnedFailure(api.PodName, node, NodeOutOfService, now)
			api.Action, api.RestartAt, api.DecisionReason, api.DecisionMessage = p.Action, nil, p.DecisionReason, p.DecisionMessage
		}
		s.Memory.LastFailure, s.Decided = &api, true
		d = &api
	}
	if d.Action == vendingv1alpha1.ActionRestart {
		failedPod := s.current
		if s.restart(vm, cur, d, olderRunning, now) && mayDelete(failedPod) {
			s.Delete = append(s.Delete, Deletion{Pod: failedPod})
		}
	}
}

// restart carries out a Restart decision when its time has come: the next incarnation, the
// restart in the window (unless the failure was external) and the counters.
func (s *Step) restart(vm *vendingv1alpha1.VendingMachine, cur int32, d *vendingv1alpha1.Failure, olderRunning bool,
	now time.Time) bool {
	if d.RestartAt != nil && d.RestartAt.After(now) {
		at := d.RestartAt.Time
		s.Progress, s.NextRestartAt = BackingOff, &at
		return false
	}
	if d.External {
		s.Memory.Recreations++
		s.next(vm, cur+1, vendingv1alpha1.PodRecreated, Recreating)
	} else {
		s.Memory.Restarts++
		s.Memory.RestartTimes = append(s.Memory.RestartTimes, metav1.NewTime(now))
		s.next(vm, cur+1, vendingv1alpha1.PodRestarted, Restarting)
	}
	s.current = nil
	s.Create = !olderRunning
	return true
}

// seeCurrent records the current pod's UID once it is seen, and counts what it reports.
func (s *Step) seeCurrent(policy supervision.Policy, now time.Time) {
	pod := s.current
	if pod == nil {
		return
	}
	if s.Memory.PodUID == "" {
		s.Memory.PodUID = pod.UID
	}
	if pod.UID == s.Memory.PodUID {
		s.foldInPlace(pod, &s.Memory.PodInPlace, true, policy, now)
	}
}

// seePrevious counts what the replaced pod reports after it was replaced (its termination
// message, when it could not report live). Its failure is no longer the machine's last.
func (s *Step) seePrevious(pods []corev1.Pod, policy supervision.Policy, now time.Time) {
	for i := range pods {
		if p := &pods[i]; p.Name == s.Memory.PrevPod && p.Name != s.Memory.PodName {
			s.foldInPlace(p, &s.Memory.PrevPodInPlace, false, policy, now)
		}
	}
}

// foldInPlace counts the restarts the pod's own supervisor made inside it and has not counted
// yet, as restarts of the machine in its window: one budget over both levels. The pod reports
// its total (live on its annotation, finally in its termination message); the memory keeps how
// many of this pod's are counted, so a report seen twice counts once.
//
// current: the pod is the current incarnation, whose latest failure is the machine's last (a
// replaced pod's is not).
func (s *Step) foldInPlace(pod *corev1.Pod, counted *int32, current bool, policy supervision.Policy, now time.Time) {
	r := InPlaceOf(pod)
	if r == nil || r.Restarts <= *counted {
		return
	}
	n := r.Restarts - *counted
	// A report is the pod's word: a count past int32 saturates rather than wraps.
	s.Memory.Restarts = addSaturating(s.Memory.Restarts, n)
	s.Memory.InPlace = addSaturating(s.Memory.InPlace, n)
	*counted = r.Restarts
	s.InPlace = addSaturating(s.InPlace, n)
	// The newest n are the new ones; the pod keeps no more than MaxInPlaceTimes, and a report
	// is the pod's word, so no more than that is taken from it.
	times := r.Times[max(0, len(r.Times)-int(min(n, contract.MaxInPlaceTimes))):]
	for _, t := range supervision.RecentRestarts(times, policy.Window, now) {
		s.Memory.RestartTimes = append(s.Memory.RestartTimes, metav1.NewTime(t))
	}
	if l := r.Last; l != nil {
		f := failureOfMessage(l.TerminationMessage, pod.Name)
		f.Action = vendingv1alpha1.SupervisorAction(l.Action)
		f.DecisionReason, f.DecisionMessage, f.InPlace = l.DecisionReason, l.DecisionMessage, true
		if !l.RestartAt.IsZero() {
			f.RestartAt = &metav1.MicroTime{Time: l.RestartAt}
		}
		s.InPlaceLast = f.DeepCopy()
		if current && s.Memory.Pending() == nil {
			// A report that lands after the pod's end was decided (a PATCH in flight) does
			// not replace the decision in force.
			s.Memory.LastFailure = &f
		}
	}
}

func addSaturating(a, b int32) int32 {
	if sum := int64(a) + int64(b); sum <= math.MaxInt32 {
		return int32(sum)
	}
	return math.MaxInt32
}

func progressOf(c vendingv1alpha1.PodCause) Progress {
	switch c {
	case vendingv1alpha1.PodRestarted:
		return Restarting
	case vendingv1alpha1.PodRecreated:
		return Recreating
	case vendingv1alpha1.PodRolled:
		return Rolling
	case vendingv1alpha1.PodReset:
		return Resetting
	}
	return Creating
}

func recentTimes(ts []metav1.Time, window time.Duration, now time.Time) []metav1.Time {
	recent := supervision.RecentRestarts(timesOf(ts), window, now)
	out := make([]metav1.Time, 0, len(recent))
	for _, t := range recent {
		out = append(out, metav1.NewTime(t))
	}
	return out
}

func timesOf(ts []metav1.Time) []time.Time {
	out := make([]time.Time, len(ts))
	for i, t := range ts {
		out[i] = t.Time
	}
	return out
}

// String is for logs.
func (s Step) String() string {
	return fmt.Sprintf("pod=%s transition=%q create=%v delete=%d release=%d progress=%q", s.Memory.PodName, s.Transition, s.Create,
		len(s.Delete), len(s.Release), s.Progress)
}
