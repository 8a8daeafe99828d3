package supervisor

// Red team of issue 10: try to break what the supervisor's memory promises (docs/design.md,
// "Where the supervisor keeps its memory"):
//
//  1. no pod deletion, operator restart, conflict or stale cache erases or forks the memory;
//     only a reset clears it;
//  2. never two pods of one machine that may both run on the claim (single writer on the log);
//  3. each decision and each transition is announced once; a failure is decided once;
//  4. pods stopped from outside do not count against the window, the machine's own failures do;
//
// first with one table case per attack, then with a random walk over interleavings of a
// reconciler (stale or fresh views, conflicts, crashes between the memory write and the action)
// and a cluster (kubelet, users, resets, rolls), checking the invariants after every step.
//
// Every case here broke a promise once and is now a regression test.

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
)

// rtMachine is machine() with the default decider's Terminated → Restart besides Killed.
func rtMachine(mem func(*vendingv1alpha1.VendingMachineStatus)) *vendingv1alpha1.VendingMachine {
	vm := machine(mem)
	vm.Spec.Supervision.Decider = append(vm.Spec.Supervision.Decider,
		vendingv1alpha1.DeciderRule{Reason: contract.ReasonTerminated, Action: vendingv1alpha1.ActionRestart})
	return vm
}

// sigtermAt: the vending container got SIGTERM and ended at t, as the vending pod reports it.
func sigtermAt(t time.Time) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		b, _ := json.Marshal(contract.TerminationMessage{Reason: contract.ReasonTerminated, Message: "SIGTERM"})
		p.Status.Phase = corev1.PodFailed
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}}
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "vending", State: corev1.ContainerState{
			Terminated: &corev1.ContainerStateTerminated{ExitCode: contract.ExitTerminated, Message: string(b),
				FinishedAt: metav1.NewTime(t)}}}}
	}
}

// deletedGracefullyAt: someone (kubectl delete, a controller) asked at t to delete the pod with
// the default 30 s grace period: the API server sets deletionTimestamp to t+30s.
func deletedGracefullyAt(t time.Time) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.DeletionTimestamp = &metav1.Time{Time: t.Add(30 * time.Second)}
		p.DeletionGracePeriodSeconds = ptr.To[int64](30)
	}
}

// disruptedAt: a DisruptionTarget condition added at t (eviction API, taint manager, ...).
func disruptedAt(reason string, t time.Time) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.DisruptionTarget,
			Status: corev1.ConditionTrue, Reason: reason, LastTransitionTime: metav1.NewTime(t)})
	}
}

// A reset racing an unseen pod (the pass before created the reserved m-0; the pod cache has not
// shown it yet when a reset arrives) was a defect: the reset created m-1 beside m-0. Next trusts
// the pods it is given; the reconciler now decides every step that creates a pod again on live
// reads (see world.reconcile), so the random walk's "pod cache lags" environments cover it.

// TestRedTeamGracefulDeletionIsExternal: kubectl delete (30 s grace) of a running pod. The
// kubelet sends SIGTERM, the vending pod exits 143 at once, and the kubelet reports the pod
// Failed before it removes the object: the supervisor sees a failed pod with a deletion
// timestamp. The pod was deleted before it failed: external (docs/design.md), so it must not
// count against the window; with maxRestarts 0 it must not escalate a healthy machine.
func TestRedTeamGracefulDeletionIsExternal(t *testing.T) {
	vm := rtMachine(at(1, "m-0"))
	vm.Spec.Supervision.MaxRestarts = ptr.To[int32](0)
	now := t0.Add(time.Second)
	p := pod("m-0", deletedGracefullyAt(t0), sigtermAt(now))
	s := Next(Input{Machine: vm, Pods: []corev1.Pod{p}, TemplateHash: hash, Now: now})
	if f := s.Memory.LastFailure; f != nil && !f.External {
		t.Errorf("the SIGTERM of a deletion asked for from outside was decided as the machine's own failure: %+v", *f)
	}
	if s.Memory.Escalated() || s.Memory.Restarts != 0 || len(s.Memory.RestartTimes) != 0 {
		t.Errorf("a pod deleted from outside counted against the window: escalated=%v restarts=%d window=%d",
			s.Memory.Escalated(), s.Memory.Restarts, len(s.Memory.RestartTimes))
	}
}

