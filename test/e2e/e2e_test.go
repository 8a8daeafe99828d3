//go:build e2e

// Package e2e plays the talk's acceptance tests against whatever cluster KUBECONFIG names, with
// the operator deployed (make deploy) and the vending pod image available to the nodes. Unlike
// envtest, the pods here really run, really crash and really recover from their logs.
//
//	make test-e2e
//
// Customers reach a machine as a client outside the cluster would: through the API server's
// service proxy, so the suite needs no route to pod IPs and runs unchanged on kind.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/customer"
)

var (
	k8s       client.Client
	clientset kubernetes.Interface
)

func TestMain(m *testing.M) {
	var err error
	if k8s, clientset, err = customer.Connect(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: no cluster: set KUBECONFIG (or run make local-up / a kind cluster):", err)
		os.Exit(1)
	}
	if err := k8s.List(context.Background(), &vendingv1alpha1.VendingMachineList{}, client.Limit(1)); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: the VendingMachine API is not served here: run make install deploy:", err)
		os.Exit(1)
	}
	SetDefaultEventuallyTimeout(2 * time.Minute)
	SetDefaultEventuallyPollingInterval(250 * time.Millisecond)
	os.Exit(m.Run())
}

// The talk's three tests, in its order, on one machine: the happy path, the user error, and the
// system failure that the supervisor heals while the customer waits for the Latte.
func TestTheTalksThreeTests(t *testing.T) {
	g := NewWithT(t)
	vm := createMachine(t, nil)
	waitReady(g, vm)
	m := machineClient{customer.Client{Clientset: clientset, Namespace: vm.Namespace, Service: vm.Name}}

	// Happy path: 2 coins, an Espresso.
	g.Expect(m.post("v1/coins", `{"count":2}`, "coins-1")).To(HaveStatus(200))
	g.Expect(m.post("v1/orders", `{"beverage":"Espresso"}`, "espresso-1")).To(And(HaveStatus(200), HaveBody(ContainSubstring(`"Espresso"`))))

	// User error: 1 coin, a Latte: a validation error, not a failure; nothing changes.
	g.Expect(m.post("v1/coins", `{"count":1}`, "coins-2")).To(HaveStatus(200))
	g.Expect(m.post("v1/orders", `{"beverage":"Latte"}`, "latte-0")).To(And(HaveStatus(402),
		HaveBody(ContainSubstring("Please insert [1] coins"))))

	// System failure: 1 more coin, the beans run out, the Latte order crashes the machine. The
	// supervisor next to it (PID 1 of its pod) restarts it in place, the log is replayed, and
	// the customer's retry of the same order gets the Latte.
	pod := machineStatus(g, vm).PodName
	g.Expect(m.post("v1/coins", `{"count":1}`, "coins-3")).To(HaveStatus(200))
	g.Expect(m.post("v1/faults/out-of-beans", "", "")).To(HaveStatus(202))
	asked := time.Now()
	first := m.c.Post(context.Background(), "v1/orders", `{"beverage":"Latte"}`, "latte-1")
	g.Expect(first.Code).NotTo(Equal(200), "the brew must fail: %s", first.Body)
	g.Eventually(func() response { return m.c.Post(context.Background(), "v1/orders", `{"beverage":"Latte"}`, "latte-1") }).
		Should(And(HaveStatus(200), HaveBody(ContainSubstring(`"Latte"`))))
	t.Logf("the Latte arrived %v after it was ordered", time.Since(asked).Round(time.Millisecond))

	got := &vendingv1alpha1.VendingMachine{}
	g.Eventually(func(g Gomega) {
		g.Expect(k8s.Get(context.Background(), client.ObjectKeyFromObject(vm), got)).To(Succeed())
		g.Expect(got.Status.Restarts).To(BeEquivalentTo(1))
		g.Expect(got.Status.InPlaceRestarts).To(BeEquivalentTo(1), "the restart was to be in place")
		g.Expect(got.Status.PodName).To(Equal(pod), "the restart was to be in place")
		g.Expect(got.Status.LastFailure).NotTo(BeNil())
		g.Expect(got.Status.LastFailure.Reason).To(Equal(contract.ReasonOutOfCoffeeBeans))
		g.Expect(got.Status.LastFailure.InPlace).To(BeTrue())
		g.Expect(eventReasons(g, vm)).To(ContainElement("RestartedInPlace"))
	}).Should(Succeed())

	// Nothing acknowledged was lost: 2+1+1 coins in, two beverages paid for at 2 each.
	var st contract.State
	g.Expect(json.Unmarshal([]byte(state(g, m.c)), &st)).To(Succeed())
	g.Expect(st.TotalCoins).To(BeEquivalentTo(4))
	g.Expect(st.Inserted).To(BeEquivalentTo(0))
}

