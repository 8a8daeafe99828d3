package supervisor

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
)

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

const hash = "h1"

// machine is a machine named m with maxRestarts 2 in a minute, a 1 s backoff, the default
// decider's Killed → Restart, and the memory given.
func machine(mem func(*vendingv1alpha1.VendingMachineStatus)) *vendingv1alpha1.VendingMachine {
	vm := &vendingv1alpha1.VendingMachine{ObjectMeta: metav1.ObjectMeta{Name: "m", Namespace: "ns"}}
	vm.Spec.Supervision.MaxRestarts = ptr.To[int32](2)
	vm.Spec.Supervision.Window = &metav1.Duration{Duration: time.Minute}
	vm.Spec.Supervision.Backoff.Initial = &metav1.Duration{Duration: time.Second}
	vm.Spec.Supervision.Backoff.Max = &metav1.Duration{Duration: time.Second}
	vm.Spec.Supervision.Backoff.JitterPercent = ptr.To[int32](0)
	vm.Spec.Supervision.Decider = []vendingv1alpha1.DeciderRule{{Reason: contract.ReasonKilled, Action: vendingv1alpha1.ActionRestart}}
	if mem != nil {
		mem(&vm.Status)
	}
	return vm
}

func at(n int, name string) func(*vendingv1alpha1.VendingMachineStatus) {
	return func(st *vendingv1alpha1.VendingMachineStatus) {
		st.PodName, st.PodUID = name, types.UID("uid-"+name)
		if n == 0 {
			st.PodUID = ""
		}
	}
}

func pod(name string, opts ...func(*corev1.Pod)) corev1.Pod {
	p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: types.UID("uid-" + name),
		Labels:      map[string]string{LabelIncarnation: name[len("m-"):]},
		Annotations: map[string]string{AnnotationTemplateHash: hash}}}
	p.Status.Phase = corev1.PodRunning
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	for _, o := range opts {
		o(&p)
	}
	return p
}

func killedAt(t time.Time) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.Status.Phase = corev1.PodFailed
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "vending", State: corev1.ContainerState{
			Terminated: &corev1.ContainerStateTerminated{ExitCode: 137, FinishedAt: metav1.NewTime(t)}}}}
	}
}

func failedWith(reason string, t time.Time) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		b, _ := json.Marshal(contract.TerminationMessage{Reason: reason, Message: reason})
		p.Status.Phase = corev1.PodFailed
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "vending", State: corev1.ContainerState{
			Terminated: &corev1.ContainerStateTerminated{ExitCode: 1, Message: string(b), FinishedAt: metav1.NewTime(t)}}}}
	}
}

func disrupted(reason string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.DisruptionTarget,
			Status: corev1.ConditionTrue, Reason: reason})
	}
}

func deleting(p *corev1.Pod) { p.DeletionTimestamp = &metav1.Time{Time: t0} }

// deletedAt: a deletion asked for at t with no grace period (the deletion timestamp is t).
func deletedAt(t time.Time) func(*corev1.Pod) {
	return func(p *corev1.Pod) { p.DeletionTimestamp = &metav1.Time{Time: t} }
}
func oldHash(p *corev1.Pod) { p.Annotations[AnnotationTemplateHash] = "h0" }

func decided(name string, action vendingv1alpha1.SupervisorAction, restartAt *time.Time, external bool) func(*vendingv1alpha1.VendingMachineStatus) {
	return func(st *vendingv1alpha1.VendingMachineStatus) {
		f := &vendingv1alpha1.Failure{PodName: name, Reason: contract.ReasonKilled, Action: action, External: external,
			DecisionReason: "X", DecisionMessage: "x"}
		if restartAt != nil {
			f.RestartAt = &metav1.MicroTime{Time: *restartAt}
		}
		st.LastFailure = f
	}
}

func restartTimes(ts ...time.Time) func(*vendingv1alpha1.VendingMachineStatus) {
	return func(st *vendingv1alpha1.VendingMachineStatus) {
		for _, t := range ts {
			st.RestartTimes = append(st.RestartTimes, metav1.NewTime(t))
		}
	}
}

func all(fs ...func(*vendingv1alpha1.VendingMachineStatus)) func(*vendingv1alpha1.VendingMachineStatus) {
	return func(st *vendingv1alpha1.VendingMachineStatus) {
		for _, f := range fs {
			f(st)
		}
	}
}

func withReset(v string) func(*vendingv1alpha1.VendingMachine) {
	return func(vm *vendingv1alpha1.VendingMachine) { vm.Annotations = map[string]string{AnnotationReset: v} }
}