// TestRedTeamOwnFailureThenDisruption: the machine failed of its own (SIGKILL at t0) with its
// window full; 10 s later, before the supervisor looked (an operator restart, an API server
// outage), a drain evicted the failed pod (the eviction API adds DisruptionTarget to the pod it
// deletes, terminal or not). The failure is the machine's: it must escalate, not be recreated
// outside the window.
func TestRedTeamOwnFailureThenDisruption(t *testing.T) {
	vm := rtMachine(all(at(1, "m-2"), restartTimes(t0.Add(-20*time.Second), t0.Add(-10*time.Second))))
	now := t0.Add(10 * time.Second)
	p := pod("m-2", killedAt(t0), disruptedAt("EvictionByEvictionAPI", now))
	s := Next(Input{Machine: vm, Pods: []corev1.Pod{p}, TemplateHash: hash, Now: now})
	if f := s.Memory.LastFailure; f == nil || f.External || !s.Memory.Escalated() {
		t.Errorf("the machine's own failure, disrupted after it ended, was not counted: %s lastFailure=%+v", s, f)
	}
}

// TestRedTeamClockSkewKeepsTheWindow: a new leader whose clock is 2 s behind the old one's
// reads restartTimes "in the future" and drops them (RecentRestarts keeps only !t.After(now)),
// and the pruned window is written back: an operator restart erased restarts from the window.
func TestRedTeamClockSkewKeepsTheWindow(t *testing.T) {
	vm := rtMachine(all(at(1, "m-1"), restartTimes(t0.Add(2*time.Second))))
	vm.Spec.Supervision.MaxRestarts = ptr.To[int32](1)
	s := Next(Input{Machine: vm, Pods: []corev1.Pod{pod("m-1", killedAt(t0))}, TemplateHash: hash, Now: t0})
	if len(s.Memory.RestartTimes) != 1 || !s.Memory.Escalated() {
		t.Errorf("the restart recorded by a leader 2 s ahead was forgotten: window=%d escalated=%v (%s)",
			len(s.Memory.RestartTimes), s.Memory.Escalated(), s)
	}
}

// TestRedTeamLostStatusAdoptsTheNewestPod: docs/design.md says that when the status is lost the
// supervisor "adopts the newest pod it finds rather than reuse a name". With no podName at all
// Next returns before it looks at the pods, and creates m-0 next to a running m-4.
func TestRedTeamLostStatusAdoptsTheNewestPod(t *testing.T) {
	vm := rtMachine(nil)
	s := Next(Input{Machine: vm, Pods: []corev1.Pod{pod("m-4")}, TemplateHash: hash, Now: t0})
	if s.Create || s.Memory.PodName != "m-4" {
		t.Errorf("status lost, pod m-4 running: %s (want m-4 adopted, nothing created)", s)
	}
}

