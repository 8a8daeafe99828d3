package vendcli

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
)

// lobby is a fleet of 50 machines of which lobby-37 escalated, and the fleet, its intensity
// spent, escalated to humans.
func lobby(t *testing.T, ns string) {
	t.Helper()
	f := &vendingv1alpha1.VendingFleet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "lobby"},
		Spec: vendingv1alpha1.VendingFleetSpec{Replicas: ptr.To[int32](50)}}
	must(t, k8s.Create(context.Background(), f))
	fleetMsg := "lobby-37 escalated (OutOfCoffeeBeans) after 3 escalations within 10m0s (maxEscalations 3): " +
		"the fleet resets no more machines until its window has room; escalated to humans"
	f.Status = vendingv1alpha1.VendingFleetStatus{ObservedGeneration: f.Generation, Replicas: 50, ReadyMachines: 49,
		UpdatedMachines: 50, Ready: "49/50", EscalationCount: 3, RestartBudget: 40,
		Conditions: []metav1.Condition{
			{Type: "Ready", Status: "False", Reason: "MachinesNotReady", Message: "49 of 50 machines are ready; not ready: lobby-37", LastTransitionTime: at(2 * time.Minute)},
			{Type: "Progressing", Status: "False", Reason: "Stable", Message: "every machine is on the current template", LastTransitionTime: at(time.Hour)},
			{Type: "Degraded", Status: "True", Reason: "MachinesEscalated", Message: "escalated: lobby-37", LastTransitionTime: at(2 * time.Minute)},
			{Type: "Escalated", Status: "True", Reason: "RestartIntensityExceeded", Message: fleetMsg, LastTransitionTime: at(2 * time.Minute)},
			{Type: "Stalled", Status: "True", Reason: "RestartIntensityExceeded", Message: fleetMsg, LastTransitionTime: at(2 * time.Minute)},
		}}
	must(t, k8s.Status().Update(context.Background(), f))
	for n := range 50 {
		name := fmt.Sprintf("lobby-%d", n)
		if n == 37 {
			machine(t, ns, name, f, n, nil, escalated(name, "lobby-37-11", "VendingFleet lobby"))
			pod(t, ns, name, "lobby-37-11", failedPod(10, "Error", 8*time.Second))
		} else {
			machine(t, ns, name, f, n, nil, healthy(name+"-1"))
			pod(t, ns, name, name+"-1", runningPod())
		}
		claim(t, ns, name)
	}
}

// Done-when of issue 12: a fleet of 50 with one escalated machine shows that machine first and
// says why, in one screen.
func TestStatusShowsTheEscalatedMachineOfAFleetOf50FirstAndWhy(t *testing.T) {
	ns := namespace(t, "status-lobby")
	lobby(t, ns)

	out := mustVend(t, "-n", ns, "status", "fleet", "lobby")
	golden(t, "status-fleet-lobby", out)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) > 24 {
		t.Errorf("%d lines: a fleet of 50 must fit one screen (24 lines)", len(lines))
	}
	// The header, the fleet, then the escalated machine with its reason and message.
	if len(lines) < 3 || !strings.Contains(lines[1], "VendingFleet/lobby") || !strings.Contains(lines[2], "VendingMachine/lobby-37") ||
		!strings.Contains(lines[2], "RestartIntensityExceeded: OutOfCoffeeBeans after 10 restarts") {
		t.Errorf("the escalated machine must come right after its fleet, with why:\n%s", out)
	}
	if !strings.Contains(out, "49 machines Ready") {
		t.Errorf("the healthy machines must be one line:\n%s", out)
	}

	// The same without arguments: everything in the namespace.
	if all := mustVend(t, "-n", ns, "status"); all != out {
		t.Errorf("status of the namespace differs from status of its only fleet:\n%s", all)
	}
	// --all expands every machine, still the escalated one first.
	expanded := mustVend(t, "-n", ns, "status", "fleet/lobby", "--all")
	if n := strings.Count(expanded, "VendingMachine/"); n != 50 {
		t.Errorf("--all shows %d machines, want 50", n)
	}
	if i, j := strings.Index(expanded, "VendingMachine/lobby-37 "), strings.Index(expanded, "VendingMachine/lobby-0 "); i > j {
		t.Errorf("--all must still put the escalated machine first:\n%s", expanded)
	}
	if i, j := strings.Index(expanded, "VendingMachine/lobby-2 "), strings.Index(expanded, "VendingMachine/lobby-10 "); i > j {
		t.Errorf("healthy machines must be in index order (lobby-2 before lobby-10)")
	}
}

