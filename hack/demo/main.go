// Command demo plays the talk's three scenarios as a customer of a running VendingMachine and
// says what happens: coins in, the validation error, the failure, the restart in place by the
// supervisor inside the pod, the Latte arriving. make demo runs it after deploying the operator and a machine.
//
//	go run ./hack/demo -namespace demo -machine coffee
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/customer"
)

func main() {
	ns := flag.String("namespace", "demo", "namespace of the machine")
	name := flag.String("machine", "coffee", "the VendingMachine (started with enableFaultInjection)")
	flag.Parse()
	if err := run(*ns, *name); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ns, name string) error {
	ctx := context.Background()
	k8s, cs, err := customer.Connect()
	if err != nil {
		return err
	}
	c := customer.Client{Clientset: cs, Namespace: ns, Service: name}
	say := func(format string, args ...any) { fmt.Printf("\n== "+format+"\n", args...) }
	show := func(what string, r customer.Response) { fmt.Printf("   %-28s → %d %s\n", what, r.Code, trim(r.Body)) }

	say("Happy path: insert 2 coins, order an Espresso")
	show("POST /v1/coins {count: 2}", c.Post(ctx, "v1/coins", `{"count":2}`, ""))
	show("POST /v1/orders Espresso", c.Post(ctx, "v1/orders", `{"beverage":"Espresso"}`, ""))

	say("User error: insert 1 coin, order a Latte (a validation error goes back to the customer; nothing changes)")
	show("POST /v1/coins {count: 1}", c.Post(ctx, "v1/coins", `{"count":1}`, ""))
	show("POST /v1/orders Latte", c.Post(ctx, "v1/orders", `{"beverage":"Latte"}`, ""))

	say("System failure: 1 more coin, the beans run out, order the Latte (a failure goes to the supervisor)")
	show("POST /v1/coins {count: 1}", c.Post(ctx, "v1/coins", `{"count":1}`, ""))
	show("POST /v1/faults/out-of-beans", c.Post(ctx, "v1/faults/out-of-beans", "", ""))
	start := time.Now()
	first := c.Post(ctx, "v1/orders", `{"beverage":"Latte"}`, "demo-latte")
	show("POST /v1/orders Latte", first)
	fmt.Println("   the vending process wrote the order to its log, then crashed (exit 10, OutOfCoffeeBeans);")
	fmt.Println("   the supervisor next to it (its pod's PID 1) restarts it in place on the same log and socket;")
	fmt.Println("   the customer retries with the same Idempotency-Key")
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(50 * time.Millisecond) {
		r := c.Post(ctx, "v1/orders", `{"beverage":"Latte"}`, "demo-latte")
		if r.Code == 200 {
			show("retry POST /v1/orders Latte", r)
			fmt.Printf("   the Latte arrived %v after it was ordered\n", time.Since(start).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no Latte after 2 minutes: %d %s", r.Code, r.Body)
		}
	}
	vm := &vendingv1alpha1.VendingMachine{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, vm); err != nil {
		return err
	}
	for deadline := time.Now().Add(10 * time.Second); vm.Status.LastFailure == nil && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond) // the pod's report reaches the status in a moment
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, vm); err != nil {
			return err
		}
	}
	if f := vm.Status.LastFailure; f != nil {
		say("What the operator recorded: restarts %d (in place %d), pod %s, last failure %s (exit %d, pending order %s, action %s, in place %v)",
			vm.Status.Restarts, vm.Status.InPlaceRestarts, vm.Status.PodName, f.Reason, f.ExitCode, f.PendingOrder, f.Action, f.InPlace)
	}
	show("GET /v1/state", c.Get(ctx, "v1/state"))
	return nil
}

func trim(s string) string {
	if len(s) > 160 {
		return s[:160] + "…"
	}
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == ' ') {
		s = s[:len(s)-1]
	}
	return s
}
