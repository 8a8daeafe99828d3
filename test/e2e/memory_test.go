//go:build e2e

package e2e

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
)

// deletePod is `kubectl delete pod`: a graceful deletion, waited out until the object is gone.
func deletePod(g Gomega, ns, name string) {
	ctx := context.Background()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	g.Expect(client.IgnoreNotFound(k8s.Delete(ctx, pod))).To(Succeed())
	g.Eventually(func() bool { return apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKeyFromObject(pod), &corev1.Pod{})) }).
		Should(BeTrue(), "pod %s is not gone", name)
}

// The supervisor's memory survives the deletion of the evidence: an escalated machine whose
// failed pod is deleted stays Escalated, with its last failure, and nothing is started.
func TestDeletingAnEscalatedMachinesPodKeepsTheEscalation(t *testing.T) {
	g := NewWithT(t)
	vm := createMachine(t, func(vm *vendingv1alpha1.VendingMachine) {
		vm.Spec.Supervision.MaxRestarts = ptr.To[int32](0)
	})
	waitReady(g, vm)
	failed := killContainer(g, vm)
	g.Eventually(func(g Gomega) {
		g.Expect(machine(g, vm).Status.Phase).To(Equal(vendingv1alpha1.PhaseEscalated))
	}).Should(Succeed())

	deletePod(g, vm.Namespace, failed)
	g.Consistently(func(g Gomega) {
		got := machine(g, vm)
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseEscalated))
		esc := conditionOf(got, vendingv1alpha1.ConditionEscalated)
		g.Expect(esc).NotTo(BeNil())
		g.Expect(esc.Status).To(Equal(metav1.ConditionTrue))
		g.Expect(got.Status.LastFailure).NotTo(BeNil())
		g.Expect(got.Status.LastFailure.Reason).To(Equal(contract.ReasonKilled))
		g.Expect(got.Status.LastFailure.PodName).To(Equal(failed))
		pods := &corev1.PodList{}
		g.Expect(k8s.List(context.Background(), pods, client.InNamespace(vm.Namespace))).To(Succeed())
		g.Expect(pods.Items).To(BeEmpty(), "an escalated machine is not started again when its pod is deleted")
	}, 10*time.Second, time.Second).Should(Succeed())
}

// A crash loop whose failed pods are deleted by hand (as soon as the supervisor has seen each
// failure) still uses up maxRestarts and escalates.
func TestCrashLoopWithDeletedPodsStillEscalates(t *testing.T) {
	g := NewWithT(t)
	vm := createMachine(t, func(vm *vendingv1alpha1.VendingMachine) {
		vm.Spec.Supervision.MaxRestarts = ptr.To[int32](2)
	})
	for range 3 {
		waitReady(g, vm)
		failed := killContainer(g, vm)
		g.Eventually(func(g Gomega) {
			lf := machine(g, vm).Status.LastFailure
			g.Expect(lf).NotTo(BeNil())
			g.Expect(lf.PodName).To(Equal(failed), "the supervisor has seen the failure")
		}).Should(Succeed())
		deletePod(g, vm.Namespace, failed)
	}
	g.Eventually(func(g Gomega) {
		got := machine(g, vm)
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseEscalated))
		g.Expect(got.Status.Restarts).To(BeEquivalentTo(2))
		g.Expect(conditionOf(got, vendingv1alpha1.ConditionEscalated).Reason).To(Equal("RestartIntensityExceeded"))
	}).Should(Succeed())
	g.Expect(eventReasons(g, vm)).To(ContainElement("Escalated"))
}

func conditionOf(vm *vendingv1alpha1.VendingMachine, t string) *metav1.Condition {
	for i := range vm.Status.Conditions {
		if vm.Status.Conditions[i].Type == t {
			return &vm.Status.Conditions[i]
		}
	}
	return nil
}