// Problems first, in order: stalled (escalated, stopped), not ready (backing off, paused),
// degraded, then the healthy ones in one line.
func TestStatusOrdersProblemsByHowBadTheyAre(t *testing.T) {
	ns := namespace(t, "status-order")
	backingOff := backingOffStatus()
	degraded := healthy("mocha-1")
	degraded.Phase = vendingv1alpha1.PhaseDegraded
	degraded.Conditions[2] = metav1.Condition{Type: "Degraded", Status: "True", Reason: "OutOfMilk",
		Message: "out of milk: serving beverages without milk only", LastTransitionTime: at(10 * time.Minute)}
	stopped := escalated("ristretto", "ristretto-2", "humans")
	stopped.Phase = vendingv1alpha1.PhaseStopped
	stopped.LastFailure.Action, stopped.LastFailure.DecisionReason = vendingv1alpha1.ActionStop, "DeciderStop"
	stopped.LastFailure.DecisionMessage = "the decider stops the machine on OutOfCoffeeBeans"
	stopped.Conditions = []metav1.Condition{
		{Type: "Ready", Status: "False", Reason: "PodFailed", Message: "pod ristretto-2 failed", LastTransitionTime: at(5 * time.Minute)},
		{Type: "Progressing", Status: "False", Reason: "Stopped", Message: "the decider stops the machine on OutOfCoffeeBeans", LastTransitionTime: at(5 * time.Minute)},
		{Type: "Stalled", Status: "True", Reason: "Stopped", Message: "the decider stops the machine on OutOfCoffeeBeans", LastTransitionTime: at(5 * time.Minute)},
	}

	// Created in an order that is not the answer.
	machine(t, ns, "americano", nil, 0, nil, healthy("americano-1"))
	machine(t, ns, "mocha", nil, 0, nil, degraded)
	machine(t, ns, "latte", nil, 0, nil, backingOff)
	machine(t, ns, "ristretto", nil, 0, nil, stopped)
	machine(t, ns, "espresso", nil, 0, nil, escalated("espresso", "espresso-11", "humans"))
	paused := healthy("paused-1")
	paused.Phase = vendingv1alpha1.PhasePaused
	paused.Conditions[1] = metav1.Condition{Type: "Progressing", Status: "False", Reason: "Paused",
		Message: "spec.paused: the supervisor does not act", LastTransitionTime: at(20 * time.Minute)}
	machine(t, ns, "paused", nil, 0, func(vm *vendingv1alpha1.VendingMachine) { vm.Spec.Paused = true }, paused)
	machine(t, ns, "cortado", nil, 0, nil, healthy("cortado-1"))
	// The kubelet's part: the escalated and the backing-off machines' failed pods, the healthy
	// ones' running pods, every claim; the stopped machine's failed pod was deleted by someone.
	pod(t, ns, "espresso", "espresso-11", failedPod(10, "Error", 8*time.Second))
	pod(t, ns, "latte", "latte-3", failedPod(137, "OOMKilled", 5*time.Second))
	for _, m := range []string{"americano", "mocha", "paused", "cortado"} {
		pod(t, ns, m, m+"-1", runningPod())
	}
	for _, m := range []string{"americano", "mocha", "latte", "ristretto", "espresso", "paused", "cortado"} {
		claim(t, ns, m)
	}

	out := mustVend(t, "-n", ns, "status")
	golden(t, "status-order", out)
	order := []string{"VendingMachine/espresso", "VendingMachine/ristretto", "VendingMachine/latte", "VendingMachine/paused",
		"VendingMachine/mocha", "2 machines Ready (without a fleet)"}
	last := -1
	for _, want := range order {
		i := strings.Index(out, want)
		if i < last {
			t.Errorf("%s is out of order:\n%s", want, out)
		}
		last = i
	}
	if !regexp.MustCompile(`Pod/ristretto-2 +- +Missing`).MatchString(out) {
		t.Errorf("a machine's missing pod must say so:\n%s", out)
	}
	if all := mustVend(t, "status", "-A"); !strings.Contains(all, "NAMESPACE") || !regexp.MustCompile(`(?m)^status-order +VendingMachine/espresso `).MatchString(all) {
		t.Errorf("-A must name each line's namespace:\n%s", all)
	}

	// One machine, expanded even when healthy; -o yaml prints the objects it was made from.
	golden(t, "status-machine-americano", mustVend(t, "-n", ns, "status", "machine", "americano"))
	golden(t, "status-order-all", mustVend(t, "-n", ns, "status", "--all"))
	var list struct {
		Kind  string `json:"kind"`
		Items []struct {
			Kind string `json:"kind"`
		} `json:"items"`
	}
	must(t, json.Unmarshal([]byte(mustVend(t, "-n", ns, "status", "espresso", "-o", "json")), &list))
	if list.Kind != "List" || len(list.Items) != 3 || list.Items[0].Kind != "VendingMachine" ||
		list.Items[1].Kind != "Pod" || list.Items[2].Kind != "PersistentVolumeClaim" {
		t.Errorf("-o json: %+v", list)
	}
}

