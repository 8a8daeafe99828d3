package controller

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
)

func createFleet(t *testing.T, ns string, replicas int32, mutate func(*vendingv1alpha1.VendingFleet)) *vendingv1alpha1.VendingFleet {
	t.Helper()
	f := &vendingv1alpha1.VendingFleet{ObjectMeta: metav1.ObjectMeta{Name: "f", Namespace: ns}}
	f.Spec.Replicas = ptr.To(replicas)
	f.Spec.Template.Spec.Supervision.Backoff.Initial = &metav1.Duration{}
	f.Spec.Template.Spec.Supervision.Backoff.Max = &metav1.Duration{}
	if mutate != nil {
		mutate(f)
	}
	if err := k8sClient.Create(context.Background(), f); err != nil {
		t.Fatalf("creating fleet: %v", err)
	}
	return f
}

func getFleet(g Gomega, f *vendingv1alpha1.VendingFleet) *vendingv1alpha1.VendingFleet {
	out := &vendingv1alpha1.VendingFleet{}
	g.Expect(k8sClient.Get(context.Background(), client.ObjectKeyFromObject(f), out)).To(Succeed())
	return out
}

func fleetMachine(ns string, n int) *vendingv1alpha1.VendingMachine {
	return &vendingv1alpha1.VendingMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("f-%d", n)}}
}

// runFleet plays the kubelet for incarnation 0 of every machine, and waits for the fleet to be
// Ready.
func runFleet(g Gomega, f *vendingv1alpha1.VendingFleet, replicas int) {
	for n := range replicas {
		kubeletRun(g, waitPod(g, fleetMachine(f.Namespace, n), 0))
	}
	g.Eventually(func(g Gomega) {
		got := getFleet(g, f)
		g.Expect(fleetCondition(got, vendingv1alpha1.ConditionReady).Status).To(Equal(metav1.ConditionTrue))
	}).Should(Succeed())
}

func fleetCondition(f *vendingv1alpha1.VendingFleet, t string) metav1.Condition {
	for _, c := range f.Status.Conditions {
		if c.Type == t {
			return c
		}
	}
	return metav1.Condition{}
}

func podExists(ns, name string) bool {
	return k8sClient.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &corev1.Pod{}) == nil
}

func fleetEventReasons(g Gomega, f *vendingv1alpha1.VendingFleet) []string {
	list := &eventsv1.EventList{}
	g.Expect(k8sClient.List(context.Background(), list, client.InNamespace(f.Namespace))).To(Succeed())
	var out []string
	for _, e := range list.Items {
		if e.Regarding.Kind == "VendingFleet" && e.Regarding.Name == f.Name {
			out = append(out, e.Reason)
		}
	}
	return out
}

func TestFleetCreatesOwnedMachinesAndBecomesReady(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	f := createFleet(t, ns, 3, nil)
	for n := range 3 {
		vm := &vendingv1alpha1.VendingMachine{}
		g.Eventually(func() error {
			return k8sClient.Get(context.Background(), client.ObjectKeyFromObject(fleetMachine(ns, n)), vm)
		}).
			Should(Succeed())
		g.Expect(metav1.GetControllerOf(vm).Kind).To(Equal("VendingFleet"))
		g.Expect(vm.Labels).To(HaveKeyWithValue(LabelFleet, "f"))
		pod := waitPod(g, vm, 0)
		g.Expect(pod.Labels).To(HaveKeyWithValue(LabelFleet, "f"), "the spread constraint selects pods by fleet")
		g.Expect(pod.Spec.TopologySpreadConstraints).To(HaveLen(1))
		g.Expect(pod.Spec.TopologySpreadConstraints[0].TopologyKey).To(Equal(corev1.LabelHostname))
	}
	pdb := &policyv1.PodDisruptionBudget{}
	g.Eventually(func() error {
		return k8sClient.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "f"}, pdb)
	}).Should(Succeed())
	g.Expect(pdb.Spec.MinAvailable.IntValue()).To(Equal(2))

	runFleet(g, f, 3)
	got := getFleet(g, f)
	g.Expect(got.Status.Ready).To(Equal("3/3"))
	g.Expect(got.Status.RestartBudget).To(BeEquivalentTo(40), "10 restarts per machine window × (3 fleet resets + 1)")
	g.Expect(got.Status.TotalCoins).To(BeEquivalentTo(3*7), "the sum of what the machines report")
	g.Expect(fleetCondition(got, vendingv1alpha1.ConditionEscalated).Status).To(Equal(metav1.ConditionFalse))
	g.Expect(fleetCondition(got, vendingv1alpha1.ConditionProgressing).Reason).To(Equal(ReasonUpToDate))
	g.Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
}

