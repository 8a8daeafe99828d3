//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/customer"
	"github.com/vendingfleet/vending-operator/internal/supervisor"
)

// The multi-node suite: a power-off of a node, fenced after the loss; a partition; a drain. It
// runs on the local cluster with three nodes (make local-up NODES=3), whose script powers nodes
// off, cuts their links and reaches their containerd: E2E_LOCAL_CLUSTER names it.

// movableClass is the local cluster's StorageClass of volumes with no node affinity: they
// stand for network storage, which can follow a pod to another node.
const movableClass = "network-dir"

// nodeZero is the local cluster's first node: the host itself (it cannot be partitioned, and
// its power-off would stop the control plane's own node).
const nodeZero = "vending-node"

func localCluster(args ...string) (string, error) {
	script := os.Getenv("E2E_LOCAL_CLUSTER")
	out, err := exec.Command(script, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("local-cluster.sh %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// requireNodes skips the test unless the cluster has n nodes and a script to act on them, and
// waits until n of them are Ready and schedulable (a node an earlier test powered off or cut
// comes back): on the local cluster with enough nodes, a node that stays down fails the test.
func requireNodes(t testing.TB, n int) []string {
	t.Helper()
	if os.Getenv("E2E_LOCAL_CLUSTER") == "" {
		t.Skip("E2E_LOCAL_CLUSTER not set: nodes cannot be powered off or partitioned from here (make test-e2e-nodes)")
	}
	list := &corev1.NodeList{}
	if err := k8s.List(context.Background(), list); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) < n {
		t.Skipf("%d nodes, %d needed (make local-up NODES=3)", len(list.Items), n)
	}
	var ready []string
	NewWithT(t).Eventually(func(g Gomega) {
		g.Expect(k8s.List(context.Background(), list)).To(Succeed())
		ready = nil
		for i := range list.Items {
			if supervisor.StateOfNode(&list.Items[i]) == supervisor.NodeUp && !list.Items[i].Spec.Unschedulable {
				ready = append(ready, list.Items[i].Name)
			}
		}
		g.Expect(len(ready)).To(BeNumerically(">=", n), "Ready, schedulable nodes")
	}).WithTimeout(3 * time.Minute).Should(Succeed())
	slices.Sort(ready)
	return ready
}

// operatorNode is where the operator runs: a node the tests do not power off or cut.
func operatorNode(g Gomega) string {
	list := &corev1.PodList{}
	g.Expect(k8s.List(context.Background(), list, client.InNamespace("vending-operator-system"))).To(Succeed())
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			return p.Spec.NodeName
		}
	}
	return ""
}

func testNamespace(t *testing.T, prefix string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			dump(t, ns.Name)
		}
		if !t.Failed() || os.Getenv("E2E_KEEP") == "" {
			_ = k8s.Delete(context.Background(), ns)
		}
	})
	return ns.Name
}

func currentPod(g Gomega, ns, machine string) *corev1.Pod {
	vm := &vendingv1alpha1.VendingMachine{}
	g.Expect(k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: machine}, vm)).To(Succeed())
	pod := &corev1.Pod{}
	g.Expect(k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: vm.Status.PodName}, pod)).To(Succeed())
	return pod
}

func setTaint(g Gomega, node string, on bool) {
	g.Eventually(func() error {
		n := &corev1.Node{}
		if err := k8s.Get(context.Background(), client.ObjectKey{Name: node}, n); err != nil {
			return err
		}
		n.Spec.Taints = slices.DeleteFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == supervisor.TaintOutOfService })
		if on {
			n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: supervisor.TaintOutOfService, Value: "nodeshutdown",
				Effect: corev1.TaintEffectNoExecute})
		}
		return k8s.Update(context.Background(), n)
	}).Should(Succeed())
}

func setCordon(g Gomega, node string, on bool) {
	g.Eventually(func() error {
		n := &corev1.Node{}
		if err := k8s.Get(context.Background(), client.ObjectKey{Name: node}, n); err != nil {
			return err
		}
		n.Spec.Unschedulable = on
		return k8s.Update(context.Background(), n)
	}).Should(Succeed())
}

