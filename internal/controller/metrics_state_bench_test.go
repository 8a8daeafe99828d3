package controller

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
)

// BenchmarkCollectMachines: the cost of one scrape's machine series at 10,000 machines in 100
// namespaces (the cache's list is not copied: UnsafeDisableDeepCopy).
func BenchmarkCollectMachines(b *testing.B) {
	machines := make([]vendingv1alpha1.VendingMachine, 10000)
	for i := range machines {
		machines[i].Namespace = fmt.Sprintf("shop-%d", i%100)
		machines[i].Name = fmt.Sprintf("coffee-%d", i)
		machines[i].Status.Phase = machinePhases[i%len(machinePhases)]
		machines[i].Status.Restarts = int32(i % 7)
	}
	b.ReportAllocs()
	for b.Loop() {
		ch := make(chan prometheus.Metric, 1024)
		done := make(chan int)
		go func() {
			n := 0
			for range ch {
				n++
			}
			done <- n
		}()
		collectMachines(ch, machines)
		close(ch)
		if n := <-done; n != 2*len(machines)+100*len(machinePhases) {
			b.Fatalf("%d series", n)
		}
	}
}