// One machine escalates; the fleet's strategy decides which machines are reset.
func TestFleetStrategies(t *testing.T) {
	tests := []struct {
		strategy vendingv1alpha1.FleetStrategy
		reset    []bool // per machine: gets a new pod
	}{
		{vendingv1alpha1.OneForOne, []bool{false, true, false}},
		{vendingv1alpha1.AllForOne, []bool{true, true, true}},
		{vendingv1alpha1.RestForOne, []bool{false, true, true}},
	}
	for _, tt := range tests {
		t.Run(string(tt.strategy), func(t *testing.T) {
			g := NewWithT(t)
			ns := newNamespace(t)
			f := createFleet(t, ns, 3, func(f *vendingv1alpha1.VendingFleet) { f.Spec.Strategy = tt.strategy })
			runFleet(g, f, 3)

			kubeletFail(g, waitPod(g, fleetMachine(ns, 1), 0), 2, failureMessage("Panic")) // not in the decider: escalates
			for n, reset := range tt.reset {
				if reset {
					kubeletRun(g, waitPod(g, fleetMachine(ns, n), 1))
				}
			}
			g.Consistently(func(g Gomega) {
				for n, want := range tt.reset {
					g.Expect(podExists(ns, fmt.Sprintf("f-%d-1", n))).To(Equal(want), "machine f-%d reset", n)
				}
			}, 2*time.Second).Should(Succeed())
			g.Eventually(func(g Gomega) {
				got := getFleet(g, f)
				g.Expect(got.Status.EscalationCount).To(BeEquivalentTo(1))
				g.Expect(got.Status.Escalations[0].Machine).To(Equal("f-1"))
				g.Expect(got.Status.Escalations[0].Reason).To(Equal("Panic"))
				g.Expect(fleetCondition(got, vendingv1alpha1.ConditionReady).Status).To(Equal(metav1.ConditionTrue))
				g.Expect(fleetCondition(got, vendingv1alpha1.ConditionEscalated).Status).To(Equal(metav1.ConditionFalse))
				vm := getMachine(g, fleetMachine(ns, 1))
				g.Expect(condition(vm, vendingv1alpha1.ConditionEscalated).Status).To(Equal(metav1.ConditionFalse))
			}).Should(Succeed())
			g.Expect(fleetEventReasons(g, f)).To(ContainElement("Reset"))
		})
	}
}

// Past its intensity the fleet escalates to humans: the machine stays escalated, nothing is
// reset, a Warning event and a condition say what to look at.
func TestFleetEscalatesPastItsIntensity(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	f := createFleet(t, ns, 2, func(f *vendingv1alpha1.VendingFleet) { f.Spec.Intensity.MaxEscalations = ptr.To[int32](1) })
	runFleet(g, f, 2)

	kubeletFail(g, waitPod(g, fleetMachine(ns, 0), 0), 2, failureMessage("Panic"))
	kubeletRun(g, waitPod(g, fleetMachine(ns, 0), 1)) // the fleet's reset: the one escalation it absorbs
	g.Eventually(func(g Gomega) {
		g.Expect(condition(getMachine(g, fleetMachine(ns, 0)), vendingv1alpha1.ConditionReady).Status).To(Equal(metav1.ConditionTrue))
	}).Should(Succeed())

	kubeletFail(g, waitPod(g, fleetMachine(ns, 0), 1), 2, failureMessage("Panic"))
	g.Eventually(func(g Gomega) {
		got := getFleet(g, f)
		c := fleetCondition(got, vendingv1alpha1.ConditionEscalated)
		g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
		g.Expect(c.Reason).To(Equal(ReasonIntensityExceeded))
		g.Expect(c.Message).To(ContainSubstring("f-0 (Panic)"))
		g.Expect(fleetCondition(got, vendingv1alpha1.ConditionDegraded).Reason).To(Equal(ReasonMachinesEscalated))
	}).Should(Succeed())
	g.Consistently(func() bool { return podExists(ns, "f-0-2") }, 2*time.Second).Should(BeFalse(), "no restart storm")
	g.Expect(condition(getMachine(g, fleetMachine(ns, 0)), vendingv1alpha1.ConditionEscalated).Status).To(Equal(metav1.ConditionTrue))
	reasons := fleetEventReasons(g, f)
	g.Expect(strings.Count(strings.Join(reasons, ","), "Escalated")).To(Equal(1), "one event per transition: %v", reasons)
}

