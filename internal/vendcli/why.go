package vendcli

import (
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/supervision"
	"github.com/vendingfleet/vending-operator/internal/supervisor"
)

// Diagnosis is what `why` says about a machine, as data (`-o json|yaml`) and as text.
type Diagnosis struct {
	Machine   string `json:"machine"`
	Namespace string `json:"namespace"`
	Phase     string `json:"phase"`
	// State is the machine's judgement: reason and message of the condition that says what is
	// wrong (Stalled/Escalated, Reconciling/Progressing, Ready, Degraded).
	State       string                   `json:"state"`
	StateReason string                   `json:"stateReason,omitempty"`
	StateDetail string                   `json:"stateMessage,omitempty"`
	LastFailure *vendingv1alpha1.Failure `json:"lastFailure,omitempty"`
	InForce     bool                     `json:"decisionInForce"`
	Budget      Budget                   `json:"restartBudget"`
	NextRestart *metav1.Time             `json:"nextRestartAt,omitempty"`
	EscalatedTo string                   `json:"escalatedTo,omitempty"`
	Actions     []Action                 `json:"actions"`
	Paused      bool                     `json:"paused,omitempty"`
	Counters    map[string]int32         `json:"counters"`
	Pod         string                   `json:"pod,omitempty"`

	sev severity
}

// Budget is the restart budget of the machine's current window: spec.supervision.maxRestarts
// restarts within spec.supervision.window; the failure after the last one escalates.
type Budget struct {
	MaxRestarts int    `json:"maxRestarts"`
	Window      string `json:"window"`
	Used        int    `json:"used"`
	Left        int    `json:"left"`
	// FreesAt is when the oldest restart in the window leaves it (one more restart allowed).
	FreesAt *metav1.Time `json:"freesAt,omitempty"`
}

// Action is something a human can do about the machine, as a command line.
type Action struct {
	Command string `json:"command"`
	Does    string `json:"does"`
}

// Diagnose explains a machine from its spec and status at now, with the supervisor's own
// policy (supervisor.PolicyOf: the defaults the operator applies) and window arithmetic
// (supervision.RecentRestarts), so the budget it shows is the one the operator decides on.
func Diagnose(vm *vendingv1alpha1.VendingMachine, now time.Time) Diagnosis {
	st := vm.Status
	j := judgeMachine(vm)
	d := Diagnosis{Machine: vm.Name, Namespace: vm.Namespace, Phase: string(st.Phase), StateReason: j.reason,
		StateDetail: j.message, LastFailure: st.LastFailure, NextRestart: st.NextRestartAt, Paused: vm.Spec.Paused,
		Pod: st.PodName, Counters: map[string]int32{"restarts": st.Restarts, "inPlaceRestarts": st.InPlaceRestarts,
			"recreations": st.Recreations, "rolls": st.Rolls, "resets": st.Resets}}
	d.State, d.sev = j.sev.word(), j.sev
	d.InForce = supervisor.MemoryOf(&st).Pending() != nil

	p := supervisor.PolicyOf(vm)
	recent := supervision.RecentRestarts(timesOf(st.RestartTimes), p.Window, now)
	d.Budget = Budget{MaxRestarts: p.MaxRestarts, Window: p.Window.String(), Used: len(recent), Left: max(p.MaxRestarts-len(recent), 0)}
	if len(recent) > 0 {
		t := metav1.NewTime(recent[0].Add(p.Window))
		d.Budget.FreesAt = &t
	}
	if c := meta.FindStatusCondition(st.Conditions, vendingv1alpha1.ConditionEscalated); c != nil && c.Status == metav1.ConditionTrue {
		d.EscalatedTo = escalatedTo(vm)
	}
	d.Actions = actionsFor(vm, d)
	return d
}

func timesOf(ts []metav1.Time) []time.Time {
	out := make([]time.Time, len(ts))
	for i, t := range ts {
		out[i] = t.Time
	}
	return out
}

func escalatedTo(vm *vendingv1alpha1.VendingMachine) string {
	if f := fleetOf(vm); f != "" {
		return "VendingFleet " + f
	}
	return "humans"
}

// actionsFor lists what a human can do, the most useful first for the machine's state.
func actionsFor(vm *vendingv1alpha1.VendingMachine, d Diagnosis) []Action {
	ns := ""
	if vm.Namespace != "" {
		ns = " -n " + vm.Namespace
	}
	if d.StateReason == reasonNotObserved {
		// No status, so no decision to clear: a reset would change nothing. What is missing is
		// the operator.
		return []Action{
			{operatorPods, "is the operator running? It reports on every machine it watches"},
			{fmt.Sprintf("kubectl describe vend%s %s", ns, vm.Name), "the machine and the events about it"},
		}
	}
	var out []Action
	reset := Action{fmt.Sprintf("kubectl vend reset%s %s", ns, vm.Name), fmt.Sprintf(
		"clear the decision in force and start a new pod with a fresh restart window (writes annotation %s)", supervisor.AnnotationReset)}
	if d.sev == sevStalled {
		out = append(out, reset)
	}
	if vm.Spec.Paused {
		out = append(out, Action{fmt.Sprintf("kubectl vend resume%s %s", ns, vm.Name), "let the supervisor act again (spec.paused=false)"})
	} else {
		out = append(out, Action{fmt.Sprintf("kubectl vend pause%s %s", ns, vm.Name),
			"stop the supervisor from acting while you look (spec.paused=true)"})
	}
	out = append(out, Action{fmt.Sprintf("kubectl vend events%s %s", ns, vm.Name), "the machine's own event log (GET /v1/events)"})
	if pod := podOfFailure(vm); pod != "" {
		out = append(out, Action{fmt.Sprintf("kubectl logs%s %s", ns, pod), "the failed vending process's output (its supervisor's too)"})
	}
	out = append(out, Action{fmt.Sprintf("kubectl describe vend%s %s", ns, vm.Name), "conditions and the operator's events"})
	if d.sev != sevStalled {
		out = append(out, reset)
	}
	return out
}

