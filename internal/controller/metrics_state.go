package controller

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
)

// State metrics: what the machines and fleets are now, read from the manager's cache at scrape
// time rather than kept in gauges the reconcilers update, so nothing can drift from the
// objects and a new leader reports the truth from its first scrape.
//
// Only the elected manager reports them (SetupMetrics adds a leader-election runnable): a
// standby replica would otherwise have to watch every machine just to be scraped, and the
// alerts would see every machine once per replica. The cost is a gap of about one lease
// duration when the leader changes; the rules aggregate by (namespace, name), so the short
// overlap while an old leader drains is harmless too.
//
// Series at 10,000 machines: two per machine (phase, restarts), seven per namespace, four
// per fleet. The labels namespace and name are the object's, so the ServiceMonitor keeps them
// (honorLabels) instead of letting the scrape target's namespace rename them.
// The labels of the state metrics: the object's own namespace and name.
const labelNamespace, labelName, labelPhase = "namespace", "name", "phase"

var (
	byNamespacePhase = []string{labelNamespace, labelPhase}
	byObject         = []string{labelNamespace, labelName}
	byObjectPhase    = []string{labelNamespace, labelName, labelPhase}
)

var (
	machinesDesc = prometheus.NewDesc("vending_machines",
		"VendingMachines by namespace and status.phase (Unknown: not reconciled yet).",
		byNamespacePhase, nil)
	machinePhaseDesc = prometheus.NewDesc("vending_machine_phase",
		"1 for each VendingMachine, labelled with its status.phase (Unknown: not reconciled yet).",
		byObjectPhase, nil)
	machineRestartsDesc = prometheus.NewDesc("vending_machine_restarts_total",
		"status.restarts of each VendingMachine: the supervisors' restarts after its own failures, "+
			"in place or with a new pod, in the machine's life.",
		byObject, nil)
	fleetEscalatedDesc = prometheus.NewDesc("vending_fleet_escalated",
		"1 while a VendingFleet's Escalated condition is True (it waits for humans), else 0.",
		byObject, nil)
	fleetMachinesDesc = prometheus.NewDesc("vending_fleet_machines",
		"status.replicas of each VendingFleet: the machines it has.", byObject, nil)
	fleetReadyMachinesDesc = prometheus.NewDesc("vending_fleet_ready_machines",
		"status.readyMachines of each VendingFleet.", byObject, nil)
	fleetDesiredMachinesDesc = prometheus.NewDesc("vending_fleet_desired_machines",
		"spec.replicas of each VendingFleet.", byObject, nil)
)

// phaseUnknown labels a machine the operator has not written a phase for yet.
const phaseUnknown = "Unknown"

// machinePhases are the phases vending_machines reports for every namespace with machines,
// zeros included, so that a phase's count is 0 rather than missing.
var machinePhases = []vendingv1alpha1.MachinePhase{
	vendingv1alpha1.PhasePending, vendingv1alpha1.PhaseRunning, vendingv1alpha1.PhaseRestarting,
	vendingv1alpha1.PhaseDegraded, vendingv1alpha1.PhaseStopped, vendingv1alpha1.PhaseEscalated,
	vendingv1alpha1.PhasePaused,
}

// stateScrapeTimeout bounds a scrape's reads of the cache (they do not wait for the network:
// the cache is synced before it is used).
const stateScrapeTimeout = 5 * time.Second

// stateCollector is the prometheus.Collector of the state metrics. Its source is the cache of
// the manager that leads, nil while none does.
type stateCollector struct {
	mu     sync.Mutex
	source client.Reader
}

var state = &stateCollector{}

func init() {
	metrics.Registry.MustRegister(state)
}

// SetupMetrics makes the manager's cache the source of the state metrics for as long as the
// manager leads (every manager, with leader election off).
func SetupMetrics(mgr ctrl.Manager) error {
	return mgr.Add(stateSource{mgr.GetCache()})
}

// stateSource lends the state collector a manager's cache while the manager leads.
type stateSource struct{ cache cache.Cache }

// NeedLeaderElection: a standby reports nothing (see the state metrics above).
func (stateSource) NeedLeaderElection() bool { return true }

