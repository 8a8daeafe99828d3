package controller

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/alerting"
	"github.com/vendingfleet/vending-operator/internal/contract"
)

const (
	monitoringRules     = "../../config/prometheus/rules.yaml"
	monitoringDashboard = "../../config/grafana/vending-operator-dashboard.json"
)

// notObservedInTest are the metrics the alerts or the dashboard name that the test below does not
// make a series of: vectors of events it does not cause (a restart in place needs a pod's
// supervisor report, a conflict a second writer). They are checked as registered: /metrics serves
// them from their first event.
var notObservedInTest = []string{"vending_in_place_restarts_total", "vending_status_conflicts_total"}

// prometheusOwn are the series Prometheus makes itself for every target.
var prometheusOwn = []string{"up"}

// TestMonitoringMetricsAreServed: every metric the alerts (config/prometheus/rules.yaml) and the
// dashboard (config/grafana) name is served by the operator's /metrics, controller-runtime's
// registry, with the controllers running as cmd/manager runs them: after a machine fails and
// recovers and a fleet runs, each has series, but the few in notObservedInTest, which must at
// least be registered. The state metrics and the recovery time say what happened.
func TestMonitoringMetricsAreServed(t *testing.T) {
	g := NewWithT(t)
	named := monitoringMetricNames(t)
	recoveredBefore := recoveries(g, "Restarted")

	ns := newNamespace(t)
	f := createFleet(t, ns, 1, nil)
	runFleet(g, f, 1)
	vm := createMachine(t, ns, "coffee", fastBackoff(300*time.Millisecond))
	pod := waitPod(g, vm, 0)
	kubeletRun(g, pod)
	kubeletFail(g, pod, contract.ExitOutOfCoffeeBeans, outOfBeansMessage("o-1"))
	kubeletRun(g, waitPod(g, vm, 1))
	g.Eventually(func(g Gomega) {
		got := getMachine(g, vm)
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseRunning))
		g.Expect(got.Status.Restarts).To(BeEquivalentTo(1))
		g.Expect(getFleet(g, f).Status.ReadyMachines).To(BeEquivalentTo(1))
	}).Should(Succeed())

	// The state, as a scrape reads it from the leader's cache.
	g.Eventually(func(g Gomega) {
		g.Expect(sample(g, "vending_machine_phase", map[string]string{"namespace": ns, "name": "coffee", "phase": "Running"})).To(Equal(1.0))
		g.Expect(sample(g, "vending_machine_restarts_total", map[string]string{"namespace": ns, "name": "coffee"})).To(Equal(1.0))
		g.Expect(sample(g, "vending_machines", map[string]string{"namespace": ns, "phase": "Running"})).To(Equal(2.0))
		g.Expect(sample(g, "vending_machines", map[string]string{"namespace": ns, "phase": "Escalated"})).To(Equal(0.0))
		g.Expect(sample(g, "vending_fleet_ready_machines", map[string]string{"namespace": ns, "name": "f"})).To(Equal(1.0))
		g.Expect(sample(g, "vending_fleet_desired_machines", map[string]string{"namespace": ns, "name": "f"})).To(Equal(1.0))
		g.Expect(sample(g, "vending_fleet_escalated", map[string]string{"namespace": ns, "name": "f"})).To(Equal(0.0))
	}).Should(Succeed())
	g.Expect(recoveries(g, "Restarted")).To(Equal(recoveredBefore+1), "one recovery, of coffee's restart")

	// Recorded once: a new operator reads Ready already True, and a pass that keeps it True (a
	// pause and a resume) is no recovery.
	g.Expect(restartManager()).To(Succeed())
	for _, paused := range []bool{true, false} {
		g.Eventually(func(g Gomega) {
			cur := getMachine(g, vm)
			cur.Spec.Paused = paused
			g.Expect(k8sClient.Update(context.Background(), cur)).To(Succeed())
		}).Should(Succeed())
		g.Eventually(func(g Gomega) {
			cur := getMachine(g, vm)
			g.Expect(cur.Status.ObservedGeneration).To(Equal(cur.Generation))
			g.Expect(cur.Spec.Paused).To(Equal(paused))
		}).Should(Succeed())
	}
	g.Expect(recoveries(g, "Restarted")).To(Equal(recoveredBefore+1), "a recovery is recorded once")

	families := gather(g)
	var unobserved []string
	for _, name := range named {
		if slices.Contains(prometheusOwn, name) {
			continue
		}
		if _, ok := families[name]; ok {
			continue
		}
		switch {
		case !registered(name):
			t.Errorf("%s: named by the alerts or the dashboard, not served by the operator", name)
		case !slices.Contains(notObservedInTest, name):
			t.Errorf("%s: registered, but no series after a failure and a recovery", name)
		default:
			unobserved = append(unobserved, name)
		}
	}
	t.Logf("%d metrics named; served with series: %d; registered without series yet: %v",
		len(named), len(named)-len(unobserved)-len(prometheusOwn), unobserved)
}