func podOfFailure(vm *vendingv1alpha1.VendingMachine) string {
	if f := vm.Status.LastFailure; f != nil && f.PodName != "" {
		return f.PodName
	}
	return vm.Status.PodName
}

// RenderWhy writes the diagnosis for a human.
func RenderWhy(d Diagnosis, now time.Time, color bool) string {
	p := painter(color)
	var b strings.Builder
	line := func(label, format string, args ...any) {
		fmt.Fprintf(&b, "%-15s %s\n", label, fmt.Sprintf(format, args...))
	}
	fmt.Fprintf(&b, "%s %s/%s: %s\n", p.bold("VendingMachine"), d.Namespace, d.Machine,
		p.paint(d.sev, fmt.Sprintf("%s (phase %s)", d.State, orDash(d.Phase))))
	if d.StateReason != "" && d.sev != sevHealthy {
		line("Why", "%s", p.paint(d.sev, d.StateReason+": "+d.StateDetail))
	}
	failureLines(d, now, line)
	if d.EscalatedTo != "" {
		line("Escalated to", "%s", d.EscalatedTo)
	}
	line("Restart budget", "%s", budgetText(d, now))
	line("Next restart", "%s", nextRestartText(d, now))
	line("Counters", "restarts %d (in place %d), recreations %d, rolls %d, resets %d", d.Counters["restarts"],
		d.Counters["inPlaceRestarts"], d.Counters["recreations"], d.Counters["rolls"], d.Counters["resets"])

	b.WriteString("\nWhat you can do:\n")
	width := 0
	for _, a := range d.Actions {
		width = max(width, len(a.Command))
	}
	for _, a := range d.Actions {
		fmt.Fprintf(&b, "  %-*s  %s\n", width, a.Command, a.Does)
	}
	return b.String()
}

// failureLines say what failed, how, and what the supervisor decided about it.
func failureLines(d Diagnosis, now time.Time, line func(label, format string, args ...any)) {
	f := d.LastFailure
	if f == nil {
		line("Last failure", "none")
		return
	}
	where := "the operator restarts the machine with a new pod on the same log"
	switch {
	case f.InPlace:
		where = "restarted in place: the pod's own supervisor replaced the process, the pod stayed"
	case f.External:
		where = "stopped from outside (not the machine's fault): recreated at once, outside the restart window"
	case f.Action != vendingv1alpha1.ActionRestart:
		where = "nothing restarts it: the failed pod stays as evidence until a reset"
	}
	line("Last failure", "%s, exit code %d, pod %s, %s ago (%s)", f.Reason, f.ExitCode, orDash(f.PodName),
		duration.HumanDuration(now.Sub(f.Time.Time)), f.Time.UTC().Format(time.RFC3339))
	if f.Message != "" {
		line("", "message: %s", f.Message)
	}
	line("", "%s", where)
	if f.PendingOrder != "" {
		line("", "pending order %s (persisted, brewed on the next start)", f.PendingOrder)
	}
	if f.File != "" {
		line("", "damage in %s at offset %d (last durable sequence %d)", f.File, f.Offset, f.Sequence)
	}
	decision := fmt.Sprintf("%s (%s): %s", orDash(string(f.Action)), orDash(f.DecisionReason), f.DecisionMessage)
	if d.InForce {
		decision += " [in force]"
	}
	line("Decision", "%s", decision)
}

func budgetText(d Diagnosis, now time.Time) string {
	s := fmt.Sprintf("%d of %d restarts left in the %s window (%d used)", d.Budget.Left, d.Budget.MaxRestarts,
		d.Budget.Window, d.Budget.Used)
	if d.Budget.FreesAt != nil {
		s += fmt.Sprintf("; the oldest leaves the window in %s", duration.HumanDuration(d.Budget.FreesAt.Sub(now)))
	}
	switch {
	case d.sev == sevStalled:
		s += "; a reset empties the window"
	case d.Budget.Left == 0:
		s += "; the next failure escalates"
	}
	return s
}

func nextRestartText(d Diagnosis, now time.Time) string {
	switch {
	case d.NextRestart != nil && d.NextRestart.After(now):
		return fmt.Sprintf("in %s (%s)", duration.HumanDuration(d.NextRestart.Sub(now)), d.NextRestart.UTC().Format(time.RFC3339))
	case d.NextRestart != nil:
		return fmt.Sprintf("due since %s (%s)", duration.HumanDuration(now.Sub(d.NextRestart.Time)), d.NextRestart.UTC().Format(time.RFC3339))
	case d.sev == sevStalled:
		return "none: only a reset moves the machine on"
	case d.Paused:
		return "none while paused"
	}
	return "none pending"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
