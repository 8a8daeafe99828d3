package controller

import (
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Supervision metrics, served with controller-runtime's on the manager's metrics endpoint.
var (
	inPlaceRestartsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vending_in_place_restarts_total",
		Help: "Vending processes restarted inside their pod by the in-pod supervisor, as the operator counted them, by failure reason.",
	}, []string{"reason"})
	restartsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vending_restarts_total", Help: "Vending pods restarted by the supervisor, by failure reason.",
	}, []string{"reason"})
	escalationsTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "vending_escalations_total", Help: "Failures the supervisor escalated.",
	})
	backoffSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "vending_backoff_seconds", Help: "Backoff the supervisor chose before a restart.",
		Buckets: prometheus.ExponentialBuckets(0.05, 2, 12),
	})
	conflictsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vending_status_conflicts_total",
		Help: "Status writes refused because the object changed since it was read (a stale cache): the pass is retried, nothing was acted on.",
	}, []string{"kind"})
)

func init() {
	metrics.Registry.MustRegister(inPlaceRestartsTotal, restartsTotal, escalationsTotal, backoffSeconds, conflictsTotal)
}

func klogRef(obj client.Object) klog.ObjectRef { return klog.KObj(obj) }
