package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/fleet"
)

const corruptFile = "/data/00000000000000000001.seg"

// corruptTermination is what the vending pod writes when its log fails a check before the tail.
func corruptTermination(offset int64, sequence uint64) string {
	b, _ := json.Marshal(contract.TerminationMessage{Reason: contract.ReasonCorruptLog, ExitCode: contract.ExitCorruptLog,
		Message: "eventlog: crc mismatch", File: corruptFile, Offset: offset, Sequence: sequence, Time: time.Now()})
	return string(b)
}

// eventsAbout lists the notes of the events with the given reason about an object.
func eventsAbout(g Gomega, ns, kind, name, reason string) []string {
	list := &eventsv1.EventList{}
	g.Expect(k8sClient.List(context.Background(), list, client.InNamespace(ns))).To(Succeed())
	var out []string
	for _, e := range list.Items {
		if e.Regarding.Kind == kind && e.Regarding.Name == name && e.Reason == reason {
			out = append(out, e.Note)
		}
	}
	return out
}

func getClaim(g Gomega, ns, name string) *corev1.PersistentVolumeClaim {
	pvc := &corev1.PersistentVolumeClaim{}
	g.Expect(k8sClient.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, pvc)).To(Succeed())
	return pvc
}

func claimExists(ns, name string) bool {
	return k8sClient.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &corev1.PersistentVolumeClaim{}) == nil
}