func (s stateSource) Start(ctx context.Context) error {
	// The same informers the controllers use: reporting adds no watch.
	for _, obj := range []client.Object{&vendingv1alpha1.VendingMachine{}, &vendingv1alpha1.VendingFleet{}} {
		if _, err := s.cache.GetInformer(ctx, obj); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
	if !s.cache.WaitForCacheSync(ctx) {
		return nil
	}
	state.use(s.cache)
	<-ctx.Done()
	state.release(s.cache)
	return nil
}

func (s *stateCollector) use(r client.Reader) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.source = r
}

// release forgets r, unless a newer manager's cache has replaced it already.
func (s *stateCollector) release(r client.Reader) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.source == r {
		s.source = nil
	}
}

func (s *stateCollector) reader() client.Reader {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.source
}

func (s *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{machinesDesc, machinePhaseDesc, machineRestartsDesc,
		fleetEscalatedDesc, fleetMachinesDesc, fleetReadyMachinesDesc, fleetDesiredMachinesDesc} {
		ch <- d
	}
}

func (s *stateCollector) Collect(ch chan<- prometheus.Metric) {
	r := s.reader()
	if r == nil {
		return // not leading: the leader reports
	}
	ctx, cancel := context.WithTimeout(context.Background(), stateScrapeTimeout)
	defer cancel()
	log := logf.Log.WithName("metrics")
	// Read only, so the cache's objects are not copied: a scrape of 10,000 machines would
	// otherwise allocate them all again.
	machines := &vendingv1alpha1.VendingMachineList{}
	if err := r.List(ctx, machines, client.UnsafeDisableDeepCopy); err != nil {
		log.Error(err, "Listing machines for the state metrics")
	} else {
		collectMachines(ch, machines.Items)
	}
	fleets := &vendingv1alpha1.VendingFleetList{}
	if err := r.List(ctx, fleets, client.UnsafeDisableDeepCopy); err != nil {
		log.Error(err, "Listing fleets for the state metrics")
	} else {
		collectFleets(ch, fleets.Items)
	}
}

func collectMachines(ch chan<- prometheus.Metric, machines []vendingv1alpha1.VendingMachine) {
	counts := map[string]map[string]int{} // namespace → phase → machines
	for i := range machines {
		vm := &machines[i]
		phase := string(vm.Status.Phase)
		if phase == "" {
			phase = phaseUnknown
		}
		if counts[vm.Namespace] == nil {
			counts[vm.Namespace] = map[string]int{}
			for _, p := range machinePhases {
				counts[vm.Namespace][string(p)] = 0
			}
		}
		counts[vm.Namespace][phase]++
		ch <- prometheus.MustNewConstMetric(machinePhaseDesc, prometheus.GaugeValue, 1, vm.Namespace, vm.Name, phase)
		ch <- prometheus.MustNewConstMetric(machineRestartsDesc, prometheus.CounterValue,
			float64(vm.Status.Restarts), vm.Namespace, vm.Name)
	}
	for ns, phases := range counts {
		for phase, n := range phases {
			ch <- prometheus.MustNewConstMetric(machinesDesc, prometheus.GaugeValue, float64(n), ns, phase)
		}
	}
}

func collectFleets(ch chan<- prometheus.Metric, fleets []vendingv1alpha1.VendingFleet) {
	for i := range fleets {
		f := &fleets[i]
		escalated := 0.0
		if meta.IsStatusConditionTrue(f.Status.Conditions, vendingv1alpha1.ConditionEscalated) {
			escalated = 1
		}
		ch <- prometheus.MustNewConstMetric(fleetEscalatedDesc, prometheus.GaugeValue, escalated, f.Namespace, f.Name)
		ch <- prometheus.MustNewConstMetric(fleetMachinesDesc, prometheus.GaugeValue, float64(f.Status.Replicas), f.Namespace, f.Name)
		ch <- prometheus.MustNewConstMetric(fleetReadyMachinesDesc, prometheus.GaugeValue,
			float64(f.Status.ReadyMachines), f.Namespace, f.Name)
		desired := 0.0
		if f.Spec.Replicas != nil {
			desired = float64(*f.Spec.Replicas)
		}
		ch <- prometheus.MustNewConstMetric(fleetDesiredMachinesDesc, prometheus.GaugeValue, desired, f.Namespace, f.Name)
	}
}
