package controller

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
)

// recoverySeconds is the time from a failure of a machine's pod to the machine Ready again on
// the pod that replaced it, by the cause of the replacement: Restarted (the machine's own
// failure, restarted by the operator) or Recreated (a pod stopped or lost from outside).
// Restarts in place are not in it: the pod stays Ready or turns unready for less than the
// operator can see (see vending_in_place_restarts_total).
var recoverySeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
	Name: "vending_recovery_seconds",
	Help: "Time from a pod's failure (status.lastFailure.time) to the machine Ready again on the pod that replaced it " +
		"(the Ready condition's lastTransitionTime), by the cause of the replacement (Restarted, Recreated).",
	Buckets: prometheus.ExponentialBuckets(0.25, 2, 12), // 0.25 s .. 8.5 min
}, []string{"cause"})

func init() {
	metrics.Registry.MustRegister(recoverySeconds)
}

// observeRecovery records the recovery a pass made, if it made one: called once the status it
// wrote reached the API server.
func observeRecovery(before, after *vendingv1alpha1.VendingMachine, pod *corev1.Pod) {
	if cause, d, ok := recoveryOf(before, after, pod); ok {
		recoverySeconds.WithLabelValues(string(cause)).Observe(d.Seconds())
	}
}

// recoveryOf says whether the status after a pass, compared with the status the pass read,
// records a recovery, and how long it took. Everything comes from the status, so a recovery is
// recorded once whichever operator process sees it: only by the pass whose write turns Ready
// True (a later pass, or a new leader, reads it True already), and only the first time the
// replacement pod is Ready (Ready was last lost before that pod was created; a pod that turns
// unready and ready again later is no new recovery, and lastFailure still names its
// predecessor then).
func recoveryOf(before, after *vendingv1alpha1.VendingMachine, pod *corev1.Pod) (vendingv1alpha1.PodCause, time.Duration, bool) {
	was := meta.FindStatusCondition(before.Status.Conditions, vendingv1alpha1.ConditionReady)
	is := meta.FindStatusCondition(after.Status.Conditions, vendingv1alpha1.ConditionReady)
	if is == nil || is.Status != "True" || (was != nil && was.Status == "True") {
		return "", 0, false
	}
	st := after.Status
	f := st.LastFailure
	if f == nil || pod == nil || pod.Name != st.PodName || f.PodName == st.PodName {
		return "", 0, false
	}
	switch {
	case st.PodCause == vendingv1alpha1.PodRestarted && !f.External:
	case st.PodCause == vendingv1alpha1.PodRecreated && f.External:
	default:
		// A roll, a reset or a first start is no recovery; neither is a recreation after a
		// deletion, whose lastFailure is an older, unrelated failure.
		return "", 0, false
	}
	if was != nil && was.LastTransitionTime.After(pod.CreationTimestamp.Time) {
		return "", 0, false // Ready was lost after this pod had started: not its first readiness
	}
	return st.PodCause, max(0, is.LastTransitionTime.Sub(f.Time.Time)), true
}
