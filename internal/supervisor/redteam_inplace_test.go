package supervisor

import (
	"encoding/json"
	"math"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/podsupervisor"
	"github.com/vendingfleet/vending-operator/internal/supervision"
)

// Red-team attacks on the operator's half of the in-place restarts (issue 11): one budget over
// both levels, nothing hidden. A test marked DEFECT fails on the code it was written against; it
// is skipped unless REDTEAM=1 so that the suite stays green until the lead fixes it.

func redTeamDefect(t *testing.T) {
	t.Helper()
	if os.Getenv("REDTEAM") != "1" {
		t.Skip("a known defect (see the comment); REDTEAM=1 runs it")
	}
}

// throughAPI is the machine as the API server gives it back after the operator wrote mem: a
// JSON round trip, which is where metav1.Time loses everything below the second.
func throughAPI(t *testing.T, vm *vendingv1alpha1.VendingMachine, mem Memory) *vendingv1alpha1.VendingMachine {
	t.Helper()
	out := vm.DeepCopy()
	mem.WriteTo(&out.Status)
	b, err := json.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	back := &vendingv1alpha1.VendingMachine{}
	if err := json.Unmarshal(b, back); err != nil {
		t.Fatal(err)
	}
	return back
}

// podDecides is the in-pod supervisor's decision about failure f at now, for a pod created with
// the operator's restarts earlier and having made the in-place restarts own: the real Tracker
// with the machine's policy and seed, as buildPod passes them.
func podDecides(vm *vendingv1alpha1.VendingMachine, earlier, own []time.Time, f contract.TerminationMessage,
	now time.Time) (supervision.Decision, contract.InPlace) {
	tr := podsupervisor.NewTracker(PolicyOf(vm), vm.Namespace+"/"+vm.Name, earlier)
	for _, at := range own {
		d := tr.Decide(contract.TerminationMessage{Reason: contract.ReasonKilled, Time: at}, at)
		tr.Restarted(contract.TerminationMessage{Reason: contract.ReasonKilled, ExitCode: 137, Time: at}, d, at)
	}
	return tr.Decide(f, now), tr.Report()
}

// DOCUMENTED LIMIT (claim 3, one budget), was a DEFECT in two parts; the first is fixed: the pod
// keeps its restart times to the second, as the status does (TestInPlaceTimesAreWholeSeconds), so
// both levels count the same history. The second stands, by design: each level measures the
// window when it decides, and a restart that leaves the window between the pod's decision and
// the operator's is no longer counted: the operator may restart once more at the window's edge
// (the window slid; it is not a second budget: the new pod gets the restarts still inside it).
//
//   - "second precision": status.restartTimes are metav1.Time, which the API server keeps to the
//     second; the pod decides on nanoseconds. An in-place restart at t0+0.9s, reported live, is
//     stored as t0. At t0+60.5s the pod counts it (59.6 s ago: the window is full, Escalate) and
//     the operator, deciding at the very same instant, does not (60.5 s ago: Restart).
//   - "decided later": the operator decides on its clock at the pass (now), the pod at the
//     failure. Between them lie the kubelet's PLEG relist, the status round trip and the queue
//     (a second or two), in which the oldest restart may leave the window: Restart again.
//
// Either way the pod's Escalate becomes the operator's Restart: with maxRestarts 2 the machine
// runs a third time within the window. Proposed fix: for the failure of a pod whose supervisor
// gave up (its termination message carries inPlace), decide the window at the failure's time
// (f.At) rather than at now, and keep the pod's own times exact: fold them from the report
// (Memory) rather than from status.restartTimes, or store the times as metav1.MicroTime
// (restartTimes []MicroTime), or have the pod round its own times down to the second as the
// status does (then both see the same history).
func TestRedTeamInPlaceWindowEdgeAgrees(t *testing.T) {
	redTeamDefect(t)
	for _, tc := range []struct {
		name    string
		first   time.Time     // the first in-place restart
		failAt  time.Time     // the failure the pod gives up on
		latency time.Duration // from the failure to the operator's pass
	}{
		{name: "decided later", first: t0.Add(time.Second), failAt: t0.Add(60500 * time.Millisecond), latency: 1500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm := machine(all(at(1, "m-1"), func(st *vendingv1alpha1.VendingMachineStatus) {
				st.PodCause = vendingv1alpha1.PodCreated
			})) // maxRestarts 2 in a minute; the pod was created with no earlier restarts
			own := []time.Time{tc.first, t0.Add(10 * time.Second)}
			f := contract.TerminationMessage{Reason: contract.ReasonKilled, ExitCode: 137, Message: "killed", Time: tc.failAt}
			pd, report := podDecides(vm, nil, own, f, tc.failAt)
			if pd.Action != supervision.Escalate {
				t.Fatalf("the pod decided %s (%s); the attack needs it to give up", pd.Action, pd.Message)
			}

			// Both restarts were reported live and counted (a pass after the second one).
			live := pod("m-1", finalized, reported(&report))
			s := Next(Input{Machine: vm, Pods: []corev1.Pod{live}, TemplateHash: hash, Now: own[1].Add(time.Second)})
			if s.InPlace != 2 {
				t.Fatalf("the live report counted %d restarts, want 2", s.InPlace)
			}
			vm = throughAPI(t, vm, s.Memory)

			// The pod gives up: PID 1 exits with the child's failure and its history.
			f.InPlace = &report
			ended := pod("m-1", finalized, func(p *corev1.Pod) {
				b, _ := json.Marshal(f)
				gaveUp(contract.ReasonKilled, &report, tc.failAt)(p)
				p.Status.ContainerStatuses[0].State.Terminated.Message = string(b)
			})
			s = Next(Input{Machine: vm, Pods: []corev1.Pod{ended}, TemplateHash: hash, Now: tc.failAt.Add(tc.latency)})
			if lf := s.Memory.LastFailure; lf == nil || lf.Action != vendingv1alpha1.ActionEscalate || s.Create {
				t.Fatalf("the pod gave up (%s: %s) and the operator decided %+v (create=%v): a second budget",
					pd.Reason, pd.Message, lf, s.Create)
			}
		})
	}
}