// monitoringMetricNames are the metric families the rules and the dashboard name (a
// histogram's _bucket, _sum and _count are its family).
func monitoringMetricNames(t *testing.T) []string {
	t.Helper()
	groups, err := alerting.RuleGroups(monitoringRules)
	if err != nil {
		t.Fatal(err)
	}
	var exprs []string
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			exprs = append(exprs, r.Expr)
		}
	}
	d, err := alerting.Dashboard(monitoringDashboard)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range d.Exprs {
		exprs = append(exprs, alerting.ExpandGrafana(e))
	}
	names := slices.Clone(d.VariableMetrics)
	for _, e := range exprs {
		n, err := alerting.MetricNames(e)
		if err != nil {
			t.Fatalf("%q: %v", e, err)
		}
		names = append(names, n...)
	}
	histograms := map[string]bool{}
	for _, n := range names {
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(n, suffix); ok && registered(base) {
				histograms[base] = true
			}
		}
	}
	for i, n := range names {
		names[i] = alerting.Family(n, histograms)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// registered says whether a collector of controller-runtime's registry describes the metric: a
// probe of that name is refused as a duplicate then. A vector with no label values yet has no
// series, but is served from its first.
func registered(name string) bool {
	p := probe{prometheus.NewDesc(name, "probe", nil, nil)}
	if err := metrics.Registry.Register(p); err != nil {
		return true // a duplicate name (the name is valid: it parsed as PromQL)
	}
	metrics.Registry.Unregister(p)
	return false
}

type probe struct{ desc *prometheus.Desc }

func (p probe) Describe(ch chan<- *prometheus.Desc) { ch <- p.desc }
func (p probe) Collect(chan<- prometheus.Metric)    {}

func gather(g Gomega) map[string]*dto.MetricFamily {
	mfs, err := metrics.Registry.Gather()
	g.ExpectWithOffset(1, err).NotTo(HaveOccurred())
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// sample is the value of the series of name with exactly these labels; it fails if none.
func sample(g Gomega, name string, labels map[string]string) float64 {
	mf := gather(g)[name]
	g.ExpectWithOffset(1, mf).NotTo(BeNil(), "no %s", name)
	for _, m := range mf.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if len(got) != len(labels) {
			continue
		}
		match := true
		for k, v := range labels {
			match = match && got[k] == v
		}
		if !match {
			continue
		}
		switch {
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue()
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue()
		}
	}
	g.ExpectWithOffset(1, false).To(BeTrue(), "no %s%v", name, labels)
	return 0
}

// recoveries is how many recoveries of a cause vending_recovery_seconds counted.
func recoveries(g Gomega, cause string) uint64 {
	mf := gather(g)["vending_recovery_seconds"]
	if mf == nil {
		return 0
	}
	for _, m := range mf.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "cause" && l.GetValue() == cause {
				return m.GetHistogram().GetSampleCount()
			}
		}
	}
	return 0
}

