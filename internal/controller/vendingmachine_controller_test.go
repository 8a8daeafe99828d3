package controller

import (
	"context"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
)

func TestCreatesChildrenAndBecomesReady(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	setPodState(contract.State{TotalCoins: 7, Sequence: 3})
	vm := createMachine(t, ns, "coffee", nil)

	pod := waitPod(g, vm, 0)
	g.Expect(metav1.IsControlledBy(pod, vm)).To(BeTrue())
	g.Expect(pod.Spec.RestartPolicy).To(Equal(corev1.RestartPolicyNever))
	g.Expect(*pod.Spec.SecurityContext.RunAsNonRoot).To(BeTrue())
	c := pod.Spec.Containers[0]
	g.Expect(*c.SecurityContext.ReadOnlyRootFilesystem).To(BeTrue())
	g.Expect(c.ReadinessProbe.HTTPGet.Path).To(Equal(contract.PathReadyz))
	g.Expect(c.Args).To(ContainElement("--menu=BlackCoffee=2,Espresso=2,Latte=2:milk"))
	g.Expect(pod.Spec.Volumes[0].PersistentVolumeClaim.ClaimName).To(Equal("coffee-log"))

	pvc := &corev1.PersistentVolumeClaim{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "coffee-log"}, pvc)).To(Succeed())
	g.Expect(pvc.OwnerReferences).To(BeEmpty(), "a retained claim has no owner, so it outlives the machine")
	svc := &corev1.Service{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "coffee"}, svc)).To(Succeed())
	g.Expect(metav1.IsControlledBy(svc, vm)).To(BeTrue())

	g.Eventually(func(g Gomega) {
		got := getMachine(g, vm)
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhasePending))
	}).Should(Succeed())
	kubeletRun(g, pod)
	g.Eventually(func(g Gomega) {
		got := getMachine(g, vm)
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseRunning))
		ready := condition(got, vendingv1alpha1.ConditionReady)
		g.Expect(ready).NotTo(BeNil())
		g.Expect(ready.Status).To(Equal(metav1.ConditionTrue))
		g.Expect(ready.ObservedGeneration).To(Equal(got.Generation))
		g.Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
		g.Expect(got.Status.PodName).To(Equal("coffee-0"))
		g.Expect(got.Status.TotalCoins).To(HaveValue(BeEquivalentTo(7)))
		g.Expect(got.Status.Endpoint).To(Equal("http://coffee." + ns + ".svc:8080"))
		g.Expect(condition(got, vendingv1alpha1.ConditionDegraded).Reason).To(Equal(ReasonFullMenu))
	}).Should(Succeed())
	// No Created event: a first start is routine (TestASettledMachineCostsNothing).
}

// The talk's system failure at cluster scale: OutOfCoffeeBeans → restart after the backoff, on
// the same claim, recorded in status and events.
func TestOutOfCoffeeBeansRestartsOnTheSameLog(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	vm := createMachine(t, ns, "coffee", fastBackoff(300*time.Millisecond))
	pod := waitPod(g, vm, 0)
	kubeletRun(g, pod)
	kubeletFail(g, pod, contract.ExitOutOfCoffeeBeans, outOfBeansMessage("o-7"))

	next := waitPod(g, vm, 1)
	g.Expect(next.Spec.Volumes[0].PersistentVolumeClaim.ClaimName).To(Equal("coffee-log"))
	g.Expect(next.Annotations[annotationCause]).To(Equal(string(vendingv1alpha1.PodRestarted)))
	g.Eventually(func() bool {
		return apierrors.IsNotFound(k8sClient.Get(context.Background(), client.ObjectKeyFromObject(pod), &corev1.Pod{}))
	}).Should(BeTrue(), "the failed incarnation is removed once replaced")
	kubeletRun(g, next)
	g.Eventually(func(g Gomega) {
		got := getMachine(g, vm)
		g.Expect(got.Status.Restarts).To(BeEquivalentTo(1))
		g.Expect(got.Status.RestartTimes).To(HaveLen(1))
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseRunning))
		g.Expect(got.Status.LastFailure).NotTo(BeNil())
		g.Expect(got.Status.LastFailure.Reason).To(Equal(contract.ReasonOutOfCoffeeBeans))
		g.Expect(got.Status.LastFailure.PendingOrder).To(Equal("o-7"))
		g.Expect(got.Status.LastFailure.ExitCode).To(BeEquivalentTo(contract.ExitOutOfCoffeeBeans))
		g.Expect(got.Status.LastFailure.Action).To(Equal(vendingv1alpha1.ActionRestart))
	}).Should(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(eventReasons(g, vm)).To(ContainElements("Failed", "Restarted", "Recovered"))
	}).Should(Succeed())
}