// FIXED DEFECT (claim 4, nothing hidden; severity medium): restarts the pod made in place and could
// not report live (no API server, a refused report: no RoleBinding, no policy) reach the
// operator only in the termination message, and the operator reads that message only when the
// pod is still its current incarnation. A pod that ends because the operator or a human moved
// on first (a roll after a spec change, a reset, a deletion from outside) carries them in its
// termination message (PID 1's SIGTERM path writes the history) and nobody counts them: they
// are missing from status.restarts, inPlaceRestarts and the window, and never announced. The
// design promises the opposite ("the restarts reach the operator in the termination message
// when the pod ends").
//
// Proposed fix: fold the in-place report of every pod of the machine, not only the current
// one: remember per pod (by UID) how many were counted (e.g. the previous incarnation's count
// next to podInPlaceRestarts, or fold a pod's termination message before the step that moves
// past it releases its finalizer: the finalizer keeps the pod object until then), and release a
// moved-past pod's finalizer only once it is terminal and folded.
func TestRedTeamInPlaceNotHiddenWhenThePodIsReplaced(t *testing.T) {
	const unreported = 3
	end := t0.Add(20 * time.Second)
	history := inPlace(unreported, t0.Add(5*time.Second), t0.Add(10*time.Second), t0.Add(15*time.Second))
	for _, tc := range []struct {
		name    string
		machine func(*vendingv1alpha1.VendingMachine)
		pod     func(*corev1.Pod)
	}{
		{name: "rolled", pod: oldHash},
		{name: "reset", machine: withReset("r1")},
		{name: "deleted from outside", pod: deletedGracefullyAt(t0.Add(18 * time.Second))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm := rtMachine(all(at(1, "m-1"), func(st *vendingv1alpha1.VendingMachineStatus) {
				st.PodCause = vendingv1alpha1.PodCreated
			}))
			vm.Spec.Supervision.MaxRestarts = nil // default 10: room for all
			if tc.machine != nil {
				tc.machine(vm)
			}
			opts := []func(*corev1.Pod){finalized}
			if tc.pod != nil {
				opts = append(opts, tc.pod)
			}
			// The operator moves on while the pod runs; it has reported nothing live.
			running := pod("m-1", opts...)
			s := Next(Input{Machine: vm, Pods: []corev1.Pod{running}, TemplateHash: hash, Now: end.Add(-time.Second)})
			if s.Memory.PodName != "m-2" {
				t.Fatalf("the attack needs the operator to move on: %s", s)
			}
			vm = throughAPI(t, vm, s.Memory)

			// PID 1 gets its SIGTERM and ends with its history in the termination message.
			gone := pod("m-1", append(opts, func(p *corev1.Pod) {
				b, _ := json.Marshal(contract.TerminationMessage{Reason: contract.ReasonTerminated, ExitCode: 143,
					Message: "SIGTERM", Time: end, InPlace: history})
				p.Status.Phase = corev1.PodFailed
				p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "vending", State: corev1.ContainerState{
					Terminated: &corev1.ContainerStateTerminated{ExitCode: 143, Message: string(b), FinishedAt: metav1.NewTime(end)}}}}
			})...)
			pods := []corev1.Pod{gone}
			counted := s.InPlace
			for pass := range 3 { // the old pod's end, the new pod's creation, the new pod seen
				s = Next(Input{Machine: vm, Pods: pods, TemplateHash: hash, Now: end.Add(time.Duration(pass+1) * time.Second)})
				counted += s.InPlace
				vm = throughAPI(t, vm, s.Memory)
				if s.Create && len(pods) == 1 {
					pods = append(pods, pod(s.Memory.PodName, finalized))
				}
			}
			if st := vm.Status; st.InPlaceRestarts != unreported || counted != unreported {
				t.Fatalf("%d in-place restarts in the old pod's termination message; status.inPlaceRestarts=%d "+
					"restarts=%d, announced %d: hidden", unreported, st.InPlaceRestarts, st.Restarts, counted)
			}
		})
	}
}

