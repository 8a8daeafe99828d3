package supervisor

import (
	"encoding/json"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/podsupervisor"
)

// inPlace is the in-pod supervisor's report of n restarts, the latest at times' last.
func inPlace(n int32, times ...time.Time) *contract.InPlace {
	last := times[len(times)-1]
	return &contract.InPlace{Restarts: n, Times: times, Last: &contract.InPlaceFailure{
		TerminationMessage: contract.TerminationMessage{Reason: contract.ReasonKilled, ExitCode: 137,
			Message: "the vending process was killed (SIGKILL)", Time: last.Add(-10 * time.Millisecond)},
		Action: "Restart", DecisionReason: "DeciderRestart", DecisionMessage: "restart in place", RestartAt: last}}
}

// reported: the pod's live annotation carries r.
func reported(r *contract.InPlace) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		b, _ := json.Marshal(r)
		p.Annotations[contract.AnnotationInPlace] = string(b)
	}
}

// gaveUp: PID 1 ended with the child's failure reason and its in-place history.
func gaveUp(reason string, r *contract.InPlace, t time.Time) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		b, _ := json.Marshal(contract.TerminationMessage{Reason: reason, Message: reason, ExitCode: 137, Time: t, InPlace: r})
		p.Status.Phase = corev1.PodFailed
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "vending", State: corev1.ContainerState{
			Terminated: &corev1.ContainerStateTerminated{ExitCode: 137, Message: string(b), FinishedAt: metav1.NewTime(t)}}}}
	}
}

// The pod's own restarts count as the machine's: in restarts, in the window, in lastFailure
// (marked inPlace), once each, and they decide nothing about the pod, which lives on.
func TestInPlaceRestartsAreCounted(t *testing.T) {
	vm := machine(all(at(1, "m-1"), func(st *vendingv1alpha1.VendingMachineStatus) { st.PodCause = vendingv1alpha1.PodCreated }))
	vm.Spec.Supervision.MaxRestarts = nil // default 10
	p := pod("m-1", finalized, reported(inPlace(2, t0.Add(time.Second), t0.Add(2*time.Second))))
	s := Next(Input{Machine: vm, Pods: []corev1.Pod{p}, TemplateHash: hash, Now: t0.Add(3 * time.Second)})
	m := s.Memory
	if m.Restarts != 2 || m.InPlace != 2 || m.PodInPlace != 2 || len(m.RestartTimes) != 2 || s.InPlace != 2 {
		t.Fatalf("restarts=%d inPlace=%d podInPlace=%d times=%d step.InPlace=%d; want 2 each", m.Restarts, m.InPlace,
			m.PodInPlace, len(m.RestartTimes), s.InPlace)
	}
	if f := m.LastFailure; f == nil || !f.InPlace || f.Reason != contract.ReasonKilled || f.PodName != "m-1" || s.InPlaceLast == nil {
		t.Fatalf("lastFailure = %+v; want the in-place Killed of m-1", f)
	}
	if s.Create || len(s.Delete) > 0 || len(s.Release) > 0 || s.Decided || m.Pending() != nil {
		t.Fatalf("an in-place restart acted on the pod: %s, decided=%v, pending=%v", s, s.Decided, m.Pending())
	}

	// The same report seen again (a resync, a stale cache) counts nothing more.
	vm2 := vm.DeepCopy()
	m.WriteTo(&vm2.Status)
	again := Next(Input{Machine: vm2, Pods: []corev1.Pod{p}, TemplateHash: hash, Now: t0.Add(4 * time.Second)})
	if again.InPlace != 0 || again.Memory.Restarts != 2 || !again.Memory.Equal(MemoryOf(&vm2.Status)) {
		t.Fatalf("a report counted twice: %+v", again.Memory)
	}

	// A later report counts only what is new.
	p3 := pod("m-1", finalized, reported(inPlace(3, t0.Add(time.Second), t0.Add(2*time.Second), t0.Add(5*time.Second))))
	third := Next(Input{Machine: vm2, Pods: []corev1.Pod{p3}, TemplateHash: hash, Now: t0.Add(6 * time.Second)})
	if third.InPlace != 1 || third.Memory.Restarts != 3 || len(third.Memory.RestartTimes) != 3 {
		t.Fatalf("the third restart: step.InPlace=%d restarts=%d times=%d", third.InPlace, third.Memory.Restarts,
			len(third.Memory.RestartTimes))
	}
}

// One budget over both levels: when the pod gives up after using the window in place, the
// restarts its termination message reports (also those never reported live) count before the
// operator decides, and the operator escalates as the pod did instead of restarting it anew.
func TestInPlaceRestartsSpendTheOperatorsBudget(t *testing.T) {
	vm := machine(at(1, "m-1")) // maxRestarts 2 in a minute
	end := t0.Add(3 * time.Second)
	p := pod("m-1", finalized, gaveUp(contract.ReasonKilled, inPlace(2, t0.Add(time.Second), t0.Add(2*time.Second)), end))
	s := Next(Input{Machine: vm, Pods: []corev1.Pod{p}, TemplateHash: hash, Now: end.Add(time.Second)})
	if s.InPlace != 2 || s.Memory.Restarts != 2 {
		t.Fatalf("the termination message's restarts were not counted: step.InPlace=%d restarts=%d", s.InPlace, s.Memory.Restarts)
	}
	f := s.Memory.LastFailure
	if !s.Decided || f == nil || f.InPlace || f.Action != vendingv1alpha1.ActionEscalate || f.DecisionReason != "RestartIntensityExceeded" {
		t.Fatalf("decision = %+v; want the operator to escalate on the exhausted window", f)
	}
	if s.Create {
		t.Fatalf("the operator restarted a machine whose budget the pod had used: %s", s)
	}
}

// A new incarnation starts its own count of in-place restarts; the machine's totals go on.
func TestInPlaceCountIsPerPod(t *testing.T) {
	vm := machine(all(at(1, "m-1"), func(st *vendingv1alpha1.VendingMachineStatus) {
		st.Restarts, st.InPlaceRestarts, st.PodInPlaceRestarts = 1, 1, 1
	}))
	end := t0.Add(3 * time.Second)
	p := pod("m-1", finalized, killedAt(end), reported(inPlace(1, t0.Add(time.Second))))
	s := Next(Input{Machine: vm, Pods: []corev1.Pod{p}, TemplateHash: hash, Now: end.Add(2 * time.Second)})
	if !s.Create || s.Memory.PodName != "m-2" || s.Memory.PodInPlace != 0 || s.Memory.InPlace != 1 || s.Memory.Restarts != 2 {
		t.Fatalf("restart: %s memory %+v", s, s.Memory)
	}
}

// The pod keeps its restart times to the second, as the operator's status does: both levels
// count the same history at a window's edge.
func TestInPlaceTimesAreWholeSeconds(t *testing.T) {
	tr := podsupervisor.NewTracker(PolicyOf(machine(nil)), "ns/m", nil)
	at := t0.Add(900 * time.Millisecond)
	f := contract.TerminationMessage{Reason: contract.ReasonKilled, Time: at}
	tr.Restarted(f, tr.Decide(f, at), at)
	if got := tr.Report().Times[0]; !got.Equal(t0) {
		t.Fatalf("restart time %v, want %v (the second the status keeps)", got, t0)
	}
}