// want is what a step must say; zero fields are not checked unless named in exact.
type want struct {
	podName      string
	cause        vendingv1alpha1.PodCause
	transition   vendingv1alpha1.PodCause
	create       bool
	deletes      []string // "name" (at once) or "name~" (graceful)
	progress     Progress
	decided      vendingv1alpha1.SupervisorAction
	pending      vendingv1alpha1.SupervisorAction // "" = none in force
	restarts     int32
	recreations  int32
	rolls        int32
	resets       int32
	window       int
	nextRestart  *time.Time
	podUID       types.UID
	observedRset string
}

// Every step that creates a pod remembers that it asked for it (checked for all cases).

// finalized: the pod has the supervisor's finalizer (and a node: it may run).
func finalized(p *corev1.Pod) { p.Finalizers, p.Spec.NodeName = []string{Finalizer}, "node-1" }

// graceful: a deletion asked for with a grace period of n seconds.
func graceful(n int64) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.DeletionTimestamp = &metav1.Time{Time: t0.Add(time.Duration(n) * time.Second)}
		p.DeletionGracePeriodSeconds = ptr.To(n)
	}
}

// The finalizer keeps a pod until its end is recorded, and no longer.
func TestNextReleasesFinalizers(t *testing.T) {
	tests := []struct {
		name    string
		mem     func(*vendingv1alpha1.VendingMachineStatus)
		pods    []corev1.Pod
		others  []corev1.Pod
		release []string
	}{
		{name: "a running current pod is kept", mem: at(1, "m-0"), pods: []corev1.Pod{pod("m-0", finalized)}},
		{name: "a failed pod is kept until its failure is decided, released in the step that decides",
			mem: at(1, "m-0"), pods: []corev1.Pod{pod("m-0", finalized, failedWith("LogLocked", t0))}, release: []string{"m-0"}},
		{name: "an earlier incarnation is released", mem: at(0, "m-1"), pods: []corev1.Pod{pod("m-0", finalized, killedAt(t0))},
			release: []string{"m-0"}},
		{name: "a predecessor's pod is released once it may", mem: at(1, "m-0"), pods: []corev1.Pod{pod("m-0", finalized)},
			others: []corev1.Pod{pod("m-3", finalized, graceful(30))}, release: []string{"m-3"}},
		{name: "a pod without the finalizer has nothing to release", mem: at(0, "m-1"), pods: []corev1.Pod{pod("m-0", killedAt(t0))}},
		{name: "a running pod deleted gracefully from outside is released (its object stays until its kubelet confirms)",
			mem: at(1, "m-0"), pods: []corev1.Pod{pod("m-0", finalized, graceful(30))}, release: []string{"m-0"}},
		{name: "a running pod force-deleted keeps its finalizer until it is terminal: its object must outlive its container",
			mem: at(1, "m-0"), pods: []corev1.Pod{pod("m-0", finalized, graceful(0))}},
		{name: "a pod never scheduled may go at once, force-deleted or not: nothing runs",
			mem: at(1, "m-0"), pods: []corev1.Pod{pod("m-0", finalized, graceful(0), func(p *corev1.Pod) { p.Spec.NodeName = "" })},
			release: []string{"m-0"}},
		{name: "a predecessor's running pod force-deleted is kept too",
			mem: at(1, "m-0"), pods: []corev1.Pod{pod("m-0", finalized)}, others: []corev1.Pod{pod("m-3", finalized, graceful(0))}},
		{name: "a running pod rolled (deleted gracefully in this step) is released",
			mem: at(1, "m-0"), pods: []corev1.Pod{pod("m-0", finalized, oldHash)}, release: []string{"m-0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := Next(Input{Machine: machine(tt.mem), Pods: tt.pods, Others: tt.others, TemplateHash: hash, Now: t0})
			var got []string
			for _, p := range s.Release {
				got = append(got, p.Name)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.release) {
				t.Errorf("released %v, want %v (%s)", got, tt.release, s)
			}
		})
	}
}