// FIXED DEFECT (claim 3, garbage from the pod; severity low): a report's count is added to the
// machine's int32 counters as it is. A pod that reports a huge count (a bug, or a stolen token:
// the admission policy lets the pod write any JSON into its own annotation) wraps
// status.restarts and status.inPlaceRestarts negative. Proposed fix: bound what one report may
// add (a pod cannot have made more in-place restarts than its lifetime allows; at least, add
// with saturation at math.MaxInt32), and treat a count that goes down or jumps absurdly as
// garbage to log, not to count.
func TestRedTeamInPlaceHugeCountDoesNotWrap(t *testing.T) {
	vm := machine(all(at(1, "m-1"), func(st *vendingv1alpha1.VendingMachineStatus) {
		st.PodCause, st.Restarts, st.InPlaceRestarts = vendingv1alpha1.PodCreated, 5, 5
	}))
	p := pod("m-1", finalized, reported(inPlace(math.MaxInt32, t0.Add(time.Second))))
	s := Next(Input{Machine: vm, Pods: []corev1.Pod{p}, TemplateHash: hash, Now: t0.Add(2 * time.Second)})
	if s.Memory.Restarts < 5 || s.Memory.InPlace < 5 {
		t.Fatalf("a report of %d restarts made status.restarts %d and inPlaceRestarts %d", int32(math.MaxInt32),
			s.Memory.Restarts, s.Memory.InPlace)
	}
}

// FIXED DEFECT (claims 3 and 4; severity low): an in-place report seen after the operator decided
// about the pod's end replaces the decision in force. A pod whose PID 1 died without a
// termination message (SIGKILL, an OOM kill of the whole container: memory.oom.group) is
// decided on its exit (Restart after the backoff); a PATCH of its report that was in flight (a
// slow API server, the 5 s client timeout) lands afterwards. foldInPlace then sets lastFailure
// to the in-place failure (inPlace: true decides nothing about the pod), so Pending() is nil, and
// the next pass decides the pod's end a second time: a second Failed event and a decision that
// may differ (here the in-place restart fills the window: Escalate instead of the Restart
// announced). Proposed fix: in foldInPlace, count the restarts and their times but leave
// lastFailure alone when a decision about the pod is in force (s.Memory.Pending() != nil).
func TestRedTeamLateReportKeepsTheDecision(t *testing.T) {
	vm := machine(all(at(1, "m-1"), restartTimes(t0.Add(-10*time.Second)), func(st *vendingv1alpha1.VendingMachineStatus) {
		st.PodCause, st.Restarts = vendingv1alpha1.PodRestarted, 1
	}))
	end := t0.Add(5 * time.Second)
	dead := pod("m-1", finalized, killedAt(end)) // PID 1 SIGKILLed: no termination message
	s := Next(Input{Machine: vm, Pods: []corev1.Pod{dead}, TemplateHash: hash, Now: end.Add(100 * time.Millisecond)})
	if !s.Decided || s.Memory.Pending() == nil || s.Memory.Pending().Action != vendingv1alpha1.ActionRestart {
		t.Fatalf("the attack needs a Restart in backoff: %s %+v", s, s.Memory.LastFailure)
	}
	first := *s.Memory.LastFailure
	vm = throughAPI(t, vm, s.Memory)

	late := pod("m-1", finalized, killedAt(end), reported(inPlace(1, t0.Add(3*time.Second))))
	s = Next(Input{Machine: vm, Pods: []corev1.Pod{late}, TemplateHash: hash, Now: end.Add(200 * time.Millisecond)})
	if s.Decided {
		t.Fatalf("the pod's end was decided twice: first %s (%s), then %s (%s)", first.Action, first.DecisionReason,
			s.Memory.LastFailure.Action, s.Memory.LastFailure.DecisionReason)
	}
	if p := s.Memory.Pending(); p == nil || p.Action != first.Action {
		t.Fatalf("the decision in force (%s) was replaced by %+v", first.Action, s.Memory.LastFailure)
	}
}