// With the opt-in (spec.corruptLog.policy StartNewLog), a corrupt log is never deleted: the
// claim is set aside and the machine starts on a new log.
func TestFleetQuarantinesACorruptLog(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	f := createFleet(t, ns, 1, func(f *vendingv1alpha1.VendingFleet) {
		f.Spec.CorruptLog.Policy = vendingv1alpha1.CorruptLogStartNewLog
	})
	runFleet(g, f, 1)

	kubeletFail(g, waitPod(g, fleetMachine(ns, 0), 0), contract.ExitCorruptLog, failureMessage(contract.ReasonCorruptLog))
	next := waitPod(g, fleetMachine(ns, 0), 1)
	g.Expect(next.Spec.Volumes[0].PersistentVolumeClaim.ClaimName).To(Equal("f-0-log-1"))

	old := &corev1.PersistentVolumeClaim{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "f-0-log"}, old)).To(Succeed())
	g.Expect(old.Labels).To(HaveKeyWithValue(labelQuarantined, "f-0"))
	g.Expect(old.Annotations[annotationQuarantineReason]).To(ContainSubstring("CorruptLog"))
	g.Expect(old.OwnerReferences).To(BeEmpty())
	g.Eventually(func() error {
		return k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "f-0-log-1"}, &corev1.PersistentVolumeClaim{})
	}).Should(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(getMachine(g, fleetMachine(ns, 0)).Status.LogClaim).To(Equal("f-0-log-1"))
	}).Should(Succeed())
	g.Expect(fleetEventReasons(g, f)).To(ContainElement("Quarantined"))
}

// Scaling down deletes the highest machines; their retained claims stay, and scaling up again
// resumes the same logs.
func TestFleetScalesAndKeepsClaims(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	f := createFleet(t, ns, 3, nil)
	runFleet(g, f, 3)

	scale := func(n int32) {
		got := getFleet(g, f)
		patch := client.MergeFrom(got.DeepCopy())
		got.Spec.Replicas = ptr.To(n)
		g.Expect(k8sClient.Patch(ctx, got, patch)).To(Succeed())
	}
	scale(1)
	g.Eventually(func(g Gomega) {
		list := &vendingv1alpha1.VendingMachineList{}
		g.Expect(k8sClient.List(ctx, list, client.InNamespace(ns))).To(Succeed())
		g.Expect(list.Items).To(HaveLen(1))
		g.Expect(list.Items[0].Name).To(Equal("f-0"))
	}).Should(Succeed())
	for _, name := range []string{"f-1-log", "f-2-log"} {
		g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &corev1.PersistentVolumeClaim{})).To(Succeed(),
			"claim %s is retained", name)
	}
	scale(2)
	pod := waitPod(g, fleetMachine(ns, 1), 0)
	g.Expect(pod.Spec.Volumes[0].PersistentVolumeClaim.ClaimName).To(Equal("f-1-log"), "the machine resumes its log")
}

