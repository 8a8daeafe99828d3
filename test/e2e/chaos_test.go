//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/customer"
	"github.com/vendingfleet/vending-operator/internal/history"
)

// ctrCommand is how the suite reaches the node's containerd to SIGKILL a container:
// E2E_CTR (for kind: "docker exec kind-worker ctr"), or ctr on the local cluster's socket.
func ctrCommand() []string {
	if c := os.Getenv("E2E_CTR"); c != "" {
		return strings.Fields(c)
	}
	return []string{"ctr", "-a", "../../.local-cluster/run/containerd.sock"}
}

// killContainer SIGKILLs the vending container of the machine's current pod, where it runs.
func killContainer(g Gomega, vm *vendingv1alpha1.VendingMachine) string {
	got := machine(g, vm)
	pod := &corev1.Pod{}
	g.Expect(k8s.Get(context.Background(), client.ObjectKey{Namespace: vm.Namespace, Name: got.Status.PodName}, pod)).To(Succeed())
	g.Expect(pod.Status.ContainerStatuses).NotTo(BeEmpty())
	id := pod.Status.ContainerStatuses[0].ContainerID
	_, id, _ = strings.Cut(id, "://")
	args := append(ctrCommand(), "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id)
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	g.Expect(err).NotTo(HaveOccurred(), "%v: %s", args, out)
	return pod.Name
}

func machine(g Gomega, vm *vendingv1alpha1.VendingMachine) *vendingv1alpha1.VendingMachine {
	got := &vendingv1alpha1.VendingMachine{}
	g.Expect(k8s.Get(context.Background(), client.ObjectKeyFromObject(vm), got)).To(Succeed())
	return got
}

// waitRestarted waits until the machine runs a pod other than the one named, Ready.
func waitRestarted(g Gomega, vm *vendingv1alpha1.VendingMachine, old string) {
	g.Eventually(func(g Gomega) {
		got := machine(g, vm)
		g.Expect(got.Status.PodName).NotTo(Equal(old))
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseRunning))
	}).Should(Succeed())
}

type ack struct {
	key, path, body string
	code            int
	answer          string
	in              history.Input // the request, for the history
}

// Pull the plug: customers insert coins and order with idempotency keys while the container is
// SIGKILLed, the pod deleted, the operator restarted and the node's kubelet stopped and started.
// Afterwards every acknowledged coin is in the machine's total, no order was dispensed twice,
// every retry gets its first answer, the customers' whole history (each request from its first
// attempt to its answer, the final retries and the final state) is linearizable for the model of
// the machine (internal/history), and status and events tell what happened.
func TestPullThePlug(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	vm := createMachine(t, func(vm *vendingv1alpha1.VendingMachine) {
		vm.Spec.Supervision.MaxRestarts = ptr.To[int32](100)
		vm.Spec.Inventory.Beans = 100000
	})
	waitReady(g, vm)
	chaos := []chaosStep{
		{"SIGKILL the container", func() { waitRestarted(g, vm, killContainer(g, vm)) }},
		{"SIGKILL it again", func() { waitRestarted(g, vm, killContainer(g, vm)) }},
		{"delete the pod", func() {
			old := machine(g, vm).Status.PodName
			g.Expect(k8s.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: vm.Namespace, Name: old}},
				client.GracePeriodSeconds(0))).To(Succeed())
			waitRestarted(g, vm, old)
		}},
		{"restart the operator", func() {
			g.Expect(k8s.DeleteAllOf(ctx, &corev1.Pod{}, client.InNamespace("vending-operator-system"),
				client.MatchingLabels{"control-plane": "controller-manager"})).To(Succeed())
			waitRestarted(g, vm, killContainer(g, vm))
		}},
	}
	if stopNode, startNode := os.Getenv("E2E_NODE_STOP"), os.Getenv("E2E_NODE_START"); stopNode != "" && startNode != "" {
		chaos = append(chaos, chaosStep{"stop and start the node's kubelet, then SIGKILL", func() {
			g.Expect(exec.Command("sh", "-c", stopNode).Run()).To(Succeed())
			time.Sleep(3 * time.Second)
			g.Expect(exec.Command("sh", "-c", startNode).Run()).To(Succeed())
			waitReady(g, vm)
			waitRestarted(g, vm, killContainer(g, vm))
		}})
	} else {
		t.Log("E2E_NODE_STOP/E2E_NODE_START not set: the node is not stopped (make test-e2e sets them for the local cluster)")
	}
	if !underThreeCustomers(t, vm, chaos) {
		return
	}

	got := machine(g, vm)
	// Restarts count the machine's own failures (each SIGKILL); the deleted pod is a recreation.
	g.Expect(got.Status.Restarts).To(BeNumerically(">=", 3))
	g.Expect(got.Status.Recreations).To(BeNumerically(">=", 1))
	g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseRunning))
	g.Expect(eventReasons(g, vm)).To(ContainElements("Restarted", "Recreated", "Recovered"))
}