// Restarts are the supervisor's to spend: past maxRestarts within the window, the machine is
// escalated, the failed pod stays as evidence, and nothing restarts it again until a reset.
func TestEscalatesPastMaxRestartsAndResets(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	vm := createMachine(t, ns, "coffee", func(vm *vendingv1alpha1.VendingMachine) {
		fastBackoff(0)(vm)
		vm.Spec.Supervision.MaxRestarts = ptr.To[int32](2)
	})
	for n := 0; n <= 2; n++ {
		pod := waitPod(g, vm, n)
		kubeletRun(g, pod)
		kubeletFail(g, pod, 137, "")
	}
	g.Eventually(func(g Gomega) {
		got := getMachine(g, vm)
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseEscalated))
		esc := condition(got, vendingv1alpha1.ConditionEscalated)
		g.Expect(esc.Status).To(Equal(metav1.ConditionTrue))
		g.Expect(esc.Reason).To(Equal("RestartIntensityExceeded"))
		g.Expect(esc.Message).To(ContainSubstring("humans"))
		g.Expect(got.Status.LastFailure.Reason).To(Equal(contract.ReasonKilled))
		g.Expect(condition(got, vendingv1alpha1.ConditionReady).Status).To(Equal(metav1.ConditionFalse))
	}).Should(Succeed())
	g.Consistently(func() error {
		return k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "coffee-3"}, &corev1.Pod{})
	}, 2*time.Second).ShouldNot(Succeed(), "an escalated machine is not restarted")
	g.Expect(eventReasons(g, vm)).To(ContainElement("Escalated"))

	// A reset (a fleet's or a human's) clears the escalation: a fresh pod with a fresh window.
	got := getMachine(g, vm)
	patch := client.MergeFrom(got.DeepCopy())
	got.Annotations = map[string]string{annotationReset: "1"}
	g.Expect(k8sClient.Patch(ctx, got, patch)).To(Succeed())
	pod := waitPod(g, vm, 3)
	g.Expect(pod.Annotations[annotationCause]).To(Equal(string(vendingv1alpha1.PodReset)))
	kubeletRun(g, pod)
	g.Eventually(func(g Gomega) {
		got := getMachine(g, vm)
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseRunning))
		g.Expect(condition(got, vendingv1alpha1.ConditionEscalated).Status).To(Equal(metav1.ConditionFalse))
		g.Expect(got.Status.RestartTimes).To(BeEmpty(), "a reset starts a fresh window")
		g.Expect(got.Status.Restarts).To(BeEquivalentTo(2), "restarts count the supervisor's restarts, not the reset")
		g.Expect(got.Status.Resets).To(BeEquivalentTo(1))
	}).Should(Succeed())
}

// Restarts older than the window no longer count against maxRestarts (the suite's clock is
// moved past the window instead of sleeping through it).
func TestWindowForgetsOldRestarts(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	vm := createMachine(t, ns, "coffee", func(vm *vendingv1alpha1.VendingMachine) {
		fastBackoff(0)(vm)
		vm.Spec.Supervision.MaxRestarts = ptr.To[int32](1)
		vm.Spec.Supervision.Window = &metav1.Duration{Duration: time.Hour}
	})
	pod := waitPod(g, vm, 0)
	kubeletFail(g, pod, 137, "")
	pod = waitPod(g, vm, 1)
	g.Eventually(func(g Gomega) { g.Expect(getMachine(g, vm).Status.RestartTimes).To(HaveLen(1)) }).Should(Succeed())
	testClock.Step(time.Hour + time.Second) // the first restart leaves the window
	kubeletFail(g, pod, 137, "")
	waitPod(g, vm, 2)
	g.Eventually(func(g Gomega) {
		got := getMachine(g, vm)
		g.Expect(got.Status.RestartTimes).To(HaveLen(1), "only the new restart is inside the window")
		g.Expect(got.Status.Restarts).To(BeEquivalentTo(2))
		g.Expect(got.Status.Phase).NotTo(Equal(vendingv1alpha1.PhaseEscalated))
	}).Should(Succeed())
}