// waitNodeUnreachable waits until the machine says its pod's node is unreachable.
func waitNodeUnreachable(g Gomega, ns, machine, node string) {
	g.Eventually(func(g Gomega) {
		vm := &vendingv1alpha1.VendingMachine{}
		g.Expect(k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: machine}, vm)).To(Succeed())
		ready := conditionOf(vm, vendingv1alpha1.ConditionReady)
		g.Expect(ready).NotTo(BeNil())
		g.Expect(ready.Reason).To(Equal("NodeUnreachable"))
		g.Expect(ready.Message).To(ContainSubstring(node))
	}).WithTimeout(2 * time.Minute).Should(Succeed())
}

// podWatch records, from the API server's side, every pod of a namespace that was ever not
// ended at the same time as another of its machine: the operator's single-writer promise.
type podWatch struct {
	mu       sync.Mutex
	live     map[string]map[string]bool // machine → pods not ended
	maxLive  map[string]int
	minReady int // of the pods, ready and not deleted, since the watch began
	ready    map[string]bool
	stop     func()
}

func watchPods(t *testing.T, ns string) *podWatch {
	w := &podWatch{live: map[string]map[string]bool{}, maxLive: map[string]int{}, ready: map[string]bool{}}
	ctx, cancel := context.WithCancel(context.Background())
	list, err := clientset.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range list.Items {
		w.see(&list.Items[i], false)
	}
	w.minReady = w.readyNow() // from here on, every change counts
	wi, err := clientset.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range wi.ResultChan() {
			if p, ok := ev.Object.(*corev1.Pod); ok {
				w.see(p, ev.Type == watch.Deleted)
			}
		}
	}()
	w.stop = func() { cancel(); wi.Stop(); <-done }
	t.Cleanup(w.stop)
	return w
}

func (w *podWatch) see(p *corev1.Pod, deleted bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := p.Labels["vending.resilience.dev/machine"]
	if m == "" {
		return
	}
	if w.live[m] == nil {
		w.live[m] = map[string]bool{}
	}
	ended := deleted || supervisor.Terminal(p)
	if ended {
		delete(w.live[m], p.Name)
	} else {
		w.live[m][p.Name] = true
	}
	w.maxLive[m] = max(w.maxLive[m], len(w.live[m]))
	w.ready[p.Name] = !ended && p.DeletionTimestamp == nil && supervisor.Ready(p)
	w.minReady = min(w.minReady, w.readyNowLocked())
}

func (w *podWatch) readyNow() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.readyNowLocked()
}

func (w *podWatch) readyNowLocked() int {
	n := 0
	for _, r := range w.ready {
		if r {
			n++
		}
	}
	return n
}

// runningVending counts, from the nodes' side, the vending containers of the namespace that
// really run, on each node (its containerd's tasks).
func runningVending(g Gomega, nodes []string, ns string) map[string]int {
	out := map[string]int{}
	for _, node := range nodes {
		ids, err := localCluster("node-ctr", node, "-n", "k8s.io", "containers", "ls", "-q",
			fmt.Sprintf(`labels."io.kubernetes.pod.namespace"==%s,labels."io.kubernetes.container.name"==vending`, ns))
		g.Expect(err).NotTo(HaveOccurred())
		tasks, err := localCluster("node-ctr", node, "-n", "k8s.io", "tasks", "ls")
		g.Expect(err).NotTo(HaveOccurred())
		for _, id := range strings.Fields(ids) {
			for _, line := range strings.Split(tasks, "\n") {
				if f := strings.Fields(line); len(f) == 3 && f[0] == id && f[2] == "RUNNING" {
					out[node]++
				}
			}
		}
	}
	return out
}

