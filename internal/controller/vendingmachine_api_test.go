package controller

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
)

// The API server stores a VendingMachine with the talk's defaults filled in, and deletes it.
func TestVendingMachineCreateReadDelete(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)

	vm := &vendingv1alpha1.VendingMachine{ObjectMeta: metav1.ObjectMeta{Name: "coffee", Namespace: ns}}
	g.Expect(k8sClient.Create(ctx, vm)).To(Succeed())

	got := &vendingv1alpha1.VendingMachine{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(vm), got)).To(Succeed())
	g.Expect(got.Spec.Menu).To(ConsistOf(
		vendingv1alpha1.Beverage{Name: "BlackCoffee", Price: 2},
		vendingv1alpha1.Beverage{Name: "Latte", Price: 2, UsesMilk: true},
		vendingv1alpha1.Beverage{Name: "Espresso", Price: 2},
	))
	g.Expect(got.Spec.Supervision.MaxRestarts).To(HaveValue(BeEquivalentTo(10)))
	g.Expect(got.Spec.Inventory.Milk).To(HaveValue(BeEquivalentTo(50)))
	g.Expect(got.Spec.Supervision.Backoff.JitterPercent).To(HaveValue(BeEquivalentTo(10)))
	g.Expect(got.Spec.Supervision.Window.Duration.String()).To(Equal("1m0s"))
	g.Expect(got.Spec.Supervision.Decider).To(ContainElement(
		vendingv1alpha1.DeciderRule{Reason: "OutOfCoffeeBeans", Action: vendingv1alpha1.ActionRestart}))
	g.Expect(got.Spec.Storage.WhenDeleted).To(Equal(vendingv1alpha1.RetainPVC))
	g.Expect(got.Spec.Storage.Size.String()).To(Equal("1Gi"))

	g.Expect(k8sClient.Delete(ctx, got)).To(Succeed())
	g.Eventually(func() bool {
		return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(vm), &vendingv1alpha1.VendingMachine{}))
	}).Should(BeTrue())
}

// The samples a user applies first are valid against the CRDs (a server-side dry run).
func TestSamplesAreValid(t *testing.T) {
	ns := newNamespace(t)
	files, err := filepath.Glob(filepath.Join("..", "..", "config", "samples", "vending_*.yaml"))
	if err != nil || len(files) < 3 {
		t.Fatalf("samples: %v %v", files, err)
	}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		obj := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(b, &obj.Object); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		obj.SetNamespace(ns)
		if err := k8sClient.Create(context.Background(), obj, client.DryRunAll); err != nil {
			t.Errorf("%s: %v", file, err)
		}
	}
}