// The decider: a reason it does not list escalates at once; Stop stops.
func TestDeciderUnknownReasonEscalatesAndStopStops(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	unknown := createMachine(t, ns, "unknown", fastBackoff(0))
	stop := createMachine(t, ns, "stopper", func(vm *vendingv1alpha1.VendingMachine) {
		fastBackoff(0)(vm)
		vm.Spec.Supervision.Decider = []vendingv1alpha1.DeciderRule{{Reason: "StorageFailure", Action: vendingv1alpha1.ActionStop}}
	})
	kubeletFail(g, waitPod(g, unknown, 0), contract.ExitLogLocked, failureMessage(contract.ReasonLogLocked))
	kubeletFail(g, waitPod(g, stop, 0), contract.ExitStorageFailure, failureMessage(contract.ReasonStorageFailure))
	g.Eventually(func(g Gomega) {
		got := getMachine(g, unknown)
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseEscalated))
		g.Expect(condition(got, vendingv1alpha1.ConditionEscalated).Reason).To(Equal("UnknownFailure"))
		s := getMachine(g, stop)
		g.Expect(s.Status.Phase).To(Equal(vendingv1alpha1.PhaseStopped))
		g.Expect(condition(s, vendingv1alpha1.ConditionProgressing).Reason).To(Equal(ReasonStopped))
		g.Expect(s.Status.LastFailure.Action).To(Equal(vendingv1alpha1.ActionStop))
	}).Should(Succeed())
	g.Consistently(func() bool {
		err1 := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "unknown-1"}, &corev1.Pod{})
		err2 := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "stopper-1"}, &corev1.Pod{})
		return apierrors.IsNotFound(err1) && apierrors.IsNotFound(err2)
	}, time.Second).Should(BeTrue())
	g.Expect(eventReasons(g, stop)).To(ContainElement("Stopped"))
}

// A pod deleted from outside is recreated, on the same claim.
func TestDeletedPodIsRecreated(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	vm := createMachine(t, ns, "coffee", nil)
	pod := waitPod(g, vm, 0)
	kubeletRun(g, pod)
	g.Eventually(func(g Gomega) { g.Expect(getMachine(g, vm).Status.PodName).To(Equal("coffee-0")) }).Should(Succeed())
	g.Expect(k8sClient.Delete(context.Background(), pod, client.GracePeriodSeconds(0))).To(Succeed())
	next := waitPod(g, vm, 1)
	g.Expect(next.Spec.Volumes[0].PersistentVolumeClaim.ClaimName).To(Equal("coffee-log"))
	g.Eventually(func(g Gomega) { g.Expect(eventReasons(g, vm)).To(ContainElement("Recreated")) }).Should(Succeed())
}

// Paused: the supervisor acts on nothing.
func TestPausedMachineIsLeftAlone(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	vm := createMachine(t, ns, "coffee", func(vm *vendingv1alpha1.VendingMachine) { vm.Spec.Paused = true })
	g.Eventually(func(g Gomega) {
		got := getMachine(g, vm)
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhasePaused))
		g.Expect(condition(got, vendingv1alpha1.ConditionProgressing).Reason).To(Equal(ReasonPaused))
	}).Should(Succeed())
	g.Consistently(func() error {
		return k8sClient.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "coffee-0"}, &corev1.Pod{})
	}, time.Second).ShouldNot(Succeed())
}

// With whenDeleted=Delete the claim is owned by the machine, so the garbage collector removes
// it with the machine (envtest has no garbage collector: the e2e suite sees it go).
func TestDeletePolicyOwnsTheClaim(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	vm := createMachine(t, ns, "coffee", func(vm *vendingv1alpha1.VendingMachine) {
		vm.Spec.Storage.WhenDeleted = vendingv1alpha1.DeletePVC
	})
	pvc := &corev1.PersistentVolumeClaim{}
	g.Eventually(func() error {
		return k8sClient.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "coffee-log"}, pvc)
	}).Should(Succeed())
	g.Expect(metav1.IsControlledBy(pvc, vm)).To(BeTrue())
}

