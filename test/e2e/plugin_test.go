//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/customer"
	"github.com/vendingfleet/vending-operator/internal/supervisor"
	"github.com/vendingfleet/vending-operator/internal/vendcli"
)

// kubectlVend runs `kubectl vend ARGS` in this process against the suite's cluster (KUBECONFIG,
// as kubectl reads it), with the wall clock and no terminal.
func kubectlVend(args ...string) (string, error) {
	var out, errOut bytes.Buffer
	o := vendcli.NewOptions()
	o.Config = genericclioptions.NewConfigFlags(false)
	o.Streams = genericiooptions.IOStreams{In: &bytes.Buffer{}, Out: &out, ErrOut: &errOut}
	o.IsTerminal = func() bool { return false }
	cmd := vendcli.NewCommand(o)
	cmd.SetArgs(args)
	err := cmd.Execute()
	if err != nil {
		err = fmt.Errorf("%w (stderr: %s)", err, errOut.String())
	}
	return out.String(), err
}

// The plugin against a real machine: its event log through the service proxy; status and why
// of the machine once it escalates; reset, which brings it back on the same log.
func TestKubectlVend(t *testing.T) {
	g := NewWithT(t)
	vm := createMachine(t, func(vm *vendingv1alpha1.VendingMachine) {
		// The beans' failure escalates at once: no restart in place or by the operator.
		vm.Spec.Supervision.Decider = []vendingv1alpha1.DeciderRule{{Reason: contract.ReasonOutOfCoffeeBeans, Action: vendingv1alpha1.ActionEscalate}}
	})
	ns := vm.Namespace
	waitReady(g, vm)
	m := machineClient{customer.Client{Clientset: clientset, Namespace: ns, Service: vm.Name}}
	g.Expect(m.post("v1/coins", `{"count":2}`, "vend-coins")).To(HaveStatus(200))
	g.Expect(m.post("v1/orders", `{"beverage":"Espresso"}`, "vend-espresso")).To(HaveStatus(200))

	// events: the machine's own log, as a table and as JSON.
	out, err := kubectlVend("-n", ns, "events", vm.Name)
	g.Expect(err).NotTo(HaveOccurred())
	t.Logf("kubectl vend events %s:\n%s", vm.Name, out)
	g.Expect(out).To(HavePrefix("SEQ  TYPE"))
	g.Expect(out).To(ContainSubstring(`CoinsInserted      count=2 key="vend-coins"`))
	g.Expect(out).To(ContainSubstring("OrderPlaced        order=o-2 beverage=Espresso"))
	g.Expect(out).To(ContainSubstring("BeverageDispensed  order=o-2"))
	out, err = kubectlVend("-n", ns, "events", vm.Name, "--after", "1", "--limit", "1", "-o", "json")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out).To(And(ContainSubstring(`"sequence": 2`), ContainSubstring(`"next": 2`), Not(ContainSubstring(`"sequence": 1,`))))

	out, err = kubectlVend("-n", ns, "status")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out).To(ContainSubstring("1 machine Ready (without a fleet)"))

	// The beans run out at the next brew: the machine escalates.
	g.Expect(m.post("v1/coins", `{"count":2}`, "vend-coins-2")).To(HaveStatus(200))
	g.Expect(m.post("v1/faults/out-of-beans", "", "")).To(HaveStatus(202))
	m.c.Post(context.Background(), "v1/orders", `{"beverage":"Espresso"}`, "vend-espresso-2")
	g.Eventually(func() vendingv1alpha1.MachinePhase { return machineStatus(g, vm).Phase }).Should(Equal(vendingv1alpha1.PhaseEscalated))

	out, err = kubectlVend("-n", ns, "status")
	g.Expect(err).NotTo(HaveOccurred())
	t.Logf("kubectl vend status:\n%s", out)
	lines := strings.Split(out, "\n")
	g.Expect(lines[1]).To(And(HavePrefix("VendingMachine/"+vm.Name+" "), ContainSubstring("Escalated"),
		ContainSubstring("DeciderEscalate: the decider escalates OutOfCoffeeBeans")))
	g.Expect(lines[2]).To(ContainSubstring("Pod/" + machineStatus(g, vm).PodName))

	out, err = kubectlVend("-n", ns, "why", vm.Name)
	g.Expect(err).NotTo(HaveOccurred())
	t.Logf("kubectl vend why %s:\n%s", vm.Name, out)
	g.Expect(out).To(ContainSubstring(": Stalled (phase Escalated)"))
	g.Expect(out).To(ContainSubstring("Last failure    OutOfCoffeeBeans, exit code 10"))
	g.Expect(out).To(ContainSubstring("Decision        Escalate (DeciderEscalate)"))
	g.Expect(out).To(ContainSubstring("What you can do:\n  kubectl vend reset -n " + ns + " " + vm.Name))

	// reset: the one annotation, and the operator starts a new pod on the same log.
	resetsBefore := machineStatus(g, vm).Resets
	out, err = kubectlVend("-n", ns, "reset", vm.Name)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out).To(MatchRegexp(`^vendingmachine/%s annotated %s=\S+\n$`, vm.Name, supervisor.AnnotationReset))
	value := strings.TrimSpace(strings.SplitN(out, "=", 2)[1])
	g.Eventually(func(g Gomega) {
		st := machineStatus(g, vm)
		g.Expect(st.ObservedReset).To(Equal(value))
		g.Expect(st.Resets).To(Equal(resetsBefore + 1))
		g.Expect(st.Phase).To(Equal(vendingv1alpha1.PhaseRunning))
	}).WithTimeout(3 * time.Minute).Should(Succeed())
	out, err = kubectlVend("-n", ns, "events", vm.Name)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out).To(ContainSubstring(`key="vend-espresso"`), "the reset machine kept its log")
}