// By default a fleet hands a machine with a corrupt log to humans: its claim stays as it is, it
// does not start on a new log, no machine is reset (not even under AllForOne), and kubectl
// describe on the machine and the fleet says which claim, file and offset, and what to do. Each
// occurrence is announced once. Opting in afterwards quarantines the claim as before.
func TestFleetEscalatesACorruptLogToHumansByDefault(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	f := createFleet(t, ns, 2, func(f *vendingv1alpha1.VendingFleet) { f.Spec.Strategy = vendingv1alpha1.AllForOne })
	runFleet(g, f, 2)
	g.Expect(getFleet(g, f).Spec.CorruptLog.Policy).To(Equal(vendingv1alpha1.CorruptLogEscalate), "the API's default")
	claimBefore := getClaim(g, ns, "f-0-log")

	kubeletFail(g, waitPod(g, fleetMachine(ns, 0), 0), contract.ExitCorruptLog, corruptTermination(4096, 41))

	wantSaid := []string{"claim f-0-log", corruptFile, "offset 4096", "last durable sequence: 41"}
	g.Eventually(func(g Gomega) {
		vm := getMachine(g, fleetMachine(ns, 0))
		c := condition(vm, vendingv1alpha1.ConditionEscalated)
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
		g.Expect(c.Reason).To(Equal(ReasonCorruptLog))
		g.Expect(c.ObservedGeneration).To(Equal(vm.Generation))
		for _, want := range append(wantSaid, "VendingFleet f escalated it to humans", "vendinglog dump", "StartNewLog",
			annotationReset) {
			g.Expect(c.Message).To(ContainSubstring(want))
		}
		g.Expect(vm.Status.LastFailure.File).To(Equal(corruptFile))
		g.Expect(vm.Status.LastFailure.Offset).To(BeEquivalentTo(4096))
		g.Expect(vm.Status.LogClaim).To(Equal("f-0-log"))

		got := getFleet(g, f)
		fc := fleetCondition(got, vendingv1alpha1.ConditionEscalated)
		g.Expect(fc.Status).To(Equal(metav1.ConditionTrue))
		g.Expect(fc.Reason).To(Equal(ReasonCorruptLog))
		for _, want := range append(wantSaid, "machine f-0", "vendinglog dump", "StartNewLog") {
			g.Expect(fc.Message).To(ContainSubstring(want))
		}
		g.Expect(fleetCondition(got, vendingv1alpha1.ConditionDegraded).Message).To(ContainSubstring("f-0"))
		g.Expect(got.Status.EscalationCount).To(BeZero(), "the fleet spent no reset on it")

		g.Expect(eventsAbout(g, ns, "VendingFleet", "f", ReasonCorruptLog)).To(HaveLen(1))
		g.Expect(eventsAbout(g, ns, "VendingMachine", "f-0", ReasonCorruptLog)).To(HaveLen(1))
	}).Should(Succeed())
	// What kubectl describe shows, for a reader of go test -v.
	t.Logf("machine Escalated: %s", condition(getMachine(g, fleetMachine(ns, 0)), vendingv1alpha1.ConditionEscalated).Message)
	t.Logf("fleet Escalated: %s", fleetCondition(getFleet(g, f), vendingv1alpha1.ConditionEscalated).Message)
	t.Logf("events: %q", append(eventsAbout(g, ns, "VendingFleet", "f", ReasonCorruptLog),
		eventsAbout(g, ns, "VendingMachine", "f-0", ReasonCorruptLog)...))
	for _, note := range append(eventsAbout(g, ns, "VendingFleet", "f", ReasonCorruptLog),
		eventsAbout(g, ns, "VendingMachine", "f-0", ReasonCorruptLog)...) {
		for _, want := range wantSaid {
			g.Expect(note).To(ContainSubstring(want))
		}
	}

	// Nothing moves: no new pod on any machine, no new log, the claim as it was.
	g.Consistently(func(g Gomega) {
		g.Expect(podExists(ns, "f-0-1")).To(BeFalse(), "the corrupt machine is not reset")
		g.Expect(podExists(ns, "f-1-1")).To(BeFalse(), "AllForOne does not reset the others for a log held for humans")
		g.Expect(claimExists(ns, "f-0-log-1")).To(BeFalse(), "no new log")
		vm := getMachine(g, fleetMachine(ns, 0))
		g.Expect(vm.Annotations).NotTo(HaveKey(annotationLogGeneration))
		g.Expect(vm.Status.LogClaim).To(Equal("f-0-log"))
		claim := getClaim(g, ns, "f-0-log")
		g.Expect(claim.Labels).To(Equal(claimBefore.Labels), "not quarantined")
		g.Expect(claim.Annotations).NotTo(HaveKey(annotationQuarantineReason))
		g.Expect(claim.OwnerReferences).To(Equal(claimBefore.OwnerReferences))
	}, 2*time.Second).Should(Succeed())
	g.Expect(podExists(ns, "f-0-0")).To(BeTrue(), "the failed pod stays, as evidence")
	g.Expect(eventsAbout(g, ns, "VendingFleet", "f", ReasonCorruptLog)).To(HaveLen(1), "one event per occurrence")
	g.Expect(eventsAbout(g, ns, "VendingMachine", "f-0", ReasonCorruptLog)).To(HaveLen(1), "one event per occurrence")
	g.Expect(fleetEventReasons(g, f)).NotTo(ContainElement("Quarantined"))
	g.Expect(fleetEventReasons(g, f)).NotTo(ContainElement("Reset"))

	// A human resets the machine (say, after restoring the log): it starts on the same claim.
	// It fails again: a new occurrence, announced once more.
	vm := getMachine(g, fleetMachine(ns, 0))
	vm.Annotations[annotationReset] = "restored-from-backup"
	g.Expect(k8sClient.Update(ctx, vm)).To(Succeed())
	again := waitPod(g, fleetMachine(ns, 0), 1)
	g.Expect(again.Spec.Volumes[0].PersistentVolumeClaim.ClaimName).To(Equal("f-0-log"), "a reset reopens the same log")
	kubeletFail(g, again, contract.ExitCorruptLog, corruptTermination(8192, 0))
	g.Eventually(func(g Gomega) {
		notes := eventsAbout(g, ns, "VendingFleet", "f", ReasonCorruptLog)
		g.Expect(notes).To(HaveLen(2))
		g.Expect(strings.Join(notes, "\n")).To(ContainSubstring("offset 8192"))
		c := fleetCondition(getFleet(g, f), vendingv1alpha1.ConditionEscalated)
		g.Expect(c.Reason).To(Equal(ReasonCorruptLog))
		g.Expect(c.Message).To(ContainSubstring("offset 8192"))
		g.Expect(c.Message).To(ContainSubstring("last durable sequence: not reported"))
	}).Should(Succeed())
	g.Expect(podExists(ns, "f-0-2")).To(BeFalse())

	// The opt-in: the fleet quarantines the claim and starts the machine on a new log.
	got := getFleet(g, f)
	patch := client.MergeFrom(got.DeepCopy())
	got.Spec.CorruptLog.Policy = vendingv1alpha1.CorruptLogStartNewLog
	g.Expect(k8sClient.Patch(ctx, got, patch)).To(Succeed())
	next := waitPod(g, fleetMachine(ns, 0), 2)
	g.Expect(next.Spec.Volumes[0].PersistentVolumeClaim.ClaimName).To(Equal("f-0-log-1"))
	g.Expect(getClaim(g, ns, "f-0-log").Labels).To(HaveKeyWithValue(labelQuarantined, "f-0"))
	g.Eventually(func(g Gomega) {
		g.Expect(fleetEventReasons(g, f)).To(ContainElement("Quarantined"))
		g.Expect(getMachine(g, fleetMachine(ns, 0)).Annotations).NotTo(HaveKey(annotationCorruptLogHeld))
	}).Should(Succeed())
}