// TestRedTeamHeldTable: attacks that did not break the supervisor on main; regression cases.
func TestRedTeamHeldTable(t *testing.T) {
	in1s := t0.Add(time.Second)
	tests := []struct {
		name  string
		vm    *vendingv1alpha1.VendingMachine
		pods  []corev1.Pod
		now   time.Time
		check func(t *testing.T, s Step)
	}{
		{name: "a reset racing a failure: the failed pod of the replaced incarnation is not decided about, nor counted",
			vm: func() *vendingv1alpha1.VendingMachine {
				vm := rtMachine(all(at(0, "m-1"), func(st *vendingv1alpha1.VendingMachineStatus) {
					st.PodCause, st.ObservedReset = vendingv1alpha1.PodReset, "r1"
				}))
				withReset("r1")(vm)
				return vm
			}(),
			pods: []corev1.Pod{pod("m-0", killedAt(t0), deleting)}, now: t0,
			check: func(t *testing.T, s Step) {
				if s.Decided || s.Memory.LastFailure != nil || s.Memory.Restarts != 0 || s.Memory.PodName != "m-1" {
					t.Errorf("the old incarnation's failure after a reset: %s decided=%v", s, s.Decided)
				}
			}},
		{name: "a roll racing a failure: the failed old pod holds nothing back once terminal, and is not counted",
			vm:   rtMachine(all(at(0, "m-1"), func(st *vendingv1alpha1.VendingMachineStatus) { st.PodCause = vendingv1alpha1.PodRolled })),
			pods: []corev1.Pod{pod("m-0", oldHash, killedAt(t0))}, now: t0,
			check: func(t *testing.T, s Step) {
				if s.Decided || !s.Create || s.Memory.Restarts != 0 {
					t.Errorf("roll racing a failure: %s", s)
				}
			}},
		{name: "a restart decided and then a reset: the reset wins, the window is cleared, nothing is counted twice",
			vm: func() *vendingv1alpha1.VendingMachine {
				vm := rtMachine(all(at(1, "m-0"), decided("m-0", vendingv1alpha1.ActionRestart, &in1s, false), restartTimes(t0)))
				withReset("r9")(vm)
				return vm
			}(),
			pods: []corev1.Pod{pod("m-0", killedAt(t0))}, now: t0,
			check: func(t *testing.T, s Step) {
				if s.Memory.PodName != "m-1" || s.Memory.Restarts != 0 || s.Memory.Resets != 1 || len(s.Memory.RestartTimes) != 0 || !s.Create {
					t.Errorf("restart pending, then reset: %s restarts=%d resets=%d", s, s.Memory.Restarts, s.Memory.Resets)
				}
			}},
		{name: "two pods newer than the memory: the newest is adopted and the other goes, gracefully",
			vm:   rtMachine(at(1, "m-0")),
			pods: []corev1.Pod{pod("m-2"), pod("m-3")}, now: t0,
			check: func(t *testing.T, s Step) {
				if s.Memory.PodName != "m-3" || s.Create || len(s.Delete) != 1 || s.Delete[0].Pod.Name != "m-2" || !s.Delete[0].Graceful {
					t.Errorf("adoption: %s", s)
				}
			}},
		{name: "an escalation in force is not decided again when its failed pod is seen again (an operator restart)",
			vm:   rtMachine(all(at(1, "m-0"), decided("m-0", vendingv1alpha1.ActionEscalate, nil, false))),
			pods: []corev1.Pod{pod("m-0", killedAt(t0))}, now: t0,
			check: func(t *testing.T, s Step) {
				if s.Decided || !s.Memory.Escalated() {
					t.Errorf("escalation redecided: %s", s)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.check(t, Next(Input{Machine: tt.vm, Pods: tt.pods, TemplateHash: hash, Now: tt.now}))
		})
	}
}

// ---- the random walk ----

// env says what the cluster and the operator may do in a walk.
type env struct {
	name string
	// staleMachine: the reconciler may read an older version of the machine (the informer
	// behind this operator's own write, another replica's); its memory write then conflicts.
	staleMachine bool
	// lagPods: the pod cache may be behind (monotonically, within one operator process).
	lagPods bool
	// lagAfterRestart: a new leader's pod cache may start behind its machine cache (its pod
	// watch lags, or its list was served by a lagging API server cache) until it catches up.
	lagAfterRestart bool
	// noResets: no resets in this environment (to tell one defect from another).
	noResets bool
	// failedBeforeGone: the kubelet reports a deleted running pod Failed (SIGTERM, exit 143)
	// before it removes the object, as kubelets since 1.27 do for restartPolicy Never.
	failedBeforeGone bool
	// skew: leaders' clocks differ by up to 2 s.
	skew bool
}

var envs = []env{
	{name: "fresh caches, conflicts, crashes between write and act"},
	{name: "stale machine reads", staleMachine: true},
	{name: "pod cache lags within a process", lagPods: true},
	{name: "a new leader's pod cache lags its machine cache", lagAfterRestart: true, noResets: true},
	{name: "kubelet reports a deleted pod Failed before removing it", failedBeforeGone: true},
	{name: "leaders' clocks differ", skew: true},
}

// truth is what really happened to a pod, for the classification invariant.
type truth int

const (
	running truth = iota
	ownFailure
	external
)

type world struct {
	r   *rand.Rand
	env env
	now time.Time
	// vms are the machine's versions in the API server, the last the latest.
	vms []*vendingv1alpha1.VendingMachine
	// pods is the API server's pods; podHist the snapshots after each change, for caches.
	pods    map[string]*corev1.Pod
	podHist [][]corev1.Pod
	// the operator process's caches never go back in time.
	seenVM, seenPods int
	uids             int
	resets, hashes   int
	// for the invariants:
	created     map[string]types.UID // every pod name ever created, and its first UID
	what        map[string]truth
	decisions   map[string]int // announcements of a decision per failed pod
	transitions map[string]int // announcements of a transition per pod name
	trace       []string
	crash       bool
	lagging     bool // a new leader's pod cache has not caught up yet
	// seen counts what the walk exercised (decisions by action, transitions by cause), so a
	// walk that never reaches a branch cannot pass for a walk that checked it.
	seen map[string]int
}

func newWorld(seed int64, e env) *world {
	vm := rtMachine(nil)
	vm.Spec.Supervision.MaxRestarts = ptr.To[int32](1) // escalations come soon enough to be attacked
	vm.Annotations = map[string]string{"test/hash": "h0"}
	w := &world{r: rand.New(rand.NewSource(seed)), env: e, now: t0, vms: []*vendingv1alpha1.VendingMachine{vm},
		pods: map[string]*corev1.Pod{}, created: map[string]types.UID{}, what: map[string]truth{},
		decisions: map[string]int{}, transitions: map[string]int{}, seen: map[string]int{}}
	w.snapshot()
	return w
}

func (w *world) latest() *vendingv1alpha1.VendingMachine { return w.vms[len(w.vms)-1] }

func (w *world) log(format string, args ...any) {
	w.trace = append(w.trace, fmt.Sprintf("%s +%v ", w.now.Format("15:04:05.000"), len(w.trace))+fmt.Sprintf(format, args...))
}

func (w *world) snapshot() {
	s := make([]corev1.Pod, 0, len(w.pods))
	for _, p := range w.pods {
		s = append(s, *p.DeepCopy())
	}
	sort.Slice(s, func(i, j int) bool { return s[i].Name < s[j].Name }) // a seed replays the same walk
	w.podHist = append(w.podHist, s)
}

func (w *world) newVersion(mutate func(*vendingv1alpha1.VendingMachine)) {
	vm := w.latest().DeepCopy()
	mutate(vm)
	w.vms = append(w.vms, vm)
}

// pick is a random index in [lo, hi].
func (w *world) pick(lo, hi int) int { return lo + w.r.Intn(hi-lo+1) }

// reconcile is one pass of the reconciler, as Reconcile does it: observe (maybe stale), Next,
// write the memory conditionally on the version read, announce, act.
func (w *world) reconcile() error {
	vi, pi := len(w.vms)-1, len(w.podHist)-1
	if w.env.staleMachine {
		vi = w.pick(w.seenVM, vi)
	}
	if w.env.lagPods || (w.env.lagAfterRestart && w.lagging) {
		pi = w.pick(w.seenPods, pi)
		w.lagging = pi < len(w.podHist)-1
	}
	w.seenVM, w.seenPods = vi, pi
	view := w.vms[vi].DeepCopy()
	pods := append([]corev1.Pod(nil), w.podHist[pi]...)
	s := Next(Input{Machine: view, Pods: pods, TemplateHash: view.Annotations["test/hash"], Now: w.now})
	w.log("reconcile(machine v%d/%d, pods %d/%d): %s", vi, len(w.vms)-1, pi, len(w.podHist)-1, s)
	if s.Create {
		// As Reconcile does: a step that would create a pod is decided again on live reads of
		// the machine and its pods (the one step that can put two pods on a claim).
		vi, pi = len(w.vms)-1, len(w.podHist)-1
		view = w.vms[vi].DeepCopy()
		pods = append([]corev1.Pod(nil), w.podHist[pi]...)
		s = Next(Input{Machine: view, Pods: pods, TemplateHash: view.Annotations["test/hash"], Now: w.now})
		w.log("  live: %s", s)
	}
	if !s.Memory.Equal(MemoryOf(&view.Status)) {
		if vi != len(w.vms)-1 {
			w.log("  conflict")
			return nil
		}
		before := MemoryOf(&w.latest().Status)
		if err := w.checkMemory(before, s); err != nil {
			return err
		}
		// The cache need not have seen this write yet: seenVM stays at the version read.
		w.newVersion(func(vm *vendingv1alpha1.VendingMachine) { s.Memory.WriteTo(&vm.Status) })
		if err := w.announce(s); err != nil {
			return err
		}
	}
	if w.crash && w.r.Intn(4) == 0 {
		w.log("  crash before acting")
		return nil
	}
	changed := false
	for _, d := range s.Delete {
		p, ok := w.pods[d.Pod.Name]
		if !ok || p.UID != d.Pod.UID {
			continue // NotFound or the precondition fails
		}
		if d.Graceful && !Terminal(p) {
			if p.DeletionTimestamp == nil {
				p.DeletionTimestamp = &metav1.Time{Time: w.now.Add(30 * time.Second)}
				p.DeletionGracePeriodSeconds = ptr.To[int64](30)
				changed = true
			}
			continue
		}
		delete(w.pods, p.Name)
		changed = true
	}
	if s.Create {
		name := s.Memory.PodName
		if _, exists := w.pods[name]; !exists {
			// A pod is created only for the incarnation the latest memory names: a pass that
			// acted on an older memory could bring back an incarnation the supervisor has left
			// (a name reserved and never seen may be created again: it is the same incarnation).
			if cur := w.latest().Status.PodName; name != cur {
				return fmt.Errorf("created %s, an incarnation the memory has left (it names %s)", name, cur)
			}
			w.uids++
			uid := types.UID(fmt.Sprintf("uid-%d", w.uids))
			p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: uid,
				Labels:      map[string]string{LabelIncarnation: strings.TrimPrefix(name, "m-")},
				Annotations: map[string]string{AnnotationTemplateHash: view.Annotations["test/hash"]}}}
			p.Status.Phase = corev1.PodPending
			w.pods[name], w.created[name], w.what[name] = &p, uid, running
			w.log("  created %s", name)
			changed = true
		}
	}
	if changed {
		w.snapshot()
	}
	return w.checkPods()
}