// createMachine creates a machine named coffee (faults enabled, its claim deleted with it) in
// a namespace of its own, deleted after the test unless it failed and E2E_KEEP is set.
func createMachine(t *testing.T, mutate func(*vendingv1alpha1.VendingMachine)) *vendingv1alpha1.VendingMachine {
	t.Helper()
	return createMachineNamed(t, testNamespace(t, "e2e-"), "coffee", mutate)
}

func createMachineNamed(t *testing.T, ns, name string, mutate func(*vendingv1alpha1.VendingMachine)) *vendingv1alpha1.VendingMachine {
	t.Helper()
	vm := &vendingv1alpha1.VendingMachine{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       vendingv1alpha1.VendingMachineSpec{EnableFaultInjection: true, Image: os.Getenv("E2E_VENDING_IMAGE")},
	}
	vm.Spec.Storage.WhenDeleted = vendingv1alpha1.DeletePVC
	if mutate != nil {
		mutate(vm)
	}
	if err := k8s.Create(context.Background(), vm); err != nil {
		t.Fatal(err)
	}
	return vm
}

// dump shows what a person would look at: the machines' describe, events, the operator's log.
func dump(t *testing.T, ns string) {
	kubectl := os.Getenv("KUBECTL")
	if kubectl == "" {
		kubectl = "../../bin/k8s/v1.37.2/kubectl"
	}
	for _, args := range [][]string{
		{"-n", ns, "describe", "vendingmachines"},
		{"-n", ns, "get", "events", "--sort-by=.lastTimestamp"},
		{"-n", ns, "get", "pods,pvc", "-o", "wide"},
		{"-n", ns, "logs", "-l", "app.kubernetes.io/managed-by=vending-operator", "--prefix", "--tail=40"},
		{"-n", "vending-operator-system", "logs", "deploy/vending-operator-controller-manager", "--tail=100"},
	} {
		out, _ := exec.Command(kubectl, args...).CombinedOutput()
		t.Logf("kubectl %s:\n%s", strings.Join(args, " "), out)
	}
}

// eventReasons lists the reasons of the events about the machine.
func eventReasons(g Gomega, vm *vendingv1alpha1.VendingMachine) []string {
	list := &eventsv1.EventList{}
	g.Expect(k8s.List(context.Background(), list, client.InNamespace(vm.Namespace))).To(Succeed())
	var out []string
	for _, e := range list.Items {
		if e.Regarding.Name == vm.Name && e.Regarding.Kind == "VendingMachine" {
			out = append(out, e.Reason)
		}
	}
	return out
}

func machineStatus(g Gomega, vm *vendingv1alpha1.VendingMachine) vendingv1alpha1.VendingMachineStatus {
	got := &vendingv1alpha1.VendingMachine{}
	g.Expect(k8s.Get(context.Background(), client.ObjectKeyFromObject(vm), got)).To(Succeed())
	return got.Status
}

func waitReady(g Gomega, vm *vendingv1alpha1.VendingMachine) {
	g.Eventually(func(g Gomega) {
		got := &vendingv1alpha1.VendingMachine{}
		g.Expect(k8s.Get(context.Background(), client.ObjectKeyFromObject(vm), got)).To(Succeed())
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseRunning), "conditions: %+v", got.Status.Conditions)
	}).Should(Succeed())
}

// machineClient is a customer of the machine, with the test's context.
type machineClient struct{ c customer.Client }

type response = customer.Response

// post waits out a machine that cannot answer yet (503 while its endpoint is not ready).
func (m machineClient) post(path, body, key string) response {
	return m.c.PostUntil(context.Background(), path, body, key, 30*time.Second)
}

// state reads GET /v1/state, waiting out a machine whose endpoint is not ready yet.
func state(g Gomega, c customer.Client) string {
	r := c.GetUntil(context.Background(), "v1/state", time.Minute)
	g.Expect(r.Code).To(Equal(200), "GET /v1/state: %s", r.Body)
	return r.Body
}

// HaveStatus matches a response's HTTP status.
func HaveStatus(code int) OmegaMatcher {
	return WithTransform(func(r response) int { return r.Code }, Equal(code))
}

// HaveBody matches a response's body.
func HaveBody(m OmegaMatcher) OmegaMatcher {
	return WithTransform(func(r response) string { return r.Body }, m)
}
