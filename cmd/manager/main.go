// Command manager is the vending-operator: the supervisor of VendingMachines at cluster
// scale. It restarts crashed vending pods on their event logs, backs off, and escalates
// failures that persist, through conditions and events that `kubectl describe` shows.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"os"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/controller"
	"github.com/vendingfleet/vending-operator/internal/managerloop"
)

var scheme = runtime.NewScheme()

func init() {
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(vendingv1alpha1.AddToScheme(scheme))
}

func main() {
	var (
		metricsAddr     string
		metricsSecure   bool
		probeAddr       string
		leaderElect     bool
		vendingImage    string
		podClusterRole  string
		concurrency     int
		apiQPS          float64
		apiBurst        int
		leaderNamespace string
		stateRefresh    time.Duration
		pprofAddr       string
	)
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8443",
		"Address the metrics endpoint binds to (:8443 for HTTPS, :8080 for HTTP, 0 to disable).")
	flag.BoolVar(&metricsSecure, "metrics-secure", true,
		"Serve metrics over HTTPS, authenticated and authorized through the API server.")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "Address the /healthz and /readyz probes bind to.")
	flag.BoolVar(&leaderElect, "leader-elect", false,
		"Elect a leader so that only one replica of the manager acts at a time.")
	flag.StringVar(&podClusterRole, "vending-pod-cluster-role", controller.DefaultPodClusterRole,
		"The ClusterRole bound to vending pods' ServiceAccount in each namespace with machines (config/rbac/vending_pod_role.yaml).")
	flag.StringVar(&vendingImage, "vending-image", controller.DefaultVendingImage,
		"Image of the vending pod, for machines whose spec.image is empty.")
	flag.IntVar(&concurrency, "max-concurrent-reconciles", controller.DefaultMaxConcurrentReconciles,
		"How many VendingMachines are reconciled at once.")
	// client-go's defaults (5 QPS, or 20 with controller-runtime's config) throttle a thousand
	// machines into minutes; the API server's priority and fairness protects itself anyway.
	flag.Float64Var(&apiQPS, "kube-api-qps", controller.DefaultKubeAPIQPS, "Requests per second the manager sends to the API server.")
	flag.IntVar(&apiBurst, "kube-api-burst", controller.DefaultKubeAPIBurst, "Burst of requests the manager may send to the API server.")
	flag.DurationVar(&stateRefresh, "state-refresh-interval", controller.DefaultStateRefresh,
		"How long a quiet machine's reported state (coins, out of milk) stands before its pod is asked again; "+
			"a new pod, a readiness change, an in-place restart or the machine's read-state annotation ask at once.")
	flag.StringVar(&pprofAddr, "pprof-bind-address", "0", "Address Go's pprof endpoints bind to (0: off), to profile the operator at scale.")
	flag.StringVar(&leaderNamespace, "leader-election-namespace", "",
		"Namespace of the leader election's Lease (default: the pod's own).")
	timing := managerloop.DefaultTiming
	flag.DurationVar(&timing.LeaseDuration, "leader-elect-lease-duration", timing.LeaseDuration,
		"How long another replica waits, after the lease last changed, before it takes the lease (whole seconds).")
	flag.DurationVar(&timing.RenewDeadline, "leader-elect-renew-deadline", timing.RenewDeadline,
		"How long the leader keeps failing to renew its lease before it stops acting; below the lease duration less the retry period.")
	flag.DurationVar(&timing.RetryPeriod, "leader-elect-retry-period", timing.RetryPeriod,
		"Pause between two attempts to acquire or renew the lease.")
	opts := zap.Options{Development: false}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()

	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))
	log := ctrl.Log.WithName("setup")
	log.Info("Starting the operator", "vendingImage", vendingImage, "leaderElect", leaderElect, "memoryLimit", setMemoryLimit())

	metricsOpts := metricsserver.Options{
		BindAddress:   metricsAddr,
		SecureServing: metricsSecure,
		// HTTP/2 is off: it has had request-smuggling and rapid-reset CVEs, and metrics scrapes
		// do not need it.
		TLSOpts: []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }},
	}
	if metricsSecure {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}

	restConfig := ctrl.GetConfigOrDie()
	restConfig.QPS, restConfig.Burst = float32(apiQPS), apiBurst
	// The manager runs inside a loop that outlives it: when the API server is away the operator
	// waits for it, and when the lease is lost it stops acting and campaigns again with a fresh
	// manager, instead of exiting into the kubelet's back-off (internal/managerloop).
	err := managerloop.Run(ctrl.SetupSignalHandler(), managerloop.Config{
		RestConfig: restConfig,
		Manager: ctrl.Options{
			Scheme:           scheme,
			PprofBindAddress: pprofAddr,
			// Only what the reconcilers read: the children this operator made, trimmed.
			Cache: controller.CacheOptions(),
		},
		Setup: func(mgr ctrl.Manager) error {
			if err := (&controller.VendingMachineReconciler{
				Client:         mgr.GetClient(),
				Scheme:         mgr.GetScheme(),
				Recorder:       mgr.GetEventRecorder("vendingmachine-controller"),
				VendingImage:   vendingImage,
				PodClusterRole: podClusterRole,
				StateReader:    controller.NewHTTPStateReader(),
				StateRefresh:   stateRefresh,
				APIReader:      mgr.GetAPIReader(),
			}).SetupWithManager(mgr, controller.Options{MaxConcurrentReconciles: concurrency}); err != nil {
				return fmt.Errorf("controller VendingMachine: %w", err)
			}
			if err := (&controller.VendingFleetReconciler{
				Client:   mgr.GetClient(),
				Scheme:   mgr.GetScheme(),
				Recorder: mgr.GetEventRecorder("vendingfleet-controller"),
			}).SetupWithManager(mgr, controller.Options{MaxConcurrentReconciles: concurrency}); err != nil {
				return fmt.Errorf("controller VendingFleet: %w", err)
			}
			if err := controller.SetupMetrics(mgr); err != nil {
				return fmt.Errorf("state metrics: %w", err)
			}
			return nil
		},
		LeaderElection:          leaderElect,
		LeaderElectionID:        "vending-operator.vending.resilience.dev",
		LeaderElectionNamespace: leaderNamespace,
		Timing:                  timing,
		ProbeAddr:               probeAddr,
		Metrics:                 metricsOpts,
		Log:                     ctrl.Log.WithName("managerloop"),
	})
	if err != nil {
		log.Error(err, "Operator stopped")
		os.Exit(1)
	}
}