// checkMemory: what a memory write may not do to the memory it replaces (invariant 1, 3, 4).
func (w *world) checkMemory(old Memory, s Step) error {
	m := s.Memory
	switch {
	case m.Restarts < old.Restarts, m.Recreations < old.Recreations, m.Rolls < old.Rolls, m.Resets < old.Resets:
		return fmt.Errorf("a counter went back: %+v -> %+v", old, m)
	case incarnationOfName(w.latest(), m.PodName) < incarnationOfName(w.latest(), old.PodName):
		return fmt.Errorf("the incarnation went back: %s -> %s", old.PodName, m.PodName)
	}
	reset := m.ObservedReset != old.ObservedReset
	if reset && m.ObservedReset != w.latest().Annotations[AnnotationReset] {
		return fmt.Errorf("observedReset %q is not the machine's reset %q", m.ObservedReset, w.latest().Annotations[AnnotationReset])
	}
	if !reset {
		if (old.Escalated() && !m.Escalated()) || (old.Stopped() && !m.Stopped()) {
			return fmt.Errorf("a decision in force was cleared without a reset: %+v -> %+v", old.LastFailure, m.LastFailure)
		}
		window := supervisionWindow(w.latest())
		for _, t := range old.RestartTimes {
			if w.now.Sub(t.Time) < window && !containsTime(m.RestartTimes, t) {
				return fmt.Errorf("restart %s, inside the window, was forgotten", t.Format(time.RFC3339Nano))
			}
		}
	}
	if f := old.LastFailure; f != nil && f.Action != "" && m.LastFailure != nil && m.LastFailure.PodName == f.PodName &&
		(m.LastFailure.Action != f.Action || m.LastFailure.External != f.External) {
		return fmt.Errorf("the failure of %s was decided again: %s -> %s", f.PodName, f.Action, m.LastFailure.Action)
	}
	return nil
}

