package controller

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
)

// The supervisor's memory lives in the machine's status: deleting the failed pod kept as
// evidence (kubectl delete, a drain, the garbage collector) changes nothing about the
// escalation, the last failure or the window.
func TestDeletingTheEvidenceKeepsTheEscalation(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	vm := createMachine(t, ns, "coffee", func(vm *vendingv1alpha1.VendingMachine) {
		fastBackoff(0)(vm)
		vm.Spec.Supervision.MaxRestarts = ptr.To[int32](0)
	})
	pod := waitPod(g, vm, 0)
	kubeletRun(g, pod)
	kubeletFail(g, pod, 137, "")
	g.Eventually(func(g Gomega) {
		g.Expect(getMachine(g, vm).Status.Phase).To(Equal(vendingv1alpha1.PhaseEscalated))
	}).Should(Succeed())

	g.Expect(k8sClient.Delete(ctx, pod, client.GracePeriodSeconds(0))).To(Succeed())
	g.Eventually(func() bool {
		return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(pod), &corev1.Pod{}))
	}).Should(BeTrue())
	poke(g, vm) // a full pass from scratch after the deletion
	g.Consistently(func(g Gomega) {
		got := getMachine(g, vm)
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseEscalated))
		g.Expect(condition(got, vendingv1alpha1.ConditionEscalated).Status).To(Equal(metav1.ConditionTrue))
		g.Expect(got.Status.LastFailure).NotTo(BeNil())
		g.Expect(got.Status.LastFailure.Reason).To(Equal(contract.ReasonKilled))
		g.Expect(got.Status.LastFailure.PodName).To(Equal("coffee-0"))
		g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "coffee-1"}, &corev1.Pod{})).NotTo(Succeed(),
			"an escalated machine is not recreated when its evidence is deleted")
	}, 2*time.Second).Should(Succeed())

	// The operator restarting (a new leader, a new cache) does not forget either.
	g.Expect(restartManager()).To(Succeed())
	poke(g, vm)
	g.Consistently(func(g Gomega) {
		g.Expect(getMachine(g, vm).Status.Phase).To(Equal(vendingv1alpha1.PhaseEscalated))
	}, time.Second).Should(Succeed())
}

// A crash loop whose failed pods are deleted by hand as soon as the supervisor has seen them
// still uses up the restart budget and escalates.
func TestCrashLoopWithDeletedPodsStillEscalates(t *testing.T) {
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
		g.Eventually(func(g Gomega) {
			lf := getMachine(g, vm).Status.LastFailure
			g.Expect(lf).NotTo(BeNil())
			g.Expect(lf.PodName).To(Equal(pod.Name), "the supervisor has seen the failure")
		}).Should(Succeed())
		g.Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, pod, client.GracePeriodSeconds(0)))).To(Succeed())
	}
	g.Eventually(func(g Gomega) {
		got := getMachine(g, vm)
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseEscalated))
		g.Expect(condition(got, vendingv1alpha1.ConditionEscalated).Reason).To(Equal("RestartIntensityExceeded"))
		g.Expect(got.Status.Restarts).To(BeEquivalentTo(2))
		g.Expect(got.Status.Recreations).To(BeEquivalentTo(0), "a decided failure's pod deleted is no lost pod")
	}).Should(Succeed())
}