// A power-off of the node of one fleet machine, fenced after the loss: the machine says its node
// is unreachable and starts nothing while it may still run; once the node is tainted out of
// service it is Ready on another node, on the same log, with every acknowledged coin, under three
// keyed customers whose history is checked. The other machines are not touched.
func TestMultiNodePowerOffThenFenceMovesTheMachine(t *testing.T) {
	requireNodes(t, 3)
	g := NewWithT(t)
	ctx := context.Background()
	ns := testNamespace(t, "e2e-poweroff-")
	f := movableFleet(g, ns, 3, func(f *vendingv1alpha1.VendingFleet) {
		// Beans for the whole test: no in-place restart takes the place of the node's loss as
		// the machine's last failure.
		f.Spec.Template.Spec.Inventory.Beans = 1_000_000
	})

	// Spread: the fleet's machines are on three different nodes.
	on := map[string]string{}
	before := map[string]string{}
	for _, m := range []string{"lobby-0", "lobby-1", "lobby-2"} {
		p := currentPod(g, ns, m)
		on[m], before[m] = p.Spec.NodeName, p.Name
	}
	g.Expect(map[string]bool{on["lobby-0"]: true, on["lobby-1"]: true, on["lobby-2"]: true}).To(HaveLen(3),
		"a fleet's machines spread over the nodes: %v", on)
	victim, op := "", operatorNode(g)
	for _, m := range []string{"lobby-0", "lobby-1", "lobby-2"} {
		if n := on[m]; n != nodeZero && n != op && victim == "" {
			victim = m
		}
	}
	g.Expect(victim).NotTo(BeEmpty(), "no machine on a node that is neither the host nor the operator's: %v", on)
	node := on[victim]
	t.Logf("machines on %v; powering off %s, the node of %s (the operator runs on %s)", on, node, victim, op)
	t.Cleanup(func() {
		g := NewWithT(t)
		setTaint(g, node, false)
		_, _ = localCluster("node-start", node)
	})

	vm := &vendingv1alpha1.VendingMachine{}
	g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: victim}, vm)).To(Succeed())
	w := watchPods(t, ns)
	var moved time.Duration
	ok := underThreeCustomers(t, vm, []chaosStep{
		{"power off " + node, func() { _, err := localCluster("node-stop", node); g.Expect(err).NotTo(HaveOccurred()) }},
		{"wait for the machine to say its node is unreachable; nothing starts beside its pod", func() {
			waitNodeUnreachable(g, ns, victim, node)
			// The event follows the status write (events are sent in the background).
			g.Eventually(func(g Gomega) { g.Expect(eventReasons(g, vm)).To(ContainElement("NodeUnreachable")) }).Should(Succeed())
			g.Consistently(func(g Gomega) {
				g.Expect(currentPod(g, ns, victim).Name).To(Equal(before[victim]))
			}, 3*time.Second).Should(Succeed())
		}},
		{"fence " + node + " (out-of-service taint)", func() {
			fenced := time.Now()
			setTaint(g, node, true)
			g.Eventually(func(g Gomega) {
				got := &vendingv1alpha1.VendingMachine{}
				g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(vm), got)).To(Succeed())
				g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseRunning))
				p := currentPod(g, ns, victim)
				g.Expect(p.Spec.NodeName).NotTo(Equal(node))
			}).WithPolling(100 * time.Millisecond).Should(Succeed())
			moved = time.Since(fenced)
		}},
	})
	g.Expect(ok).To(BeTrue())
	got := &vendingv1alpha1.VendingMachine{}
	g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(vm), got)).To(Succeed())
	g.Expect(got.Status.PodCause).To(Equal(vendingv1alpha1.PodRecreated))
	g.Expect(got.Status.LastFailure.Reason).To(Equal(supervisor.ReasonNodeLost))
	g.Expect(got.Status.Recreations).To(BeEquivalentTo(1))
	g.Expect(got.Status.Restarts).To(BeZero(), "a lost node is not the machine's failure")
	for m, p := range before {
		if m != victim {
			g.Expect(currentPod(g, ns, m).Name).To(Equal(p), "machine %s on a healthy node was not touched", m)
		}
	}
	w.mu.Lock()
	g.Expect(w.maxLive[victim]).To(Equal(1), "never two pods of the machine at once")
	w.mu.Unlock()
	g.Expect(fleetStatus(g, f).Status.EscalationCount).To(BeZero())
	t.Logf("fenced → Ready on %s in %v", currentPod(g, ns, victim).Spec.NodeName, moved.Round(10*time.Millisecond))
}

