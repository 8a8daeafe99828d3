package controller

import (
	"context"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
)

// gitops is the field manager of the objects the test applies, as Flux or Argo CD would.
const gitops = "gitops-pipeline"

// No GitOps drift: whatever the operator does to a machine or a fleet someone applied (restart,
// escalate, reset, roll), it never writes their spec; the server's managedFields record every
// writer's fields, so any write of spec by the operator would show there.
func TestOperatorNeverWritesTheSpecItIsGiven(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	setPodState(contract.State{TotalCoins: 7, Sequence: 3})

	vm := newMachine(ns, "coffee", func(vm *vendingv1alpha1.VendingMachine) {
		fastBackoff(0)(vm)
		vm.Spec.Supervision.MaxRestarts = ptr.To[int32](1)
	})
	g.Expect(k8sClient.Create(ctx, vm, client.FieldOwner(gitops))).To(Succeed())
	kubeletRun(g, waitPod(g, vm, 0))
	kubeletFail(g, waitPod(g, vm, 0), contract.ExitOutOfCoffeeBeans, outOfBeansMessage("o-1"))
	kubeletRun(g, waitPod(g, vm, 1))
	kubeletFail(g, waitPod(g, vm, 1), contract.ExitOutOfCoffeeBeans, outOfBeansMessage("o-2"))
	g.Eventually(func(g Gomega) { g.Expect(getMachine(g, vm).Status.Phase).To(Equal(vendingv1alpha1.PhaseEscalated)) }).Should(Succeed())
	g.Expect(k8sClient.Patch(ctx, newMachine(ns, "coffee", nil), client.RawPatch("application/merge-patch+json",
		[]byte(`{"metadata":{"annotations":{"`+annotationReset+`":"r1"}}}`)), client.FieldOwner(gitops))).To(Succeed())
	kubeletRun(g, waitPod(g, vm, 2))
	g.Eventually(func(g Gomega) { g.Expect(getMachine(g, vm).Status.Phase).To(Equal(vendingv1alpha1.PhaseRunning)) }).Should(Succeed())
	expectOnlyGitopsWritesSpec(g, getMachine(g, vm))

	f := &vendingv1alpha1.VendingFleet{ObjectMeta: metav1.ObjectMeta{Name: "f", Namespace: ns}}
	f.Spec.Replicas = ptr.To[int32](2)
	g.Expect(k8sClient.Create(ctx, f, client.FieldOwner(gitops))).To(Succeed())
	runFleet(g, f, 2)
	g.Expect(k8sClient.Patch(ctx, &vendingv1alpha1.VendingFleet{ObjectMeta: f.ObjectMeta}, client.RawPatch("application/merge-patch+json",
		[]byte(`{"spec":{"template":{"spec":{"supervision":{"maxRestarts":4}}}}}`)), client.FieldOwner(gitops))).To(Succeed())
	for n := range 2 {
		kubeletRun(g, waitPod(g, fleetMachine(ns, n), 1)) // the rollout
	}
	g.Eventually(func(g Gomega) {
		got := getFleet(g, f)
		g.Expect(got.Status.UpdatedMachines).To(BeEquivalentTo(2))
		g.Expect(fleetCondition(got, vendingv1alpha1.ConditionReady).Status).To(Equal(metav1.ConditionTrue))
	}).Should(Succeed())
	expectOnlyGitopsWritesSpec(g, getFleet(g, f))
}

func expectOnlyGitopsWritesSpec(g Gomega, obj client.Object) {
	var writers []string
	for _, m := range obj.GetManagedFields() {
		writers = append(writers, m.Manager+"/"+m.Subresource)
		if m.Manager == gitops || m.FieldsV1 == nil {
			continue
		}
		fields := m.FieldsV1.GetRawString()
		g.Expect(fields).NotTo(ContainSubstring(`"f:spec"`),
			"%s %s: manager %q (subresource %q) owns spec fields: %s", obj.GetObjectKind().GroupVersionKind().Kind,
			obj.GetName(), m.Manager, m.Subresource, fields)
	}
	g.Expect(strings.Join(writers, ",")).To(ContainSubstring("/status"), "the operator wrote the status, so the check had a writer to check")
}