// Pods the kubelet stops on purpose (node shutdown, eviction: a DisruptionTarget condition) are
// not the machine's failures: recreated at once, outside the window, even with maxRestarts 0.
func TestKubeletInitiatedTerminationIsExternal(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	vm := createMachine(t, ns, "coffee", func(vm *vendingv1alpha1.VendingMachine) {
		vm.Spec.Supervision.MaxRestarts = ptr.To[int32](0)
	})
	pod := waitPod(g, vm, 0)
	kubeletRun(g, pod)
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(pod), pod)).To(Succeed())
	now := metav1.NewTime(testClock.Now())
	pod.Status.Phase = corev1.PodFailed
	pod.Status.Reason = "Terminated"
	pod.Status.Message = "Pod was terminated in response to imminent node shutdown."
	pod.Status.Conditions = []corev1.PodCondition{
		{Type: corev1.PodReady, Status: corev1.ConditionFalse, LastTransitionTime: now},
		{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue, Reason: "TerminationByKubelet", LastTransitionTime: now},
	}
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "vending", Image: pod.Spec.Containers[0].Image,
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: contract.ExitTerminated,
			Message: failureMessage(contract.ReasonTerminated), StartedAt: now, FinishedAt: now}}}}
	g.Expect(k8sClient.Status().Update(ctx, pod)).To(Succeed())

	kubeletRun(g, waitPod(g, vm, 1))
	g.Eventually(func(g Gomega) {
		got := getMachine(g, vm)
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseRunning))
		g.Expect(got.Status.Recreations).To(BeEquivalentTo(1))
		g.Expect(got.Status.Restarts).To(BeEquivalentTo(0))
		g.Expect(got.Status.RestartTimes).To(BeEmpty())
		g.Expect(got.Status.LastFailure.External).To(BeTrue())
		g.Expect(got.Status.LastFailure.Reason).To(Equal("TerminationByKubelet"))
		g.Expect(got.Status.PodCause).To(Equal(vendingv1alpha1.PodRecreated))
	}).Should(Succeed())
	g.Eventually(func(g Gomega) { g.Expect(eventReasons(g, vm)).To(ContainElements("Disrupted", "Recreated")) }).Should(Succeed())
	g.Expect(eventReasons(g, vm)).NotTo(ContainElement("Escalated"))
}

// A spec change rolls the pod: counted as a roll, not a restart, and no "Recovered" event.
func TestRollIsNotARestart(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	vm := createMachine(t, ns, "coffee", nil)
	kubeletRun(g, waitPod(g, vm, 0))
	g.Eventually(func(g Gomega) { g.Expect(getMachine(g, vm).Status.Phase).To(Equal(vendingv1alpha1.PhaseRunning)) }).Should(Succeed())
	got := getMachine(g, vm)
	patch := client.MergeFrom(got.DeepCopy())
	got.Spec.Inventory.Beans = 42
	g.Expect(k8sClient.Patch(ctx, got, patch)).To(Succeed())
	// envtest deletes an unscheduled pod at once (no kubelet to confirm a graceful deletion).
	g.Eventually(func() bool {
		return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "coffee-0"}, &corev1.Pod{}))
	}).Should(BeTrue())
	kubeletRun(g, waitPod(g, vm, 1))
	g.Eventually(func(g Gomega) {
		got := getMachine(g, vm)
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseRunning))
		g.Expect(got.Status.Rolls).To(BeEquivalentTo(1))
		g.Expect(got.Status.Restarts).To(BeEquivalentTo(0))
		g.Expect(got.Status.Recreations).To(BeEquivalentTo(0), "a pod the supervisor replaced is not a lost pod")
		g.Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
	}).Should(Succeed())
	g.Expect(eventReasons(g, vm)).To(ContainElement("Rolling"))
	g.Expect(eventReasons(g, vm)).NotTo(ContainElement("Recovered"), "a roll is not a recovery")
}