// A partition: the node's link is cut, its kubelet, containerd and the machine's pod keep
// running. The operator starts no second pod (API side: one pod of the machine ever; node side:
// one running vending container across the nodes' containerds, and the pod inside the partition
// still answers), and when the link is back the machine is Ready on the same pod, every
// acknowledged answer standing.
func TestMultiNodePartitionKeepsOneWriter(t *testing.T) {
	nodes := requireNodes(t, 3)
	g := NewWithT(t)
	ctx := context.Background()
	ns := testNamespace(t, "e2e-partition-")
	op := operatorNode(g)
	target := ""
	for _, n := range nodes {
		if n != nodeZero && n != op {
			target = n
		}
	}
	g.Expect(target).NotTo(BeEmpty())
	for _, n := range nodes { // the machine lands on target
		if n != target {
			setCordon(g, n, true)
			t.Cleanup(func() { setCordon(NewWithT(t), n, false) })
		}
	}
	vm := createMachineNamed(t, ns, "coffee", func(vm *vendingv1alpha1.VendingMachine) {
		vm.Spec.Storage.StorageClassName = ptr.To(movableClass)
	})
	waitReady(g, vm)
	for _, n := range nodes {
		setCordon(g, n, false)
	}
	pod := currentPod(g, ns, "coffee")
	g.Expect(pod.Spec.NodeName).To(Equal(target))
	t.Cleanup(func() { _, _ = localCluster("node-heal", target) })
	w := watchPods(t, ns)

	ok := underThreeCustomers(t, vm, []chaosStep{
		{"cut " + target + "'s link", func() { _, err := localCluster("node-partition", target); g.Expect(err).NotTo(HaveOccurred()) }},
		{"one writer, seen from both sides", func() {
			waitNodeUnreachable(g, ns, "coffee", target)
			g.Consistently(func(g Gomega) {
				list := &corev1.PodList{}
				g.Expect(k8s.List(ctx, list, client.InNamespace(ns))).To(Succeed())
				g.Expect(list.Items).To(HaveLen(1), "API side: one pod of the machine")
				g.Expect(runningVending(g, nodes, ns)).To(Equal(map[string]int{target: 1}), "node side: one vending process, on %s", target)
			}, 5*time.Second, time.Second).Should(Succeed())
			out, err := localCluster("node-exec", target, "curl", "-s", "--max-time", "3",
				fmt.Sprintf("http://%s:%d/v1/state", pod.Status.PodIP, contract.Port))
			g.Expect(err).NotTo(HaveOccurred())
			var st contract.State
			g.Expect(json.Unmarshal([]byte(out), &st)).To(Succeed(), "inside the partition the pod still serves: %s", out)
			t.Logf("inside the partition, pod %s still answers: sequence %d, %d coins", pod.Name, st.Sequence, st.TotalCoins)
		}},
		{"heal " + target, func() { _, err := localCluster("node-heal", target); g.Expect(err).NotTo(HaveOccurred()) }},
		{"ready again on the same pod", func() {
			g.Eventually(func(g Gomega) {
				got := &vendingv1alpha1.VendingMachine{}
				g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(vm), got)).To(Succeed())
				g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseRunning))
				g.Expect(got.Status.PodName).To(Equal(pod.Name))
			}).Should(Succeed())
		}},
	})
	g.Expect(ok).To(BeTrue())
	w.mu.Lock()
	defer w.mu.Unlock()
	g.Expect(w.maxLive["coffee"]).To(Equal(1), "never two pods of the machine at once")
	g.Expect(runningVending(g, nodes, ns)).To(Equal(map[string]int{target: 1}))
}