// Colors: red for stalled, yellow for not ready and degraded, green for healthy, only when
// asked for (the tests' output is a pipe, as `kubectl vend status | less` is).
func TestStatusColors(t *testing.T) {
	ns := namespace(t, "status-color")
	machine(t, ns, "espresso", nil, 0, nil, escalated("espresso", "espresso-11", "humans"))
	machine(t, ns, "latte", nil, 0, nil, backingOffStatus())
	machine(t, ns, "americano", nil, 0, nil, healthy("americano-1"))

	plain := mustVend(t, "-n", ns, "status")
	if strings.Contains(plain, "\x1b[") {
		t.Errorf("auto into a pipe must not color:\n%q", plain)
	}
	colored := mustVend(t, "-n", ns, "status", "--color=always")
	for _, want := range []string{ansiRed + "VendingMachine/espresso" + ansiReset, ansiYellow + "VendingMachine/latte" + ansiReset,
		ansiGreen + "1 machine Ready (without a fleet)" + ansiReset} {
		if !strings.Contains(colored, want) {
			t.Errorf("--color=always: %q missing in\n%q", want, colored)
		}
	}
	// Colors never move a column: without the escape codes it is the plain output.
	if stripped := stripANSI(colored); stripped != plain {
		t.Errorf("colored output, uncolored, differs from the plain one:\n%s\n%s", stripped, plain)
	}
	if never := mustVend(t, "-n", ns, "status", "--color=never"); never != plain {
		t.Errorf("--color=never differs from plain")
	}
}

func stripANSI(s string) string {
	for _, code := range []string{ansiRed, ansiYellow, ansiGreen, ansiBold, ansiReset} {
		s = strings.ReplaceAll(s, code, "")
	}
	return s
}

// Like kubectl get, a kind alone lists that kind: `status fleet` shows the fleets (not a machine
// named "fleet", which `status machine fleet` shows); -A with a name is refused with what to do.
func TestStatusOfAKindAloneAndOfANameAcrossNamespaces(t *testing.T) {
	ns := namespace(t, "status-kinds")
	f := &vendingv1alpha1.VendingFleet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "atrium"},
		Spec: vendingv1alpha1.VendingFleetSpec{Replicas: ptr.To[int32](1)}}
	must(t, k8s.Create(context.Background(), f))
	machine(t, ns, "atrium-0", f, 0, nil, healthy("atrium-0-1"))
	machine(t, ns, "fleet", nil, 0, nil, healthy("fleet-1"))
	machine(t, ns, "mocha", nil, 0, nil, healthy("mocha-1"))

	for _, args := range [][]string{{"-n", ns, "status", "fleet"}, {"-n", ns, "status", "vendingfleets"}, {"status", "-A", "fleets"}} {
		out := mustVend(t, args...)
		if !strings.Contains(out, "VendingFleet/atrium") || !strings.Contains(out, "└─ 1 machine Ready") ||
			strings.Contains(out, "VendingMachine/fleet") || strings.Contains(out, "mocha") || strings.Contains(out, "without a fleet") {
			t.Errorf("kubectl vend %v must show the fleets only:\n%s", args, out)
		}
	}
	if out := mustVend(t, "-n", ns, "status", "machines", "--all"); strings.Contains(out, "VendingFleet/") ||
		!strings.Contains(out, "VendingMachine/fleet") || !strings.Contains(out, "VendingMachine/atrium-0") {
		t.Errorf("status machines must show every machine and no fleet:\n%s", out)
	}
	if out := mustVend(t, "-n", ns, "status", "machine", "fleet"); !strings.Contains(out, "VendingMachine/fleet ") ||
		strings.Contains(out, "atrium") {
		t.Errorf("status machine fleet must show the machine named fleet:\n%s", out)
	}
	for _, args := range [][]string{{"status", "-A", "mocha"}, {"status", "-A", "fleet", "atrium"}} {
		_, err := vend(t, args...)
		if err == nil || !strings.Contains(err.Error(), "a name needs a namespace: kubectl vend status -n NAMESPACE") {
			t.Errorf("kubectl vend %v: %v", args, err)
		}
	}
}
