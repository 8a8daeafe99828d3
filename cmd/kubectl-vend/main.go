// Command kubectl-vend is the kubectl plugin `kubectl vend` (internal/vendcli): status, why,
// reset, pause, resume, events and report for VendingMachines and VendingFleets. Put it on PATH
// (make build, then bin/) or install it with krew (hack/krew/vend.yaml).
package main

import (
	"os"

	"github.com/vendingfleet/vending-operator/internal/vendcli"
)

func main() { os.Exit(vendcli.Execute(vendcli.NewOptions(), os.Args[1:])) }