// TestRecoveryOf: what vending_recovery_seconds counts, from the status alone.
func TestRecoveryOf(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	at := func(d time.Duration) metav1.Time { return metav1.NewTime(t0.Add(d)) }
	ready := func(s metav1.ConditionStatus, since time.Duration) []metav1.Condition {
		return []metav1.Condition{{Type: vendingv1alpha1.ConditionReady, Status: s, LastTransitionTime: at(since)}}
	}
	machine := func(cause vendingv1alpha1.PodCause, conds []metav1.Condition, f *vendingv1alpha1.Failure) *vendingv1alpha1.VendingMachine {
		return &vendingv1alpha1.VendingMachine{Status: vendingv1alpha1.VendingMachineStatus{
			PodName: "coffee-1", PodCause: cause, Conditions: conds, LastFailure: f}}
	}
	failed := &vendingv1alpha1.Failure{PodName: "coffee-0", Time: at(0), Reason: contract.ReasonOutOfCoffeeBeans}
	external := &vendingv1alpha1.Failure{PodName: "coffee-0", Time: at(0), Reason: "Evicted", External: true}
	inPlace := &vendingv1alpha1.Failure{PodName: "coffee-1", Time: at(0), Reason: "Killed", InPlace: true}
	pod := &corev1.Pod{}
	pod.Name, pod.CreationTimestamp = "coffee-1", at(2*time.Second)

	for _, c := range []struct {
		name          string
		before, after *vendingv1alpha1.VendingMachine
		pod           *corev1.Pod
		want          time.Duration
		ok            bool
	}{
		{"restarted pod ready", machine(vendingv1alpha1.PodRestarted, ready("False", time.Second), failed),
			machine(vendingv1alpha1.PodRestarted, ready("True", 5*time.Second), failed), pod, 5 * time.Second, true},
		{"lost from outside, recreated", machine(vendingv1alpha1.PodRecreated, ready("False", 0), external),
			machine(vendingv1alpha1.PodRecreated, ready("True", 3*time.Second), external), pod, 3 * time.Second, true},
		{"never ready before: no condition yet", machine(vendingv1alpha1.PodRestarted, nil, failed),
			machine(vendingv1alpha1.PodRestarted, ready("True", 4*time.Second), failed), pod, 4 * time.Second, true},
		{"already ready (a later pass, a new leader)", machine(vendingv1alpha1.PodRestarted, ready("True", 5*time.Second), failed),
			machine(vendingv1alpha1.PodRestarted, ready("True", 5*time.Second), failed), pod, 0, false},
		{"not ready yet", machine(vendingv1alpha1.PodRestarted, ready("False", time.Second), failed),
			machine(vendingv1alpha1.PodRestarted, ready("False", time.Second), failed), pod, 0, false},
		{"the restarted pod flapped later", machine(vendingv1alpha1.PodRestarted, ready("False", time.Minute), failed),
			machine(vendingv1alpha1.PodRestarted, ready("True", 2*time.Minute), failed), pod, 0, false},
		{"a first start", machine(vendingv1alpha1.PodCreated, ready("False", time.Second), failed),
			machine(vendingv1alpha1.PodCreated, ready("True", 5*time.Second), failed), pod, 0, false},
		{"a roll", machine(vendingv1alpha1.PodRolled, ready("False", time.Second), failed),
			machine(vendingv1alpha1.PodRolled, ready("True", 5*time.Second), failed), pod, 0, false},
		{"a reset (a human's time in it)", machine(vendingv1alpha1.PodReset, ready("False", time.Second), failed),
			machine(vendingv1alpha1.PodReset, ready("True", 5*time.Second), failed), pod, 0, false},
		{"recreated after a deletion: lastFailure is older, unrelated", machine(vendingv1alpha1.PodRecreated, ready("False", time.Second), failed),
			machine(vendingv1alpha1.PodRecreated, ready("True", 5*time.Second), failed), pod, 0, false},
		{"a restart in place of the current pod", machine(vendingv1alpha1.PodRestarted, ready("False", time.Second), inPlace),
			machine(vendingv1alpha1.PodRestarted, ready("True", 5*time.Second), inPlace), pod, 0, false},
		{"no failure", machine(vendingv1alpha1.PodRestarted, ready("False", time.Second), nil),
			machine(vendingv1alpha1.PodRestarted, ready("True", 5*time.Second), nil), pod, 0, false},
		{"the pod not observed", machine(vendingv1alpha1.PodRestarted, ready("False", time.Second), failed),
			machine(vendingv1alpha1.PodRestarted, ready("True", 5*time.Second), failed), nil, 0, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			cause, d, ok := recoveryOf(c.before, c.after, c.pod)
			if ok != c.ok || d != c.want || (ok && cause != c.after.Status.PodCause) {
				t.Errorf("recoveryOf = %s, %v, %v; want %v, %v", cause, d, ok, c.want, c.ok)
			}
		})
	}
}