// A template change rolls one machine at a time, each waiting for the one before to be Ready
// on the new template; a machine that does not become Ready stops the rollout.
func TestFleetRollsOneMachineAtATime(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	f := createFleet(t, ns, 3, func(f *vendingv1alpha1.VendingFleet) {
		f.Spec.RolloutDeadline = &metav1.Duration{Duration: 3 * time.Second}
	})
	runFleet(g, f, 3)

	got := getFleet(g, f)
	patch := client.MergeFrom(got.DeepCopy())
	got.Spec.Template.Spec.Menu = []vendingv1alpha1.Beverage{{Name: "Espresso", Price: 3}}
	g.Expect(k8sClient.Patch(ctx, got, patch)).To(Succeed())

	for n := range 3 {
		pod := waitPod(g, fleetMachine(ns, n), 1)
		g.Expect(pod.Spec.Containers[0].Args).To(ContainElement("--menu=Espresso=3"))
		for later := n + 1; later < 3; later++ {
			g.Consistently(func() bool { return podExists(ns, fmt.Sprintf("f-%d-1", later)) }, time.Second).
				Should(BeFalse(), "machine f-%d rolled before f-%d was Ready", later, n)
		}
		kubeletRun(g, pod)
	}
	g.Eventually(func(g Gomega) {
		got := getFleet(g, f)
		g.Expect(got.Status.UpdatedMachines).To(BeEquivalentTo(3))
		g.Expect(fleetCondition(got, vendingv1alpha1.ConditionProgressing).Reason).To(Equal(ReasonUpToDate))
	}).Should(Succeed())

	// A second change whose first machine never becomes Ready: the rollout stops.
	got = getFleet(g, f)
	patch = client.MergeFrom(got.DeepCopy())
	got.Spec.Template.Spec.Menu = []vendingv1alpha1.Beverage{{Name: "Espresso", Price: 4}}
	g.Expect(k8sClient.Patch(ctx, got, patch)).To(Succeed())
	waitPod(g, fleetMachine(ns, 0), 2)
	g.Eventually(func(g Gomega) {
		c := fleetCondition(getFleet(g, f), vendingv1alpha1.ConditionProgressing)
		g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(c.Reason).To(Equal(ReasonRolloutStalled))
		g.Expect(c.Message).To(ContainSubstring("f-0"))
	}).Should(Succeed())
	g.Expect(podExists(ns, "f-1-2")).To(BeFalse(), "a stalled rollout rolls nothing more")
	g.Eventually(func(g Gomega) { // events are sent after the status write, asynchronously
		g.Expect(fleetEventReasons(g, f)).To(ContainElement(ReasonRolloutStalled))
	}).Should(Succeed())
}

// A human paused one machine of the fleet; rolling the fleet's template to it does not undo
// that (it did: the roll replaced the whole spec).
func TestFleetRollKeepsAMachinesPause(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	f := createFleet(t, ns, 1, nil)
	runFleet(g, f, 1)
	patchMachine(g, fleetMachine(ns, 0), `{"spec":{"paused":true}}`)

	got := getFleet(g, f)
	patch := client.MergeFrom(got.DeepCopy())
	got.Spec.Template.Spec.Menu = []vendingv1alpha1.Beverage{{Name: "Espresso", Price: 3}}
	g.Expect(k8sClient.Patch(ctx, got, patch)).To(Succeed())
	g.Eventually(func(g Gomega) {
		vm := getMachine(g, fleetMachine(ns, 0))
		g.Expect(vm.Spec.Menu).To(Equal(got.Spec.Template.Spec.Menu), "rolled")
		g.Expect(vm.Spec.Paused).To(BeTrue(), "the roll unpaused a machine a human paused")
	}).Should(Succeed())
}

func TestBadFleetsAreRejected(t *testing.T) {
	ns := newNamespace(t)
	tests := []struct {
		name    string
		mutate  func(*vendingv1alpha1.VendingFleet)
		message string
	}{
		{"negative replicas", func(f *vendingv1alpha1.VendingFleet) { f.Spec.Replicas = ptr.To[int32](-1) }, "spec.replicas"},
		{"unknown strategy", func(f *vendingv1alpha1.VendingFleet) { f.Spec.Strategy = "SomeForOne" }, "spec.strategy"},
		{"zero window", func(f *vendingv1alpha1.VendingFleet) {
			f.Spec.Intensity.Window = &metav1.Duration{}
		}, "intensity.window must be greater than 0s"},
		{"unknown corrupt-log policy", func(f *vendingv1alpha1.VendingFleet) { f.Spec.CorruptLog.Policy = "Delete" },
			`spec.corruptLog.policy: Unsupported value: "Delete": supported values: "Escalate", "StartNewLog"`},
		{"a template with a free beverage", func(f *vendingv1alpha1.VendingFleet) {
			f.Spec.Template.Spec.Menu = []vendingv1alpha1.Beverage{{Name: "Espresso", Price: 0}}
		}, "spec.template.spec.menu[0].price"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &vendingv1alpha1.VendingFleet{ObjectMeta: metav1.ObjectMeta{Name: "bad", Namespace: ns}}
			tt.mutate(f)
			err := k8sClient.Create(context.Background(), f)
			if err == nil || !strings.Contains(err.Error(), tt.message) {
				t.Fatalf("create: %v, want an error naming %q", err, tt.message)
			}
		})
	}
}