func supervisionWindow(vm *vendingv1alpha1.VendingMachine) time.Duration { return PolicyOf(vm).Window }

func containsTime(ts []metav1.Time, t metav1.Time) bool {
	for _, u := range ts {
		if u.Equal(&t) {
			return true
		}
	}
	return false
}

// announce counts the events a successful memory write emits (invariant 3), and checks that
// the decision classifies the failure as it really happened (invariant 4).
func (w *world) announce(s Step) error {
	if s.Decided {
		f := s.Memory.LastFailure
		w.seen["decided "+string(f.Action)+map[bool]string{true: " (external)", false: ""}[f.External]]++
		w.decisions[f.PodName]++
		if w.decisions[f.PodName] > 1 {
			return fmt.Errorf("the failure of %s was announced twice", f.PodName)
		}
		switch w.what[f.PodName] {
		case ownFailure:
			if f.External {
				return fmt.Errorf("the machine's own failure of %s was decided external", f.PodName)
			}
		case external:
			if !f.External {
				return fmt.Errorf("pod %s, stopped from outside, was decided as the machine's failure (%s, %s)", f.PodName, f.Reason, f.Action)
			}
		}
	}
	if s.Transition == vendingv1alpha1.PodRestarted && !containsTime(s.Memory.RestartTimes, metav1.NewTime(w.now)) {
		return fmt.Errorf("the restart to %s is not in the window", s.Memory.PodName)
	}
	if s.Transition != "" {
		w.seen["transition "+string(s.Transition)]++
		w.transitions[s.Memory.PodName]++
		if w.transitions[s.Memory.PodName] > 1 {
			return fmt.Errorf("the transition to %s was announced twice", s.Memory.PodName)
		}
	}
	return nil
}