// Heal in place under load: the same three keyed customers while the vending process (not the
// container) is SIGKILLed twice and fails with OutOfCoffeeBeans once. The pod's own supervisor
// restarts it in place each time (the pod stays), nothing acknowledged is lost (the same checks
// as pulling the plug), and status and events show every restart.
func TestInPlaceRestartsUnderThreeCustomers(t *testing.T) {
	if os.Getenv("E2E_CTR") != "" {
		t.Skip("the vending process is found through the node's /proc: the local cluster only")
	}
	g := NewWithT(t)
	vm := createMachine(t, func(vm *vendingv1alpha1.VendingMachine) {
		vm.Spec.Supervision.MaxRestarts = ptr.To[int32](100)
		vm.Spec.Inventory.Beans = 100000
		// Restarts shorter than the readiness probe's period and timeout (1 s), which is when
		// readiness must not flap.
		vm.Spec.Supervision.Backoff.Initial = &metav1.Duration{Duration: 10 * time.Millisecond}
	})
	waitReady(g, vm)
	pod := machine(g, vm).Status.PodName
	readySince := podReadySince(g, vm.Namespace, pod)
	c := customer.Client{Clientset: clientset, Namespace: vm.Namespace, Service: vm.Name}
	waitInPlace := func(n int32) {
		g.Eventually(func(g Gomega) {
			g.Expect(machine(g, vm).Status.InPlaceRestarts).To(BeNumerically(">=", n))
		}).Should(Succeed())
	}
	chaos := []chaosStep{
		{"SIGKILL the vending process", func() { killWorker(g, vm); waitInPlace(1) }},
		{"OutOfCoffeeBeans at the next brew", func() {
			g.Expect(c.PostUntil(context.Background(), "v1/faults/out-of-beans", "", "", time.Minute)).To(HaveStatus(202))
			waitInPlace(2)
		}},
		{"SIGKILL the vending process again", func() { killWorker(g, vm); waitInPlace(3) }},
	}
	if !underThreeCustomers(t, vm, chaos) {
		return
	}
	got := machine(g, vm)
	g.Expect(got.Status.PodName).To(Equal(pod), "the pod was replaced; every restart was to be in place")
	g.Expect(got.Status.InPlaceRestarts).To(BeEquivalentTo(3))
	g.Expect(got.Status.Restarts).To(BeEquivalentTo(3))
	g.Expect(got.Status.Recreations).To(BeEquivalentTo(0))
	g.Expect(got.Status.LastFailure.InPlace).To(BeTrue())
	g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseRunning))
	g.Expect(eventReasons(g, vm)).To(ContainElement("RestartedInPlace"))
	g.Expect(eventReasons(g, vm)).NotTo(ContainElement("Restarted"))
	g.Expect(podReadySince(g, vm.Namespace, pod)).To(Equal(readySince), "readiness flapped during the in-place restarts")
}

// podReadySince is when the pod last became Ready (its Ready condition's last transition).
func podReadySince(g Gomega, ns, name string) time.Time {
	pod := &corev1.Pod{}
	g.Expect(k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, pod)).To(Succeed())
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			g.Expect(c.Status).To(Equal(corev1.ConditionTrue))
			return c.LastTransitionTime.Time
		}
	}
	g.Expect("a Ready condition").To(BeEmpty())
	return time.Time{}
}

// killWorker SIGKILLs the vending process of the machine's pod.
func killWorker(g Gomega, vm *vendingv1alpha1.VendingMachine) {
	killChildOf(g, podPID1(g, vm))
}

// podPID1 is the node's pid of the vending container's PID 1 (the in-pod supervisor).
func podPID1(g Gomega, vm *vendingv1alpha1.VendingMachine) string {
	got := machine(g, vm)
	id := vendingContainerID(g, vm.Namespace, got.Status.PodName)
	args := append(ctrCommand(), "-n", "k8s.io", "tasks", "ls")
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	g.Expect(err).NotTo(HaveOccurred(), "%v: %s", args, out)
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == id {
			return f[1]
		}
	}
	g.Expect(id).To(BeEmpty(), "container not in %s", out)
	return ""
}

// killChildOf SIGKILLs the one child of the in-pod supervisor pid1 (the vending process),
// through the node's /proc: it needs no API server.
func killChildOf(g Gomega, pid1 string) {
	tasks, _ := filepath.Glob("/proc/" + pid1 + "/task/*/children")
	var children []string
	for _, t := range tasks {
		b, _ := os.ReadFile(t)
		children = append(children, strings.Fields(string(b))...)
	}
	g.Expect(children).To(HaveLen(1), "PID 1 (%s) of the vending container has one child, the vending process", pid1)
	pid, _ := strconv.Atoi(children[0])
	g.Expect(syscall.Kill(pid, syscall.SIGKILL)).To(Succeed())
}