// Held: reports that arrive out of order (a timed-out PATCH committed after a newer one), a
// report seen twice and a termination message behind its annotation never count a restart
// twice or take one back; the machine's restarts only grow, by exactly the pod's total.
func TestRedTeamInPlaceReportsOutOfOrder(t *testing.T) {
	vm := machine(all(at(1, "m-1"), func(st *vendingv1alpha1.VendingMachineStatus) { st.PodCause = vendingv1alpha1.PodCreated }))
	vm.Spec.Supervision.MaxRestarts = nil
	ts := []time.Time{t0.Add(time.Second), t0.Add(2 * time.Second), t0.Add(3 * time.Second), t0.Add(4 * time.Second)}
	now := t0.Add(5 * time.Second)
	total := int32(0)
	for i, r := range []*contract.InPlace{inPlace(3, ts[:3]...), inPlace(2, ts[:2]...), inPlace(3, ts[:3]...),
		inPlace(1, ts[:1]...), inPlace(4, ts...)} {
		now = now.Add(time.Second)
		s := Next(Input{Machine: vm, Pods: []corev1.Pod{pod("m-1", finalized, reported(r))}, TemplateHash: hash, Now: now})
		total += s.InPlace
		if s.Memory.Restarts < vm.Status.Restarts {
			t.Fatalf("report %d (%d restarts) took restarts back: %d → %d", i, r.Restarts, vm.Status.Restarts, s.Memory.Restarts)
		}
		vm = throughAPI(t, vm, s.Memory)
	}
	// The pod then ends with a termination message that lags its annotation (written, say,
	// before the last PATCH landed): the larger of the two is the pod's total.
	end := pod("m-1", finalized, reported(inPlace(4, ts...)), gaveUp(contract.ReasonKilled, inPlace(3, ts[:3]...), now))
	s := Next(Input{Machine: vm, Pods: []corev1.Pod{end}, TemplateHash: hash, Now: now.Add(time.Second)})
	total += s.InPlace
	if total != 4 || s.Memory.InPlace != 4 || s.Memory.Restarts < 4 {
		t.Fatalf("counted %d in-place restarts (status %d, restarts %d), want exactly the pod's 4", total, s.Memory.InPlace,
			s.Memory.Restarts)
	}
}

// Held: the restarts the operator hands a new pod (--earlier-restarts) are the window it
// decides on, as the API server stores them, so a pod created after the operator's own restart
// cannot restart in place beyond what is left: with maxRestarts 2 and two restarts in the window
// when the pod is created, its first failure escalates, as the operator's would.
func TestRedTeamEarlierRestartsLeaveTheRest(t *testing.T) {
	vm := machine(all(at(1, "m-1"), restartTimes(t0.Add(-20*time.Second)), func(st *vendingv1alpha1.VendingMachineStatus) {
		st.PodCause, st.Restarts = vendingv1alpha1.PodRestarted, 1
	}))
	end := t0.Add(time.Second)
	s := Next(Input{Machine: vm, Pods: []corev1.Pod{pod("m-1", finalized, killedAt(end))}, TemplateHash: hash,
		Now: end.Add(2 * time.Second)}) // past the 1 s backoff
	if !s.Create {
		t.Fatalf("want the operator's restart: %s", s)
	}
	earlier := timesOf(throughAPI(t, vm, s.Memory).Status.RestartTimes) // what buildPod passes, as stored
	if len(earlier) != 2 {
		t.Fatalf("earlier restarts %v, want 2", earlier)
	}
	inPod := end.Add(10 * time.Second)
	d, _ := podDecides(vm, earlier, nil, contract.TerminationMessage{Reason: contract.ReasonKilled, Time: inPod}, inPod)
	if d.Action != supervision.Escalate || d.Reason != supervision.ReasonIntensityReached {
		t.Fatalf("the pod, with the window full, decided %s (%s)", d.Action, d.Message)
	}
}