func TestNext(t *testing.T) {
	in1s := t0.Add(time.Second)
	tests := []struct {
		name    string
		mem     func(*vendingv1alpha1.VendingMachineStatus)
		machine func(*vendingv1alpha1.VendingMachine)
		pods    []corev1.Pod
		now     time.Time
		want    want
	}{
		{name: "a new machine reserves incarnation 0 and creates it; its reset annotation is not a reset",
			machine: withReset("r1"),
			want:    want{podName: "m-0", cause: vendingv1alpha1.PodCreated, transition: vendingv1alpha1.PodCreated, create: true, progress: Creating, observedRset: "r1"}},
		{name: "a pod asked for, never seen and not there (on live reads) takes the next name: a name is never used for two pods",
			mem: all(at(0, "m-3"), func(st *vendingv1alpha1.VendingMachineStatus) {
				st.PodCause, st.PodRequested = vendingv1alpha1.PodRestarted, true
			}),
			want: want{podName: "m-4", cause: vendingv1alpha1.PodRestarted, create: true, progress: Restarting}},
		{name: "a name reserved and not yet asked for (a roll waited for the old pod) is asked for now",
			mem:  all(at(0, "m-3"), func(st *vendingv1alpha1.VendingMachineStatus) { st.PodCause = vendingv1alpha1.PodRolled }),
			want: want{podName: "m-3", cause: vendingv1alpha1.PodRolled, create: true, progress: Rolling}},
		{name: "no pod is created while another may run on the claim, whatever the memory says",
			mem:     all(at(1, "m-3"), decided("m-3", vendingv1alpha1.ActionEscalate, nil, false)),
			machine: withReset("r9"), pods: []corev1.Pod{pod("m-2")},
			want: want{podName: "m-4", cause: vendingv1alpha1.PodReset, transition: vendingv1alpha1.PodReset, deletes: []string{"m-2~"},
				progress: Resetting, resets: 1, observedRset: "r9"}},
		{name: "a running pod: nothing to do but remember its UID",
			mem: at(0, "m-0"), pods: []corev1.Pod{pod("m-0")},
			want: want{podName: "m-0", podUID: "uid-m-0"}},
		{name: "a running pod of an old spec is rolled: a new incarnation, the old one deleted gracefully first",
			mem: at(1, "m-0"), pods: []corev1.Pod{pod("m-0", oldHash)},
			want: want{podName: "m-1", cause: vendingv1alpha1.PodRolled, transition: vendingv1alpha1.PodRolled, deletes: []string{"m-0~"}, progress: Rolling, rolls: 1}},
		{name: "while an older pod may still run on the claim, the next one waits",
			mem:  all(at(0, "m-1"), func(st *vendingv1alpha1.VendingMachineStatus) { st.PodCause = vendingv1alpha1.PodRolled }),
			pods: []corev1.Pod{pod("m-0", oldHash, deleting)},
			want: want{podName: "m-1", create: false, progress: Rolling}},
		{name: "a terminal older pod is deleted at once and does not hold the next one back",
			mem:  all(at(0, "m-1"), func(st *vendingv1alpha1.VendingMachineStatus) { st.PodCause = vendingv1alpha1.PodRestarted }),
			pods: []corev1.Pod{pod("m-0", killedAt(t0))},
			want: want{podName: "m-1", create: true, deletes: []string{"m-0"}, progress: Restarting}},
		{name: "a failure is decided once: Restart after the backoff",
			mem: at(1, "m-0"), pods: []corev1.Pod{pod("m-0", killedAt(t0))}, now: t0,
			want: want{podName: "m-0", decided: vendingv1alpha1.ActionRestart, pending: vendingv1alpha1.ActionRestart, progress: BackingOff, nextRestart: &in1s}},
		{name: "a decided restart that is due: the next incarnation, counted in the window, the failed pod deleted at once",
			mem:  all(at(1, "m-0"), decided("m-0", vendingv1alpha1.ActionRestart, &in1s, false)),
			pods: []corev1.Pod{pod("m-0", killedAt(t0))}, now: in1s,
			want: want{podName: "m-1", cause: vendingv1alpha1.PodRestarted, transition: vendingv1alpha1.PodRestarted, create: true, deletes: []string{"m-0"},
				progress: Restarting, restarts: 1, window: 1}},
		{name: "a decided restart is not redone: the decision in force is read, not taken again",
			mem:  all(at(1, "m-0"), decided("m-0", vendingv1alpha1.ActionRestart, &in1s, false)),
			pods: []corev1.Pod{pod("m-0", killedAt(t0))}, now: t0,
			want: want{podName: "m-0", pending: vendingv1alpha1.ActionRestart, progress: BackingOff, nextRestart: &in1s}},
		{name: "the failed pod deleted during the backoff: the restart still comes, still counted",
			mem:  all(at(1, "m-0"), decided("m-0", vendingv1alpha1.ActionRestart, &in1s, false)),
			now:  in1s,
			want: want{podName: "m-1", cause: vendingv1alpha1.PodRestarted, transition: vendingv1alpha1.PodRestarted, create: true, progress: Restarting, restarts: 1, window: 1}},
		{name: "past maxRestarts within the window: escalate, keep the failed pod as evidence",
			mem:  all(at(1, "m-2"), restartTimes(t0.Add(-20*time.Second), t0.Add(-10*time.Second))),
			pods: []corev1.Pod{pod("m-2", killedAt(t0))}, now: t0,
			want: want{podName: "m-2", decided: vendingv1alpha1.ActionEscalate, pending: vendingv1alpha1.ActionEscalate, window: 2}},
		{name: "restarts older than the window no longer count",
			mem:  all(at(1, "m-2"), restartTimes(t0.Add(-2*time.Minute), t0.Add(-10*time.Second))),
			pods: []corev1.Pod{pod("m-2", killedAt(t0))}, now: t0,
			want: want{podName: "m-2", decided: vendingv1alpha1.ActionRestart, pending: vendingv1alpha1.ActionRestart, window: 1, progress: BackingOff, nextRestart: ptr.To(t0.Add(time.Second))}},
		{name: "an unknown reason escalates at once",
			mem: at(1, "m-0"), pods: []corev1.Pod{pod("m-0", failedWith("LogLocked", t0))}, now: t0,
			want: want{podName: "m-0", decided: vendingv1alpha1.ActionEscalate, pending: vendingv1alpha1.ActionEscalate}},
		{name: "escalated and its evidence pod deleted: still escalated, nothing created",
			mem: all(at(1, "m-0"), decided("m-0", vendingv1alpha1.ActionEscalate, nil, false)), now: t0,
			want: want{podName: "m-0", pending: vendingv1alpha1.ActionEscalate}},
		{name: "stopped and its pod deleted: still stopped",
			mem: all(at(1, "m-0"), decided("m-0", vendingv1alpha1.ActionStop, nil, false)), now: t0,
			want: want{podName: "m-0", pending: vendingv1alpha1.ActionStop}},
		{name: "a pod stopped by its kubelet (DisruptionTarget) is external: recreated at once, outside the window, even with the window full",
			mem:  all(at(1, "m-2"), restartTimes(t0.Add(-20*time.Second), t0.Add(-10*time.Second))),
			pods: []corev1.Pod{pod("m-2", killedAt(t0), disrupted("TerminationByKubelet"))}, now: t0,
			want: want{podName: "m-3", cause: vendingv1alpha1.PodRecreated, transition: vendingv1alpha1.PodRecreated, decided: vendingv1alpha1.ActionRestart,
				create: true, deletes: []string{"m-2"}, progress: Recreating, recreations: 1, window: 2}},
		{name: "an evicted pod is external too",
			mem:  at(1, "m-0"),
			pods: []corev1.Pod{pod("m-0", killedAt(t0), func(p *corev1.Pod) { p.Status.Reason = "Evicted" })}, now: t0,
			want: want{podName: "m-1", cause: vendingv1alpha1.PodRecreated, transition: vendingv1alpha1.PodRecreated, decided: vendingv1alpha1.ActionRestart,
				create: true, deletes: []string{"m-0"}, progress: Recreating, recreations: 1}},
		{name: "a pod seen and then gone (deleted from outside): recreated as the next incarnation, outside the window",
			mem: at(1, "m-0"), now: t0,
			want: want{podName: "m-1", cause: vendingv1alpha1.PodRecreated, transition: vendingv1alpha1.PodRecreated, create: true, progress: Recreating, recreations: 1}},
		{name: "a running pod being deleted from outside is lost from outside: the next is reserved, created once it is gone",
			mem: at(1, "m-0"), pods: []corev1.Pod{pod("m-0", deleting)}, now: t0,
			want: want{podName: "m-1", cause: vendingv1alpha1.PodRecreated, transition: vendingv1alpha1.PodRecreated, progress: Recreating, recreations: 1}},
		{name: "a failed pod being deleted is still decided about",
			mem: at(1, "m-0"), pods: []corev1.Pod{pod("m-0", killedAt(t0), deletedAt(t0.Add(500*time.Millisecond)))}, now: t0,
			want: want{podName: "m-0", decided: vendingv1alpha1.ActionRestart, pending: vendingv1alpha1.ActionRestart, progress: BackingOff, nextRestart: &in1s}},
		{name: "a reset of an escalated machine: fresh window, the evidence deleted at once, the next incarnation created",
			mem: all(at(1, "m-2"), decided("m-2", vendingv1alpha1.ActionEscalate, nil, false), restartTimes(t0.Add(-10*time.Second), t0.Add(-5*time.Second)),
				func(st *vendingv1alpha1.VendingMachineStatus) { st.ObservedReset = "r1" }),
			machine: withReset("r2"), pods: []corev1.Pod{pod("m-2", killedAt(t0))}, now: t0,
			want: want{podName: "m-3", cause: vendingv1alpha1.PodReset, transition: vendingv1alpha1.PodReset, create: true, deletes: []string{"m-2"},
				progress: Resetting, resets: 1, observedRset: "r2"}},
		{name: "a reset of an escalated machine whose evidence is gone",
			mem:     all(at(1, "m-2"), decided("m-2", vendingv1alpha1.ActionEscalate, nil, false)),
			machine: withReset("r2"), now: t0,
			want: want{podName: "m-3", cause: vendingv1alpha1.PodReset, transition: vendingv1alpha1.PodReset, create: true, progress: Resetting, resets: 1, observedRset: "r2"}},
		{name: "a reset of a running machine: the pod goes gracefully first",
			mem: at(1, "m-0"), machine: withReset("r2"), pods: []corev1.Pod{pod("m-0")}, now: t0,
			want: want{podName: "m-1", cause: vendingv1alpha1.PodReset, transition: vendingv1alpha1.PodReset, deletes: []string{"m-0~"}, progress: Resetting, resets: 1, observedRset: "r2"}},
		{name: "a reset already carried out is not carried out again",
			mem:     all(at(1, "m-0"), func(st *vendingv1alpha1.VendingMachineStatus) { st.ObservedReset = "r2" }),
			machine: withReset("r2"), pods: []corev1.Pod{pod("m-0")}, now: t0,
			want: want{podName: "m-0", observedRset: "r2"}},
		{name: "a pod newer than the memory (a status lost) is adopted, not overwritten",
			mem: at(1, "m-0"), pods: []corev1.Pod{pod("m-4")}, now: t0,
			want: want{podName: "m-4", podUID: "uid-m-4"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vm := machine(tt.mem)
			if tt.machine != nil {
				tt.machine(vm)
			}
			now := tt.now
			if now.IsZero() {
				now = t0
			}
			before := vm.DeepCopy()
			s := Next(Input{Machine: vm, Pods: tt.pods, TemplateHash: hash, Now: now})
			check(t, s, tt.want)
			if !equalStatus(before, vm) {
				t.Errorf("Next changed its input")
			}
		})
	}
}