type chaosStep struct {
	what string
	do   func()
}

// underThreeCustomers runs three keyed customers (coins and orders) against the machine while
// the chaos steps run, then checks that nothing acknowledged was lost: every retry gets its
// first answer, the customers' whole history (each request from its first attempt to its
// answer, the final retries and the final state) is linearizable for the model of the machine
// (internal/history), and the totals add up. It reports false when the test failed already.
func underThreeCustomers(t *testing.T, vm *vendingv1alpha1.VendingMachine, chaos []chaosStep) bool {
	g := NewWithT(t)
	ctx := context.Background()
	c := customer.Client{Clientset: clientset, Namespace: vm.Namespace, Service: vm.Name}
	var mu sync.Mutex
	var acks []ack
	rec := history.NewRecorder()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for n := range 3 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(n), 1))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				count := 1 + rng.IntN(3)
				a := ack{key: fmt.Sprintf("c%d-%d", n, i), path: "v1/coins", body: fmt.Sprintf(`{"count":%d}`, count)}
				a.in = history.Input{Kind: history.Coins, Key: a.key, Count: int64(count)}
				if i%3 == 2 {
					a.path, a.body = "v1/orders", `{"beverage":"Espresso"}`
					a.in = history.Input{Kind: history.Order, Key: a.key, Beverage: "Espresso", Price: 2} // the default menu
				}
				op := rec.Call(n, a.in)
				for giveUp := time.Now().Add(90 * time.Second); ; time.Sleep(100 * time.Millisecond) {
					r := c.Post(ctx, a.path, a.body, a.key)
					if r.Code != 0 && r.Code < 500 {
						a.code, a.answer = r.Code, r.Body
						op.Return(history.FromHTTP(a.in, r.Code, []byte(r.Body), nil))
						break
					}
					if time.Now().After(giveUp) {
						op.Return(history.Output{Outcome: history.Unknown})
						t.Errorf("%s: no answer in 90 s: %d %s", a.key, r.Code, r.Body)
						return
					}
				}
				mu.Lock()
				acks = append(acks, a)
				mu.Unlock()
			}
		})
	}

	for _, step := range chaos {
		time.Sleep(time.Duration(500+rand.IntN(1500)) * time.Millisecond)
		t.Logf("chaos: %s", step.what)
		step.do()
	}
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	if t.Failed() {
		return false
	}

	// Every acknowledged answer stands: a retry with its key returns it, and the totals add up.
	// The retries and the final state are part of the history, which is checked first, so that
	// a broken promise leaves its visualization.
	const final = 3 // the client id of the final retries in the history
	retries := make([]customer.Response, len(acks))
	for i, a := range acks {
		op := rec.Call(final, a.in)
		retries[i] = c.PostUntil(ctx, a.path, a.body, a.key, time.Minute)
		op.Return(history.FromHTTP(a.in, retries[i].Code, []byte(retries[i].Body), nil))
	}
	op := rec.Call(final, history.Input{Kind: history.State})
	body := state(g, c)
	op.Return(history.FromHTTP(history.Input{Kind: history.State}, 200, []byte(body), nil))
	verdict, err := history.Check(rec.Operations(), time.Minute, history.VisualizationPath(t.Name()))
	g.Expect(err).NotTo(HaveOccurred())
	t.Logf("history: %s", verdict)
	g.Expect(verdict.Linearizable()).To(BeTrue(), "the customers' history is not linearizable: %s", verdict)

	var coins, change int64
	orders := 0
	for i, a := range acks {
		r := retries[i]
		g.Expect(r.Code).To(Equal(a.code), "retry of %s: %s, first answer %s", a.key, r.Body, a.answer)
		switch {
		case a.path == "v1/coins" && a.code == 200:
			coins += a.in.Count
		case a.path == "v1/orders" && a.code == 200:
			var o struct{ Change int64 }
			_ = json.Unmarshal([]byte(a.answer), &o)
			change += o.Change
			orders++
		}
	}
	var st contract.State
	g.Expect(json.Unmarshal([]byte(body), &st)).To(Succeed())
	g.Expect(st.TotalCoins).To(Equal(coins-change), "every acknowledged coin is in the machine, less the change given")
	g.Expect(st.Dispensed["Espresso"]).To(BeEquivalentTo(orders), "each paid order dispensed exactly once")
	t.Logf("%d acknowledged requests, %d coins, %d orders, through %d chaos steps", len(acks), coins, orders, len(chaos))
	return !t.Failed()
}