// The memory is written conditionally on the version it was computed from: a pass that read a
// stale machine (an informer behind, another replica's write) fails with a conflict and acts on
// nothing, instead of writing its older memory over the newer one.
func TestStaleReadCannotOverwriteMemory(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	vm := createMachine(t, ns, "coffee", fastBackoff(0))
	kubeletFail(g, waitPod(g, vm, 0), 137, "")
	kubeletRun(g, waitPod(g, vm, 1))
	var stale *vendingv1alpha1.VendingMachine
	g.Eventually(func(g Gomega) {
		stale = getMachine(g, vm)
		g.Expect(stale.Status.Phase).To(Equal(vendingv1alpha1.PhaseRunning))
		g.Expect(stale.Status.PodUID).NotTo(BeEmpty())
	}).Should(Succeed())
	// The machine moves on: pod 1 is deleted from outside and the operator recreates it as 2.
	g.Expect(k8sClient.Delete(ctx, waitPod(g, vm, 1), client.GracePeriodSeconds(0))).To(Succeed())
	kubeletRun(g, waitPod(g, vm, 2))
	var latest *vendingv1alpha1.VendingMachine
	g.Eventually(func(g Gomega) {
		latest = getMachine(g, vm)
		g.Expect(latest.Status.Recreations).To(BeEquivalentTo(1))
		g.Expect(latest.Status.PodName).To(Equal("coffee-2"))
	}).Should(Succeed())

	// A reconciler whose reads of the machine are stale, and which sees no pods.
	var created []string
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	g.Expect(err).NotTo(HaveOccurred())
	staleClient := interceptor.NewClient(c, interceptor.Funcs{
		Get: func(ctx context.Context, cl client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			if m, ok := obj.(*vendingv1alpha1.VendingMachine); ok && key.Name == vm.Name {
				stale.DeepCopyInto(m)
				return nil
			}
			return cl.Get(ctx, key, obj, opts...)
		},
		List:   hidePods, // the pod informer has not caught up either
		Create: recordPodCreates(&created),
	})
	// Even its "live" reads are stale: only the conditional write stands between it and the
	// memory.
	r := &VendingMachineReconciler{Client: staleClient, Scheme: scheme, Recorder: events.NewFakeRecorder(100), VendingImage: DefaultVendingImage,
		Clock: testClock, APIReader: staleClient}
	res, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(vm)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.RequeueAfter).To(Equal(conflictRetry), "a stale pass ends on the conflict and comes back")
	g.Expect(created).To(BeEmpty(), "a stale pass creates nothing")
	now := getMachine(g, vm)
	g.Expect(now.Status.PodName).To(Equal("coffee-2"))
	g.Expect(now.Status.Recreations).To(Equal(latest.Status.Recreations))

	// With live reads, the step that would have created a pod is decided again on the truth:
	// nothing to do, nothing written.
	r.APIReader = c
	res, err = r.Reconcile(ctx, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(vm)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.RequeueAfter).NotTo(Equal(conflictRetry))
	g.Expect(created).To(BeEmpty(), "a pass whose caches lag creates nothing")
	now = getMachine(g, vm)
	g.Expect(now.Status.PodName).To(Equal("coffee-2"))
	g.Expect(now.Status.Recreations).To(Equal(latest.Status.Recreations))
}

// A pod the cache has not seen yet is not created twice nor replaced: the step that would
// create one is decided on live reads, which show it.
func TestLaggingPodCacheCreatesNoSecondPod(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	vm := createMachine(t, ns, "coffee", nil)
	kubeletRun(g, waitPod(g, vm, 0))
	g.Eventually(func(g Gomega) { g.Expect(getMachine(g, vm).Status.PodUID).NotTo(BeEmpty()) }).Should(Succeed())
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	g.Expect(err).NotTo(HaveOccurred())
	var created []string
	blind := interceptor.NewClient(c, interceptor.Funcs{
		List:   hidePods, // a pod cache that has not seen the pod
		Create: recordPodCreates(&created),
	})
	r := &VendingMachineReconciler{Client: blind, Scheme: scheme, Recorder: events.NewFakeRecorder(100), VendingImage: DefaultVendingImage,
		Clock: testClock, APIReader: c}
	_, err = r.Reconcile(ctx, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(vm)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(created).To(BeEmpty())
	got := getMachine(g, vm)
	g.Expect(got.Status.PodName).To(Equal("coffee-0"))
	g.Expect(got.Status.Recreations).To(BeZero())
}

// hidePods is an interceptor List that shows no pods: a pod cache that has not caught up.
func hidePods(ctx context.Context, cl client.WithWatch, list client.ObjectList, opts ...client.ListOption) error {
	if _, ok := list.(*corev1.PodList); ok {
		return nil
	}
	return cl.List(ctx, list, opts...)
}

// recordPodCreates is an interceptor Create that notes the names of the pods created.
func recordPodCreates(created *[]string) func(context.Context, client.WithWatch, client.Object, ...client.CreateOption) error {
	return func(ctx context.Context, cl client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
		if p, ok := obj.(*corev1.Pod); ok {
			*created = append(*created, p.Name)
		}
		return cl.Create(ctx, obj, opts...)
	}
}

// poke changes an annotation of the machine, which wakes a full reconcile from scratch.
func poke(g Gomega, vm *vendingv1alpha1.VendingMachine) {
	got := getMachine(g, vm)
	patch := client.MergeFrom(got.DeepCopy())
	if got.Annotations == nil {
		got.Annotations = map[string]string{}
	}
	got.Annotations["test/poke"] = time.Now().Format(time.RFC3339Nano)
	g.Expect(k8sClient.Patch(context.Background(), got, patch)).To(Succeed())
}