// checkPods: never two pods that may run on the claim (invariant 2).
func (w *world) checkPods() error {
	var may []string
	for _, p := range w.pods {
		if !Terminal(p) {
			may = append(may, p.Name)
		}
	}
	if len(may) > 1 {
		return fmt.Errorf("pods %v may all run on the claim at once", may)
	}
	return nil
}

// cluster does one thing a cluster, a kubelet or a human does.
func (w *world) cluster() {
	names := make([]string, 0, len(w.pods))
	for n := range w.pods {
		names = append(names, n)
	}
	sort.Strings(names)
	var p *corev1.Pod
	if len(names) > 0 {
		p = w.pods[names[w.r.Intn(len(names))]]
	}
	changed := true
	switch k := w.r.Intn(100); {
	case k < 18:
		d := time.Duration(w.r.Intn(3000)) * time.Millisecond
		w.now = w.now.Add(d)
		w.log("time +%v", d)
		changed = false
	case k < 36 && p != nil && p.Status.Phase == corev1.PodPending && p.DeletionTimestamp == nil:
		p.Status.Phase = corev1.PodRunning
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		w.log("kubelet: %s running", p.Name)
	case k < 58 && p != nil && p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil:
		killedAt(w.now)(p)
		w.what[p.Name] = ownFailure
		w.log("kubelet: %s killed (the machine's own failure)", p.Name)
	case k < 62 && p != nil && p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil:
		sigtermAt(w.now)(p)
		disruptedAt("TerminationByKubelet", w.now)(p)
		w.what[p.Name] = external
		w.log("kubelet: %s stopped for a node shutdown (DisruptionTarget)", p.Name)
	case k < 68 && p != nil && p.DeletionTimestamp == nil:
		if Terminal(p) {
			if w.latest().Status.PodName == p.Name && MemoryOf(&w.latest().Status).Escalated() {
				w.seen["escalated evidence deleted"]++
			}
			delete(w.pods, p.Name)
			w.log("user: delete %s (terminal: gone at once)", p.Name)
			break
		}
		deletedGracefullyAt(w.now)(p)
		if w.what[p.Name] == running {
			w.what[p.Name] = external
		}
		w.log("user: delete %s (graceful)", p.Name)
	case k < 88 && p != nil && p.DeletionTimestamp != nil:
		if !Terminal(p) && w.env.failedBeforeGone && p.Status.Phase == corev1.PodRunning {
			sigtermAt(w.now)(p)
			w.log("kubelet: deleted %s ended on SIGTERM, reported Failed", p.Name)
			break
		}
		delete(w.pods, p.Name)
		w.log("kubelet: %s gone", p.Name)
	case k >= 88 && k < 91 && !w.env.noResets:
		w.resets++
		v := fmt.Sprintf("r%d", w.resets)
		w.newVersion(func(vm *vendingv1alpha1.VendingMachine) { vm.Annotations[AnnotationReset] = v })
		w.log("fleet: reset %s", v)
		changed = false
	case k >= 91 && k < 94:
		w.hashes++
		h := fmt.Sprintf("h%d", w.hashes)
		w.newVersion(func(vm *vendingv1alpha1.VendingMachine) { vm.Annotations["test/hash"] = h })
		w.log("user: spec change (%s)", h)
		changed = false
	case k >= 94 && k < 97:
		// A new operator process: its caches start over.
		w.seenVM = len(w.vms) - 1
		w.seenPods = len(w.podHist) - 1
		if w.env.lagAfterRestart {
			w.seenPods = max(0, len(w.podHist)-1-w.r.Intn(4))
			w.lagging = true
		}
		if w.env.skew {
			d := time.Duration(w.r.Intn(2000)) * time.Millisecond
			w.now = w.now.Add(-d)
			w.log("operator restart (the new leader's clock is %v behind)", d)
		} else {
			w.log("operator restart")
		}
		changed = false
	default:
		changed = false
	}
	if changed {
		w.snapshot()
	}
}

