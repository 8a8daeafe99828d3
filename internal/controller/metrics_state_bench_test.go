package controller

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
)

// benchMachines: 10,000 machines in 100 namespaces, every phase.
func benchMachines() []vendingv1alpha1.VendingMachine {
	machines := make([]vendingv1alpha1.VendingMachine, 10000)
	for i := range machines {
		machines[i].Namespace = fmt.Sprintf("shop-%d", i%100)
		machines[i].Name = fmt.Sprintf("coffee-%d", i)
		machines[i].Status.Phase = machinePhases[i%len(machinePhases)]
		machines[i].Status.Restarts = int32(i % 7)
	}
	return machines
}

// machinesFromList is the state collector over a fixed list (the cache's, in the operator).
type machinesFromList []vendingv1alpha1.VendingMachine

func (m machinesFromList) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(m, ch) }
func (m machinesFromList) Collect(ch chan<- prometheus.Metric) { collectMachines(ch, m) }

// BenchmarkScrapeMachineSeries: one scrape (Gather) of the machine series at 10,000 machines,
// read from the cache at scrape time, as the operator serves them (the cache's list is not
// copied: UnsafeDisableDeepCopy).
func BenchmarkScrapeMachineSeries(b *testing.B) {
	machines := benchMachines()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(machinesFromList(machines))
	b.ReportAllocs()
	for b.Loop() {
		mfs, err := reg.Gather()
		if err != nil || len(mfs) != 3 {
			b.Fatalf("%d families: %v", len(mfs), err)
		}
	}
}

// BenchmarkScrapeMachineSeriesBaseline: the same series kept the common way, in gauge vectors
// the reconcilers would set on every change: the cost of a scrape alone, for comparison.
func BenchmarkScrapeMachineSeriesBaseline(b *testing.B) {
	machines := benchMachines()
	reg := prometheus.NewPedanticRegistry()
	byPhase := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vending_machines", Help: "h"}, []string{"namespace", "phase"})
	phase := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vending_machine_phase", Help: "h"}, []string{"namespace", "name", "phase"})
	restarts := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vending_machine_restarts_total", Help: "h"}, []string{"namespace", "name"})
	reg.MustRegister(byPhase, phase, restarts)
	for i := range 100 {
		for _, p := range machinePhases {
			byPhase.WithLabelValues(fmt.Sprintf("shop-%d", i), string(p)).Set(0)
		}
	}
	for _, vm := range machines {
		byPhase.WithLabelValues(vm.Namespace, string(vm.Status.Phase)).Inc()
		phase.WithLabelValues(vm.Namespace, vm.Name, string(vm.Status.Phase)).Set(1)
		restarts.WithLabelValues(vm.Namespace, vm.Name).Add(float64(vm.Status.Restarts))
	}
	b.ReportAllocs()
	for b.Loop() {
		mfs, err := reg.Gather()
		if err != nil || len(mfs) != 3 {
			b.Fatalf("%d families: %v", len(mfs), err)
		}
	}
}