func equalStatus(a, b *vendingv1alpha1.VendingMachine) bool {
	return MemoryOf(&a.Status).Equal(MemoryOf(&b.Status))
}

func check(t *testing.T, s Step, w want) {
	t.Helper()
	m := s.Memory
	eq := func(what string, got, want any) {
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s = %v, want %v (step %s)", what, got, want, s)
		}
	}
	eq("podName", m.PodName, w.podName)
	if w.cause != "" {
		eq("podCause", m.PodCause, w.cause)
	}
	eq("transition", s.Transition, w.transition)
	eq("create", s.Create, w.create)
	dels := make([]string, 0, len(s.Delete))
	for _, d := range s.Delete {
		n := d.Pod.Name
		if d.Graceful {
			n += "~"
		}
		dels = append(dels, n)
	}
	eq("deletes", dels, w.deletes)
	eq("progress", s.Progress, w.progress)
	var decided vendingv1alpha1.SupervisorAction
	if s.Decided {
		decided = m.LastFailure.Action
	}
	eq("decided", decided, w.decided)
	var pending vendingv1alpha1.SupervisorAction
	if p := m.Pending(); p != nil {
		pending = p.Action
	}
	eq("pending", pending, w.pending)
	eq("restarts", m.Restarts, w.restarts)
	eq("recreations", m.Recreations, w.recreations)
	eq("rolls", m.Rolls, w.rolls)
	eq("resets", m.Resets, w.resets)
	eq("window", len(m.RestartTimes), w.window)
	if w.nextRestart == nil {
		eq("nextRestartAt", s.NextRestartAt, (*time.Time)(nil))
	} else if s.NextRestartAt == nil || !s.NextRestartAt.Equal(*w.nextRestart) {
		t.Errorf("nextRestartAt = %v, want %v", s.NextRestartAt, *w.nextRestart)
	}
	if w.podUID != "" {
		eq("podUID", m.PodUID, w.podUID)
	}
	eq("observedReset", m.ObservedReset, w.observedRset)
	if s.Create && !m.PodRequested {
		t.Errorf("a step that creates %s does not remember asking for it", m.PodName)
	}
}
