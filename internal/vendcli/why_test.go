package vendcli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
)

// backingOffStatus is a machine whose pod was OOM-killed 5 s ago; the decider restarts it after
// an 8 s backoff. Of its restart times, one is 3 minutes old: outside a 2-minute window, so it
// no longer counts (the status may hold it until the supervisor's next step prunes it).
func backingOffStatus() vendingv1alpha1.VendingMachineStatus {
	restartAt := metav1.NewMicroTime(now.Add(3 * time.Second))
	next := metav1.NewTime(now.Add(3 * time.Second))
	msg := "the decider restarts on OOMKilled; restart 3 of 5 within 2m0s, after 8s"
	return vendingv1alpha1.VendingMachineStatus{
		Phase: vendingv1alpha1.PhaseRestarting, PodName: "latte-3", PodCause: vendingv1alpha1.PodRestarted,
		Restarts: 7, InPlaceRestarts: 4, Recreations: 1, Resets: 1,
		RestartTimes:  []metav1.Time{at(3 * time.Minute), at(90 * time.Second), at(30 * time.Second)},
		NextRestartAt: &next,
		LastFailure: &vendingv1alpha1.Failure{Time: at(5 * time.Second), Reason: "OOMKilled", ExitCode: 137,
			Message: "the vending container was killed by the kernel's OOM killer", PodName: "latte-3", Sequence: 812,
			Action: vendingv1alpha1.ActionRestart, DecisionReason: "DeciderRestart", DecisionMessage: msg, RestartAt: &restartAt},
		Conditions: []metav1.Condition{
			{Type: "Ready", Status: "False", Reason: "PodFailed", Message: "pod latte-3 failed", LastTransitionTime: at(5 * time.Second)},
			{Type: "Progressing", Status: "True", Reason: "BackingOff", Message: "restarting at 2026-11-29T12:00:03Z (" + msg + ")", LastTransitionTime: at(5 * time.Second)},
			{Type: "Reconciling", Status: "True", Reason: "BackingOff", Message: "restarting at 2026-11-29T12:00:03Z (" + msg + ")", LastTransitionTime: at(5 * time.Second)},
			{Type: "Degraded", Status: "Unknown", Reason: "StateUnknown", Message: "the machine's state was not read", LastTransitionTime: at(5 * time.Second)},
			{Type: "Escalated", Status: "False", Reason: "WithinRestartBudget", Message: "2 of 5 restarts used within the window", LastTransitionTime: at(time.Hour)},
		},
	}
}

func backingOffSpec(vm *vendingv1alpha1.VendingMachine) {
	vm.Spec.Supervision.MaxRestarts = ptr.To[int32](5)
	vm.Spec.Supervision.Window = &metav1.Duration{Duration: 2 * time.Minute}
	vm.Spec.Supervision.Decider = []vendingv1alpha1.DeciderRule{{Reason: "OOMKilled", Action: vendingv1alpha1.ActionRestart}}
}

// why on a machine backing off: the failure, the decision in force, the budget of its own
// spec (5 per 2m, the 3-minute-old restart not counted), the next restart, what to do.
func TestWhyOfABackingOffMachine(t *testing.T) {
	ns := namespace(t, "why-latte")
	machine(t, ns, "latte", nil, 0, backingOffSpec, backingOffStatus())

	out := mustVend(t, "-n", ns, "why", "latte")
	golden(t, "why-backing-off", out)
	for _, want := range []string{
		"OOMKilled, exit code 137, pod latte-3",
		"Restart (DeciderRestart): the decider restarts on OOMKilled",
		"3 of 5 restarts left in the 2m0s window (2 used",
		"Next restart    in 3s (2026-11-29T12:00:03Z)",
		"kubectl vend pause -n why-latte latte",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("why: %q missing in\n%s", want, out)
		}
	}

	var d Diagnosis
	must(t, json.Unmarshal([]byte(mustVend(t, "-n", ns, "why", "latte", "-o", "json")), &d))
	if d.Budget.Left != 3 || d.Budget.Used != 2 || d.Budget.MaxRestarts != 5 || !d.InForce || d.NextRestart == nil ||
		d.LastFailure == nil || d.LastFailure.Reason != "OOMKilled" {
		t.Errorf("why -o json: %+v", d)
	}

	// 31 s later the restart 90 s ago has left the window: one more restart is allowed.
	later, err := vendAt(t, now.Add(31*time.Second), "-n", ns, "why", "latte", "-o", "json")
	must(t, err)
	must(t, json.Unmarshal([]byte(later), &d))
	if d.Budget.Left != 4 {
		t.Errorf("31 s later: %d restarts left, want 4", d.Budget.Left)
	}
}

// why on an escalated machine: the reset comes first among the actions, and there is no next
// restart without one.
func TestWhyOfAnEscalatedMachine(t *testing.T) {
	ns := namespace(t, "why-espresso")
	machine(t, ns, "espresso", nil, 0, nil, escalated("espresso", "espresso-11", "humans"))

	out := mustVend(t, "-n", ns, "why", "espresso")
	golden(t, "why-escalated", out)
	for _, want := range []string{
		"0 of 10 restarts left", "a reset empties the window",
		"Next restart    none: only a reset moves the machine on",
		"Escalated to    humans",
		"What you can do:\n  kubectl vend reset -n why-espresso espresso",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("why: %q missing in\n%s", want, out)
		}
	}
	if _, err := vend(t, "-n", ns, "why", "nosuch"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("why of a machine that does not exist: %v", err)
	}
}

// A machine the operator never wrote a status for has no decision to reset: why says the
// operator has not reported on it and how to see whether it runs.
func TestWhyOfAMachineTheOperatorHasNotReportedOn(t *testing.T) {
	ns := namespace(t, "why-unseen")
	must(t, k8s.Create(context.Background(), &vendingv1alpha1.VendingMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "cortado"}}))

	out := mustVend(t, "-n", ns, "why", "cortado")
	for _, want := range []string{
		"NotObserved: the operator has not reported on this machine yet (is it running? kubectl -n vending-operator-system get pods)",
		"What you can do:\n  kubectl -n vending-operator-system get pods",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("why: %q missing in\n%s", want, out)
		}
	}
	if strings.Contains(out, "vend reset") {
		t.Errorf("why must not suggest a reset before the operator reported:\n%s", out)
	}
}