// A drain of a node with two fleet machines: kubectl drain evicts them within the fleet's
// PodDisruptionBudget (one at a time: never fewer than replicas-1 ready), each starts on
// another node on its log, and the customers lose no acknowledged coin.
func TestMultiNodeDrainRespectsTheBudget(t *testing.T) {
	requireNodes(t, 3)
	g := NewWithT(t)
	ctx := context.Background()
	ns := testNamespace(t, "e2e-drain-")
	f := movableFleet(g, ns, 4)
	names := []string{"lobby-0", "lobby-1", "lobby-2", "lobby-3"}
	per := map[string][]string{}
	for _, m := range names {
		n := currentPod(g, ns, m).Spec.NodeName
		per[n] = append(per[n], m)
	}
	node := ""
	for n, ms := range per {
		if len(ms) >= 2 && (node == "" || n != operatorNode(g)) {
			node = n
		}
	}
	g.Expect(node).NotTo(BeEmpty(), "4 machines on 3 nodes: one node has two: %v", per)
	t.Logf("machines per node: %v; draining %s", per, node)
	t.Cleanup(func() { setCordon(NewWithT(t), node, false) })

	// One of the drained machines has three keyed customers whose history is checked (as in the
	// pull-the-plug test); the other machines have customers that count acknowledged coins.
	keyed := per[node][0]
	others := slices.DeleteFunc(slices.Clone(names), func(m string) bool { return m == keyed })
	start := map[string]int64{}
	for _, m := range others {
		c := customer.Client{Clientset: clientset, Namespace: ns, Service: m}
		g.Expect(c.PostUntil(ctx, "v1/coins", `{"count":1}`, "warm-"+m, time.Minute)).To(HaveStatus(200))
		var st contract.State
		g.Expect(json.Unmarshal([]byte(state(g, customer.Client{Clientset: clientset, Namespace: ns, Service: m})), &st)).To(Succeed())
		start[m] = st.TotalCoins
	}
	w := watchPods(t, ns)
	load := startCustomers(ctx, ns, "drain", others, true)
	vm := &vendingv1alpha1.VendingMachine{}
	g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: keyed}, vm)).To(Succeed())
	ok := underThreeCustomers(t, vm, []chaosStep{
		{"kubectl drain " + node, func() {
			out, err := exec.Command(kubectlPath(), "drain", node, "--ignore-daemonsets", "--delete-emptydir-data",
				"--timeout=5m").CombinedOutput()
			g.Expect(err).NotTo(HaveOccurred(), "kubectl drain: %s", out)
			t.Logf("kubectl drain %s:\n%s", node, out)
		}},
		{"every machine Ready off " + node, func() {
			g.Eventually(func(g Gomega) {
				g.Expect(fleetStatus(g, f).Status.ReadyMachines).To(BeEquivalentTo(4))
				for _, m := range names {
					g.Expect(currentPod(g, ns, m).Spec.NodeName).NotTo(Equal(node))
				}
			}).WithTimeout(3 * time.Minute).Should(Succeed())
		}},
	})
	load.halt()
	g.Expect(ok).To(BeTrue())
	w.mu.Lock()
	defer w.mu.Unlock()
	g.Expect(w.minReady).To(BeNumerically(">=", 3), "the budget (minAvailable 3) held through the drain")
	for _, m := range names {
		g.Expect(w.maxLive[m]).To(Equal(1), "never two pods of machine %s at once", m)
	}
	for _, m := range others {
		var st contract.State
		c := customer.Client{Clientset: clientset, Namespace: ns, Service: m}
		g.Expect(json.Unmarshal([]byte(state(g, c)), &st)).To(Succeed())
		g.Expect(st.TotalCoins).To(Equal(start[m]+load.coins[m]), "machine %s lost acknowledged coins in the drain", m)
	}
	t.Logf("drained %s: %s's history checked; %v coins acknowledged elsewhere, none lost; at least %d of 4 machines ready throughout",
		node, keyed, load.coins, w.minReady)
}

// movableFleet is a fleet of n machines on movable storage, once all are Ready.
func movableFleet(g Gomega, ns string, n int32, mutate ...func(*vendingv1alpha1.VendingFleet)) *vendingv1alpha1.VendingFleet {
	f := &vendingv1alpha1.VendingFleet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "lobby"}}
	f.Spec.Replicas = ptr.To(n)
	f.Spec.Template.Spec.Storage.WhenDeleted = vendingv1alpha1.DeletePVC
	f.Spec.Template.Spec.Storage.StorageClassName = ptr.To(movableClass)
	for _, m := range mutate {
		m(f)
	}
	g.Expect(k8s.Create(context.Background(), f)).To(Succeed())
	g.Eventually(func(g Gomega) { g.Expect(fleetStatus(g, f).Status.ReadyMachines).To(BeEquivalentTo(n)) }).Should(Succeed())
	return f
}

func kubectlPath() string {
	if k := os.Getenv("KUBECTL"); k != "" {
		return k
	}
	return "../../bin/k8s/v1.37.2/kubectl"
}