// An operator restart mid-backoff resumes: the decision and its restart time live on the failed
// pod, not in the operator's memory, so every later pass, and a new operator's first one, keeps
// the same restart time and the same window.
func TestOperatorRestartMidBackoffResumes(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	vm := createMachine(t, ns, "coffee", fastBackoff(0))
	// One restart already inside the window, then a failure that backs off for a while.
	kubeletFail(g, waitPod(g, vm, 0), contract.ExitOutOfCoffeeBeans, outOfBeansMessage("o-1"))
	kubeletRun(g, waitPod(g, vm, 1))
	latest := getMachine(g, vm)
	patch := client.MergeFrom(latest.DeepCopy())
	latest.Spec.Supervision.Backoff.Initial = &metav1.Duration{Duration: 6 * time.Second}
	latest.Spec.Supervision.Backoff.Max = &metav1.Duration{Duration: 6 * time.Second}
	g.Expect(k8sClient.Patch(ctx, latest, patch)).To(Succeed())
	// A new policy rolls the pod (the in-pod supervisor applies the policy it started with).
	kubeletRun(g, waitPod(g, vm, 2))
	kubeletFail(g, waitPod(g, vm, 2), contract.ExitOutOfCoffeeBeans, outOfBeansMessage("o-2"))
	var before *vendingv1alpha1.VendingMachine
	g.Eventually(func(g Gomega) {
		before = getMachine(g, vm)
		g.Expect(before.Status.NextRestartAt).NotTo(BeNil())
		g.Expect(condition(before, vendingv1alpha1.ConditionProgressing).Reason).To(Equal(ReasonBackingOff))
	}).Should(Succeed())
	g.Expect(before.Status.RestartTimes).To(HaveLen(1))

	for i := 0; i < 2; i++ { // poke the machine: each poke is a full reconcile from scratch
		got := getMachine(g, vm)
		patch := client.MergeFrom(got.DeepCopy())
		got.Annotations = map[string]string{"poke": strings.Repeat("x", i+1)}
		g.Expect(k8sClient.Patch(ctx, got, patch)).To(Succeed())
		time.Sleep(200 * time.Millisecond)
		g.Expect(getMachine(g, vm).Status.NextRestartAt.Time).To(BeTemporally("==", before.Status.NextRestartAt.Time))
	}

	g.Expect(restartManager()).To(Succeed())
	g.Consistently(func(g Gomega) {
		after := getMachine(g, vm)
		g.Expect(after.Status.NextRestartAt).NotTo(BeNil(), "the new operator forgot the backoff")
		g.Expect(after.Status.NextRestartAt.Time).To(BeTemporally("==", before.Status.NextRestartAt.Time))
		g.Expect(after.Status.RestartTimes).To(Equal(before.Status.RestartTimes), "the window was reset")
	}, 2*time.Second).Should(Succeed())

	waitPod(g, vm, 3)
	g.Eventually(func(g Gomega) {
		got := getMachine(g, vm)
		g.Expect(got.Status.Restarts).To(BeEquivalentTo(2))
		g.Expect(got.Status.RestartTimes).To(HaveLen(2))
		// restartTimes have second precision; the restart came no earlier than promised.
		g.Expect(got.Status.RestartTimes[1].Time).To(BeTemporally(">=", before.Status.NextRestartAt.Add(-time.Second)))
	}).Should(Succeed())
}

