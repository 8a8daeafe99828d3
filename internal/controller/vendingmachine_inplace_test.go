package controller

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
)

// inPlaceReport is what a pod's supervisor reports after n in-place restarts of a Killed process.
func inPlaceReport(n int32) *contract.InPlace {
	r := &contract.InPlace{Restarts: n}
	for i := range n {
		r.Times = append(r.Times, testClock.Now().Add(time.Duration(i-n)*time.Second))
	}
	last := r.Times[len(r.Times)-1]
	r.Last = &contract.InPlaceFailure{TerminationMessage: contract.TerminationMessage{Reason: contract.ReasonKilled,
		ExitCode: 137, Message: "the vending process was killed (SIGKILL)", Time: last},
		Action: "Restart", DecisionReason: "DeciderRestart", DecisionMessage: "restarted in place", RestartAt: last}
	return r
}

// reportInPlace patches the report on the pod as its supervisor does.
func reportInPlace(g Gomega, pod *corev1.Pod, r *contract.InPlace) {
	b, _ := json.Marshal(r)
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{contract.AnnotationInPlace: string(b)}}})
	g.Expect(k8sClient.Patch(context.Background(), pod, client.RawPatch("application/merge-patch+json", patch))).To(Succeed())
}

// A restart the pod made in place shows in the machine's status and as a RestartedInPlace
// event, counts in the window, and leaves the pod alone.
func TestInPlaceRestartIsShown(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	vm := createMachine(t, ns, "coffee", nil)
	pod := waitPod(g, vm, 0)
	kubeletRun(g, pod)
	g.Expect(pod.Spec.Containers[0].Args).To(ContainElement("--supervise"))
	g.Expect(pod.Spec.ServiceAccountName).To(Equal(PodServiceAccount))

	reportInPlace(g, pod, inPlaceReport(1))
	g.Eventually(func(g Gomega) {
		st := getMachine(g, vm).Status
		g.Expect(st.Restarts).To(BeEquivalentTo(1))
		g.Expect(st.InPlaceRestarts).To(BeEquivalentTo(1))
		g.Expect(st.RestartTimes).To(HaveLen(1))
		g.Expect(st.LastFailure).NotTo(BeNil())
		g.Expect(st.LastFailure.InPlace).To(BeTrue())
		g.Expect(st.LastFailure.Reason).To(Equal(contract.ReasonKilled))
		g.Expect(eventReasons(g, vm)).To(ContainElement("RestartedInPlace"))
	}).Should(Succeed())

	reportInPlace(g, pod, inPlaceReport(3)) // two more, reported at once (the API was away)
	g.Eventually(func(g Gomega) {
		st := getMachine(g, vm).Status
		g.Expect(st.Restarts).To(BeEquivalentTo(3))
		g.Expect(st.InPlaceRestarts).To(BeEquivalentTo(3))
		g.Expect(st.PodName).To(Equal("coffee-0"), "an in-place restart replaced the pod")
		g.Expect(condition(getMachine(g, vm), vendingv1alpha1.ConditionReady).Status).To(BeEquivalentTo("True"))
	}).Should(Succeed())
	g.Expect(k8sClient.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "coffee-1"}, &corev1.Pod{})).NotTo(Succeed())
	g.Expect(getMachine(g, vm).Status.Restarts).To(BeEquivalentTo(3), "a report was counted twice")
}

// One budget: a pod that gave up after using the window in place (its restarts only in its
// termination message) is escalated by the operator, not restarted anew.
func TestInPlaceBudgetIsTheMachines(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	vm := createMachine(t, ns, "coffee", func(vm *vendingv1alpha1.VendingMachine) {
		vm.Spec.Supervision.MaxRestarts = ptr.To[int32](2)
	})
	pod := waitPod(g, vm, 0)
	kubeletRun(g, pod)
	msg, _ := json.Marshal(contract.TerminationMessage{Reason: contract.ReasonKilled, ExitCode: 137,
		Message: "the vending process was killed (SIGKILL)", Time: testClock.Now(), InPlace: inPlaceReport(2)})
	kubeletFail(g, pod, 137, string(msg))
	g.Eventually(func(g Gomega) {
		st := getMachine(g, vm).Status
		g.Expect(st.InPlaceRestarts).To(BeEquivalentTo(2))
		g.Expect(st.LastFailure).NotTo(BeNil())
		g.Expect(st.LastFailure.Action).To(Equal(vendingv1alpha1.ActionEscalate))
		g.Expect(st.LastFailure.DecisionReason).To(Equal("RestartIntensityExceeded"))
		g.Expect(eventReasons(g, vm)).To(ContainElements("RestartedInPlace", "Escalated"))
	}).Should(Succeed())
	g.Consistently(func() error {
		return k8sClient.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "coffee-1"}, &corev1.Pod{})
	}, time.Second).ShouldNot(Succeed())
}

// One budget, the operator's half: a pod the operator restarts is started with the machine's
// restarts in the window, so that its own supervisor counts them.
func TestRestartedPodCarriesTheWindow(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	vm := createMachine(t, ns, "coffee", fastBackoff(0))
	kubeletFail(g, waitPod(g, vm, 0), contract.ExitOutOfCoffeeBeans, outOfBeansMessage("o-1"))
	pod := waitPod(g, vm, 1)
	st := getMachine(g, vm).Status
	g.Expect(st.RestartTimes).To(HaveLen(1))
	g.Expect(pod.Spec.Containers[0].Args).To(ContainElement(
		"--earlier-restarts="+st.RestartTimes[0].UTC().Format(time.RFC3339Nano)),
		"the restarted pod does not count the restart that made it")
}