// Persistent failure: a reason the decider does not restart, and a crash loop past maxRestarts
// within the window, both end Escalated with no further restarts.
func TestPersistentFailuresEscalate(t *testing.T) {
	g := NewWithT(t)
	vm := createMachine(t, func(vm *vendingv1alpha1.VendingMachine) {
		vm.Spec.Supervision.MaxRestarts = ptr.To[int32](2)
		vm.Spec.Supervision.Decider = []vendingv1alpha1.DeciderRule{{Reason: contract.ReasonOutOfCoffeeBeans, Action: vendingv1alpha1.ActionRestart}}
	})
	waitReady(g, vm)
	c := customer.Client{Clientset: clientset, Namespace: vm.Namespace, Service: vm.Name}
	// A crash loop: the beans run out at every brew.
	for i := range 3 {
		waitReady(g, vm)
		g.Expect(c.PostUntil(context.Background(), "v1/coins", `{"count":2}`, fmt.Sprintf("loop-coins-%d", i), time.Minute)).
			To(HaveStatus(200))
		g.Expect(c.PostUntil(context.Background(), "v1/faults/out-of-beans", "", "", time.Minute)).To(HaveStatus(202))
		c.Post(context.Background(), "v1/orders", `{"beverage":"Espresso"}`, fmt.Sprintf("loop-order-%d", i))
	}
	g.Eventually(func(g Gomega) {
		got := machine(g, vm)
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseEscalated))
		g.Expect(got.Status.Restarts).To(BeEquivalentTo(2))
		// In place first (the pod's supervisor restarts twice), then the operator: the third
		// failure finds the window used, in the pod and at the operator.
		g.Expect(got.Status.InPlaceRestarts).To(BeEquivalentTo(2))
		g.Expect(got.Status.PodName).To(Equal(vm.Name + "-0"))
	}).Should(Succeed())
	g.Consistently(func() int32 { return machine(g, vm).Status.Restarts }, 3*time.Second).Should(BeEquivalentTo(2))
	g.Expect(eventReasons(g, vm)).To(ContainElement("Escalated"))

	// A reason the decider does not know (SIGKILL is Killed, not listed here) escalates at once.
	other := createMachineNamed(t, vm.Namespace, "killed", func(vm *vendingv1alpha1.VendingMachine) {
		vm.Spec.Supervision.Decider = []vendingv1alpha1.DeciderRule{{Reason: contract.ReasonOutOfCoffeeBeans, Action: vendingv1alpha1.ActionRestart}}
	})
	waitReady(g, other)
	killContainer(g, other)
	g.Eventually(func(g Gomega) {
		got := machine(g, other)
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseEscalated))
		g.Expect(got.Status.LastFailure.Reason).To(Equal(contract.ReasonKilled))
		g.Expect(got.Status.Restarts).To(BeEquivalentTo(0))
	}).Should(Succeed())
}

// Bad input changes nothing: a spec CEL refuses, and bad requests to a machine.
func TestBadInputChangesNothing(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	vm := createMachine(t, func(vm *vendingv1alpha1.VendingMachine) { vm.Spec.EnableFaultInjection = false })
	bad := &vendingv1alpha1.VendingMachine{ObjectMeta: metav1.ObjectMeta{Namespace: vm.Namespace, Name: "bad"}}
	bad.Spec.Supervision.Window = &metav1.Duration{}
	err := k8s.Create(ctx, bad)
	g.Expect(err).To(MatchError(ContainSubstring("supervision.window must be greater than 0s")))

	waitReady(g, vm)
	c := customer.Client{Clientset: clientset, Namespace: vm.Namespace, Service: vm.Name}
	g.Expect(c.PostUntil(ctx, "v1/coins", `{"count":1}`, "first", time.Minute)).To(HaveStatus(200))
	before := state(g, c)
	for _, r := range []struct{ path, body string }{
		{"v1/coins", `{"count":0}`},
		{"v1/coins", `{"count":-3}`},
		{"v1/coins", `{"count":"two"}`},
		{"v1/coins", `{"count":1,"extra":true}`},
		{"v1/coins", `not json`},
		{"v1/orders", `{"beverage":"Mocha"}`},
		{"v1/faults/out-of-beans", ``}, // faults are off on this machine
	} {
		resp := c.PostUntil(ctx, r.path, r.body, "", time.Minute) // 4xx at once; 503 while the endpoint is not ready
		g.Expect(resp.Code).To(BeNumerically(">=", 400), "%s %s", r.path, r.body)
		g.Expect(resp.Code).To(BeNumerically("<", 500), "%s %s: %s", r.path, r.body, resp.Body)
		g.Expect(resp.Body).To(ContainSubstring(`"error"`))
	}
	g.Expect(state(g, c)).To(Equal(before))
}
