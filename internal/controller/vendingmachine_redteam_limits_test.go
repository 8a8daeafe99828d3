package controller

import (
	"context"
	"testing"

	. "github.com/onsi/gomega"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
)

// TestRedTeamFailureDeletedBeforeSeenIsCounted: the documented limit ("a failure the supervisor
// has seen stays decided"), shown. The machine fails by itself (SIGKILL) and the failed pod is
// deleted (a cleaner of failed pods, kubectl delete) before any pass has seen it failed, e.g.
// while the operator was away in an API server outage: the supervisor finds the pod gone and
// recreates it outside the window, so a crash loop whose pods are cleaned up fast enough never
// escalates. Not a broken promise of docs/design.md, a limit of it: a finalizer the supervisor
// puts on its pods and removes only once it has recorded how each ended (as the Job controller's
// batch.kubernetes.io/job-tracking finalizer does) would close it.
func TestRedTeamFailureDeletedBeforeSeenIsCounted(t *testing.T) {
	redteamDefect(t, "limit: a failure whose pod is deleted before the supervisor saw it fail is not counted")
	ctx := context.Background()
	rg := newRig(t, func(vm *vendingv1alpha1.VendingMachine) { vm.Spec.Supervision.MaxRestarts = ptr.To[int32](0) })
	rg.ok()
	kubeletRun(rg.g, rg.pod(0))
	rg.ok()
	kubeletFail(rg.g, rg.pod(0), 137, "")
	rg.g.Expect(k8sClient.Delete(ctx, rg.pod(0), client.GracePeriodSeconds(0))).To(Succeed())
	rg.ok()
	got := rg.machine()
	rg.g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseEscalated), "the machine's own failure went uncounted: %+v", got.Status)
}
