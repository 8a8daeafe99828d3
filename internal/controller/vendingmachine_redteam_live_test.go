package controller

import (
	"context"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/vendingfleet/vending-operator/internal/supervisor"
)

// TestRedTeamResetRacingAnUnseenPod: the pass before asked for coffee-0; the pod cache has not
// shown it yet when a reset arrives. On the cache's word ("no pod") the reset would create
// coffee-1 at once, beside coffee-0 starting on the same claim. A step that creates a pod is
// decided again on live reads (APIReader), which show coffee-0: it is replaced, not joined.
func TestRedTeamResetRacingAnUnseenPod(t *testing.T) {
	ctx := context.Background()
	rg := newRig(t, nil)
	rg.ok() // coffee-0 asked for and created
	vm := rg.machine()
	patch := client.MergeFrom(vm.DeepCopy())
	vm.Annotations = map[string]string{supervisor.AnnotationReset: "r1"}
	rg.g.Expect(k8sClient.Patch(ctx, vm, patch)).To(Succeed())

	// The reconciler's cache has not seen coffee-0; its live reader (the rig's client) has.
	lagging := interceptor.NewClient(rg.r.Client.(client.WithWatch), interceptor.Funcs{
		List: func(ctx context.Context, cl client.WithWatch, list client.ObjectList, opts ...client.ListOption) error {
			if _, ok := list.(*corev1.PodList); ok {
				return nil
			}
			return cl.List(ctx, list, opts...)
		},
	})
	r := *rg.r
	r.Client, r.APIReader = lagging, rg.r.Client
	_, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: rg.key})
	rg.g.Expect(err).NotTo(HaveOccurred())
	rg.g.Expect(rg.created).To(Equal([]string{"coffee-0"}), "a reset created a pod beside the one its cache had not seen")
	rg.g.Expect(rg.machine().Status.ObservedReset).To(Equal("r1"), "the reset is carried out")
}