// walk runs one random interleaving; it returns the first broken invariant with its trace,
// and adds what it exercised to seen.
func walk(seed int64, e env, steps int, seen map[string]int) error {
	w := newWorld(seed, e)
	defer func() {
		for k, v := range w.seen {
			seen[k] += v
		}
	}()
	w.crash = true
	for i := 0; i < steps; i++ {
		if w.r.Intn(2) == 0 {
			w.cluster()
			if err := w.checkPods(); err != nil {
				return w.fail(err)
			}
			continue
		}
		if err := w.reconcile(); err != nil {
			return w.fail(err)
		}
	}
	return nil
}

func (w *world) fail(err error) error {
	tr := w.trace
	if len(tr) > 40 {
		tr = tr[len(tr)-40:]
	}
	return fmt.Errorf("%w\n  last steps:\n    %s", err, strings.Join(tr, "\n    "))
}

// TestRedTeamRandomWalk checks the invariants after every step of random interleavings, in each
// environment. REDTEAM_WALKS sets the number of walks (a few hundred by default, well under a
// second each environment).
func TestRedTeamRandomWalk(t *testing.T) {
	walks := 400
	if n, err := fmt.Sscan(os.Getenv("REDTEAM_WALKS"), &walks); n != 1 || err != nil {
		walks = 400
	}
	for _, e := range envs {
		t.Run(e.name, func(t *testing.T) {
			seen := map[string]int{}
			for seed := int64(1); seed <= int64(walks); seed++ {
				if err := walk(seed, e, 120, seen); err != nil {
					t.Fatalf("seed %d: %v", seed, err)
				}
			}
			t.Logf("%d walks exercised %v", walks, seen)
			for _, k := range []string{"decided Restart", "decided Escalate", "decided Restart (external)",
				"escalated evidence deleted", "transition Created", "transition Restarted", "transition Recreated", "transition Rolled", "transition Reset"} {
				if k == "transition Reset" && e.noResets {
					continue
				}
				if seen[k] == 0 && walks >= 100 {
					t.Errorf("no walk reached %q: the invariants were not checked there", k)
				}
			}
		})
	}
}