// A standalone machine has no fleet to start it on a new log: it escalates a corrupt log to
// humans, keeps its failed pod and its claim, and says where the damage is and what to do.
func TestStandaloneMachineEscalatesACorruptLogWithWhereAndWhatNext(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	vm := createMachine(t, ns, "solo", fastBackoff(0))
	kubeletRun(g, waitPod(g, vm, 0))
	kubeletFail(g, waitPod(g, vm, 0), contract.ExitCorruptLog, corruptTermination(512, 7))

	g.Eventually(func(g Gomega) {
		got := getMachine(g, vm)
		c := condition(got, vendingv1alpha1.ConditionEscalated)
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
		g.Expect(c.Reason).To(Equal(ReasonCorruptLog))
		for _, want := range []string{"claim solo-log", corruptFile, "offset 512", "last durable sequence: 7",
			"Escalated to humans", "vendinglog dump", annotationReset} {
			g.Expect(c.Message).To(ContainSubstring(want))
		}
		g.Expect(c.Message).NotTo(ContainSubstring("StartNewLog"), "no such opt-in outside a fleet")
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseEscalated))
		notes := eventsAbout(g, ns, "VendingMachine", "solo", "Escalated")
		g.Expect(notes).To(HaveLen(1))
		g.Expect(notes[0]).To(ContainSubstring("claim solo-log"))
		g.Expect(notes[0]).To(ContainSubstring("offset 512"))
	}).Should(Succeed())
	g.Consistently(func() bool { return podExists(ns, "solo-1") }, time.Second).Should(BeFalse())
	g.Expect(claimExists(ns, "solo-log-1")).To(BeFalse())
}

// The fleet's condition names every held machine, the first few with their whole message, so
// that kubectl describe stays readable when many logs are corrupt at once.
func TestHeldTextNamesEveryMachine(t *testing.T) {
	hs := make([]fleet.Hold, 0, 5)
	for i := range 5 {
		name := fmt.Sprintf("f-%d", i)
		hs = append(hs, fleet.Hold{Index: i, Name: name, Message: "machine " + name + " cannot open its event log."})
	}
	got := heldText(hs)
	for i := range 3 {
		if !strings.Contains(got, fmt.Sprintf("machine f-%d cannot open", i)) {
			t.Errorf("%q: want f-%d's message in full", got, i)
		}
	}
	if !strings.Contains(got, "Also with a corrupt log: f-3, f-4.") {
		t.Errorf("%q: want the rest by name", got)
	}
}