// Bad specs are refused by the API server with a message that names the field.
func TestBadSpecsAreRejected(t *testing.T) {
	ns := newNamespace(t)
	d := func(s string) *metav1.Duration { v, _ := time.ParseDuration(s); return &metav1.Duration{Duration: v} }
	tests := []struct {
		name   string
		mutate func(*vendingv1alpha1.VendingMachine)
		want   string
	}{
		{"price 0", func(vm *vendingv1alpha1.VendingMachine) {
			vm.Spec.Menu = []vendingv1alpha1.Beverage{{Name: "Latte", Price: 0}}
		}, "spec.menu[0].price"},
		{"lowercase beverage", func(vm *vendingv1alpha1.VendingMachine) {
			vm.Spec.Menu = []vendingv1alpha1.Beverage{{Name: "latte", Price: 2}}
		}, "spec.menu[0].name"},
		{"duplicate beverage", func(vm *vendingv1alpha1.VendingMachine) {
			vm.Spec.Menu = []vendingv1alpha1.Beverage{{Name: "Latte", Price: 2}, {Name: "Latte", Price: 3}}
		}, "Duplicate value"},
		{"zero window", func(vm *vendingv1alpha1.VendingMachine) { vm.Spec.Supervision.Window = d("0s") },
			"supervision.window must be greater than 0s"},
		{"backoff initial above max", func(vm *vendingv1alpha1.VendingMachine) {
			vm.Spec.Supervision.Backoff.Initial, vm.Spec.Supervision.Backoff.Max = d("10s"), d("1s")
		}, "backoff.initial must not exceed backoff.max"},
		{"negative maxRestarts", func(vm *vendingv1alpha1.VendingMachine) { vm.Spec.Supervision.MaxRestarts = ptr.To[int32](-1) },
			"spec.supervision.maxRestarts"},
		{"unknown action", func(vm *vendingv1alpha1.VendingMachine) {
			vm.Spec.Supervision.Decider = []vendingv1alpha1.DeciderRule{{Reason: "Killed", Action: "Ignore"}}
		}, "spec.supervision.decider[0].action"},
		{"unknown retention", func(vm *vendingv1alpha1.VendingMachine) { vm.Spec.Storage.WhenDeleted = "Keep" },
			"spec.storage.whenDeleted"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := k8sClient.Create(context.Background(), newMachine(ns, "bad-"+string(rune('a'+i)), tt.mutate))
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("create: %v, want Invalid naming %q", err, tt.want)
			}
		})
	}

	// An explicitly empty menu (omitempty cannot send one: raw JSON does).
	empty := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": vendingv1alpha1.GroupVersion.String(), "kind": "VendingMachine",
		"metadata": map[string]any{"name": "bad-empty", "namespace": ns},
		"spec":     map[string]any{"menu": []any{}},
	}}
	if err := k8sClient.Create(context.Background(), empty); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.menu") {
		t.Fatalf("empty menu: %v", err)
	}

	// Storage is fixed once the machine exists.
	g := NewWithT(t)
	vm := createMachine(t, ns, "fixed", nil)
	got := getMachine(g, vm)
	got.Spec.Storage.WhenDeleted = vendingv1alpha1.DeletePVC
	err := k8sClient.Update(context.Background(), got)
	g.Expect(apierrors.IsInvalid(err)).To(BeTrue(), "%v", err)
	g.Expect(err.Error()).To(ContainSubstring("storage is immutable"))
}

// SIGTERM is a stop from outside (the kubelet, a drain), like SIGKILL: the pod exits 143 with a
// Terminated message, and the default decider restarts it on the same log instead of escalating.
func TestTerminatedRestartsByDefault(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	vm := createMachine(t, ns, "coffee", fastBackoff(0))
	pod := waitPod(g, vm, 0)
	kubeletRun(g, pod)
	kubeletFail(g, pod, contract.ExitTerminated, failureMessage(contract.ReasonTerminated))

	next := waitPod(g, vm, 1)
	g.Expect(next.Spec.Volumes[0].PersistentVolumeClaim.ClaimName).To(Equal("coffee-log"))
	g.Eventually(func(g Gomega) {
		got := getMachine(g, vm)
		g.Expect(got.Status.LastFailure).NotTo(BeNil())
		g.Expect(got.Status.LastFailure.Reason).To(Equal(contract.ReasonTerminated))
		g.Expect(got.Status.LastFailure.Action).To(Equal(vendingv1alpha1.ActionRestart))
		g.Expect(condition(got, vendingv1alpha1.ConditionEscalated).Status).NotTo(Equal(metav1.ConditionTrue))
	}).Should(Succeed())
}
