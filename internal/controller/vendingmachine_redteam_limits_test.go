package controller

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
)

// TestRedTeamFailureDeletedBeforeSeenIsCounted: the machine fails by itself (SIGKILL) and the
// failed pod is deleted (a cleaner of failed pods, kubectl delete) before any pass has seen it
// fail, e.g. while the operator was away in an API server outage. Found by the red team as a
// limit; closed by the supervisor's finalizer on its pods (as the Job controller's
// batch.kubernetes.io/job-tracking finalizer does): the object stays until the failure is
// recorded, so a crash loop whose pods are cleaned up fast still escalates.
//
// The deletion comes a few seconds after the failure: within the same second (timestamps have
// second precision) the two cannot be ordered, and the supervisor takes the deletion as first.
func TestRedTeamFailureDeletedBeforeSeenIsCounted(t *testing.T) {
	ctx := context.Background()
	rg := newRig(t, func(vm *vendingv1alpha1.VendingMachine) { vm.Spec.Supervision.MaxRestarts = ptr.To[int32](0) })
	rg.ok()
	kubeletRun(rg.g, rg.pod(0))
	rg.ok()
	kubeletFail(rg.g, rg.pod(0), 137, "")
	pod := rg.pod(0)
	// The kubelet's clock, like the API server's that stamps the deletion, is the real one (the
	// suite's operator clock may have been stepped).
	ended := metav1.NewTime(time.Now().Add(-3 * time.Second))
	pod.Status.ContainerStatuses[0].State.Terminated.FinishedAt = ended
	rg.g.Expect(k8sClient.Status().Update(ctx, pod)).To(Succeed())
	rg.g.Expect(k8sClient.Delete(ctx, pod, client.GracePeriodSeconds(0))).To(Succeed())
	rg.ok()
	got := rg.machine()
	rg.g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseEscalated), "the machine's own failure went uncounted: %+v", got.Status)
	rg.ok() // the finalizer came off once the failure was recorded: the pod goes
	rg.g.Eventually(func() bool {
		return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(pod), &corev1.Pod{}))
	}).Should(BeTrue())
}
