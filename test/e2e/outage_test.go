//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/customer"
)

// outage is how long the API server stays away: longer than the operator's lease (15 s), so the
// operator loses its leadership and must campaign again, and longer than client-go's 30 s
// reflector backoff, which a manager that merely waited would be stuck in.
const outage = 60 * time.Second

// An API server outage: with a machine Ready, the API server stops for 60 s; meanwhile the
// machine's vending container is SIGKILLed. When the API server answers again the operator, which
// never exited (its pod's restartCount does not move), supervises the failure it could not see:
// the machine is Ready again on a new pod, not escalated, its log intact. The time from "the API
// server answers /readyz" to "the machine is Ready" is logged, not asserted (BENCHMARKS.md).
//
// Only the local cluster can stop its API server (hack/local-cluster.sh apiserver-kill, a crash, or
// apiserver-stop, a graceful stop; make test-e2e sets E2E_APISERVER_STOP/E2E_APISERVER_START to the
// crash); elsewhere (kind) the test skips.
func TestAPIServerOutage(t *testing.T) {
	stopAPI, startAPI := os.Getenv("E2E_APISERVER_STOP"), os.Getenv("E2E_APISERVER_START")
	if stopAPI == "" || startAPI == "" {
		t.Skip("E2E_APISERVER_STOP/E2E_APISERVER_START not set: this cluster's API server cannot be stopped " +
			"(make test-e2e sets them for the local cluster)")
	}
	g := NewWithT(t)
	ctx := context.Background()
	vm := createMachine(t, func(vm *vendingv1alpha1.VendingMachine) {
		vm.Spec.Supervision.MaxRestarts = ptr.To[int32](10)
	})
	// A second machine, whose vending process (not its container) is killed during the outage:
	// its pod's own supervisor heals it with no API server, and its status catches up after.
	inPlace := createMachineNamed(t, vm.Namespace, "inplace", nil)
	waitReady(g, vm)
	waitReady(g, inPlace)
	c := customer.Client{Clientset: clientset, Namespace: vm.Namespace, Service: vm.Name}
	inPlaceStatus := machine(g, inPlace).Status
	inPlacePID1 := podPID1(g, inPlace)
	inPlacePod := &corev1.Pod{}
	g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: vm.Namespace, Name: inPlaceStatus.PodName}, inPlacePod)).To(Succeed())

	// Something acknowledged in the log: an Espresso paid for, and a coin inserted for the next.
	g.Expect(c.PostUntil(ctx, "v1/coins", `{"count":3}`, "outage-coins", time.Minute)).To(HaveStatus(200))
	g.Expect(c.PostUntil(ctx, "v1/orders", `{"beverage":"Espresso"}`, "outage-espresso", time.Minute)).To(HaveStatus(200))
	var before contract.State
	g.Expect(json.Unmarshal([]byte(state(g, c)), &before)).To(Succeed())

	operator := operatorPods(g)
	g.Expect(operator).NotTo(BeEmpty(), "no operator pod in vending-operator-system")
	// What the outage needs while the API server is away: the pod's name and its container's id.
	got := machine(g, vm)
	oldPod, container := got.Status.PodName, vendingContainerID(g, vm.Namespace, got.Status.PodName)
	restartsBefore := got.Status.Restarts

	t.Logf("outage: stopping the API server for %v", outage)
	g.Expect(exec.Command("sh", "-c", stopAPI).Run()).To(Succeed())
	t.Cleanup(func() { _ = exec.Command("sh", "-c", startAPI).Run() }) // a failed test leaves the cluster usable
	time.Sleep(outage / 2)
	t.Log("outage: SIGKILL the vending container while the API server is away")
	killTask(g, container)
	t.Log("outage: SIGKILL the other machine's vending process; it must serve a durable reply again, API server or not")
	killChildOf(g, inPlacePID1)
	direct := &http.Client{Timeout: 2 * time.Second}
	url := "http://" + net.JoinHostPort(inPlacePod.Status.PodIP, strconv.Itoa(contract.Port)) + "/v1/coins"
	g.Eventually(func() int {
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(`{"count":1}`))
		req.Header.Set("Idempotency-Key", "during-outage")
		resp, err := direct.Do(req)
		if err != nil {
			return 0
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}).WithTimeout(10*time.Second).Should(Equal(200), "the machine did not heal in place while the API server was away")
	time.Sleep(outage / 2)

	// Start the API server in the background and catch the first moment it answers /readyz
	// ourselves: the script's own wait would add its polling to the measured time.
	start := exec.Command("sh", "-c", startAPI)
	g.Expect(start.Start()).To(Succeed())
	g.Eventually(func() error {
		return clientset.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Error()
	}).WithPolling(50 * time.Millisecond).Should(Succeed())
	answered := time.Now()

	var replaced time.Time // when the operator's status first names a new pod: the supervisor acted
	g.Eventually(func(g Gomega) {
		got := machine(g, vm)
		g.Expect(got.Status.PodName).NotTo(Equal(oldPod))
		if replaced.IsZero() {
			replaced = time.Now()
		}
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseRunning), "conditions: %+v", got.Status.Conditions)
	}).WithPolling(100 * time.Millisecond).Should(Succeed())
	recovered := time.Since(answered)
	g.Expect(start.Wait()).To(Succeed())
	t.Logf("outage: the machine was Ready %v after the API server answered /readyz again; its status named the new pod after %v",
		recovered.Round(10*time.Millisecond), replaced.Sub(answered).Round(10*time.Millisecond))
	logRecovery(t, g, vm, answered)

	// The in-place restart reaches the status once the API server is back; the pod stayed.
	g.Eventually(func(g Gomega) {
		got := machine(g, inPlace)
		g.Expect(got.Status.InPlaceRestarts).To(Equal(inPlaceStatus.InPlaceRestarts + 1))
		g.Expect(got.Status.PodName).To(Equal(inPlaceStatus.PodName))
	}).WithTimeout(3 * time.Minute).Should(Succeed())

	// The operator rode it out in its process: same pods, not one container restart.
	g.Expect(operatorPods(g)).To(Equal(operator), "the operator's pods and their restart counts (uid -> restarts)")
	for uid, restarts := range operator {
		g.Expect(restarts).To(BeZero(), "operator pod %s has restarted", uid)
	}

	// The machine recovered, it was not escalated, and its log came back whole.
	got = machine(g, vm)
	g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseRunning))
	g.Expect(got.Status.Restarts).To(BeNumerically(">", restartsBefore), "the failure went through the supervisor")
	// The Service routes to the new pod once the cluster's endpoints controller has caught up
	// after the outage (its watch backs off too): wait for it longer than state() does.
	r := c.GetUntil(ctx, "v1/state", 3*time.Minute)
	g.Expect(r.Code).To(Equal(200), "GET /v1/state: %s", r.Body)
	var after contract.State
	g.Expect(json.Unmarshal([]byte(r.Body), &after)).To(Succeed())
	g.Expect(after.TotalCoins).To(Equal(before.TotalCoins))
	g.Expect(after.Inserted).To(Equal(before.Inserted))
	g.Expect(after.Dispensed).To(Equal(before.Dispensed))
	// The acknowledged order answers its retry with the first answer: no second Espresso.
	g.Expect(c.PostUntil(ctx, "v1/orders", `{"beverage":"Espresso"}`, "outage-espresso", time.Minute)).To(HaveStatus(200))
	g.Expect(json.Unmarshal([]byte(state(g, c)), &after)).To(Succeed())
	g.Expect(after.Dispensed).To(Equal(before.Dispensed))
}

// operatorPods maps each operator pod's uid to the restart count of its containers.
func operatorPods(g Gomega) map[types.UID]int32 {
	list := &corev1.PodList{}
	g.Expect(k8s.List(context.Background(), list, client.InNamespace("vending-operator-system"),
		client.MatchingLabels{"control-plane": "controller-manager"})).To(Succeed())
	out := map[types.UID]int32{}
	for _, p := range list.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		var n int32
		for _, s := range p.Status.ContainerStatuses {
			n += s.RestartCount
		}
		out[p.UID] = n
	}
	return out
}

// vendingContainerID is the containerd id of the pod's vending container.
func vendingContainerID(g Gomega, ns, pod string) string {
	p := &corev1.Pod{}
	g.Expect(k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: pod}, p)).To(Succeed())
	g.Expect(p.Status.ContainerStatuses).NotTo(BeEmpty())
	_, id, _ := strings.Cut(p.Status.ContainerStatuses[0].ContainerID, "://")
	return id
}

// killTask SIGKILLs a container through the node's containerd, as killContainer does, without
// asking the API server anything.
func killTask(g Gomega, id string) {
	args := append(ctrCommand(), "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id)
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	g.Expect(err).NotTo(HaveOccurred(), "%v: %s", args, out)
}

// logRecovery says where the recovery's time went, from the API server's return (the objects'
// times have a precision of one second): the operator creating the new pod, the scheduler binding
// it, the kubelet running it and the pod becoming Ready.
func logRecovery(t *testing.T, g Gomega, vm *vendingv1alpha1.VendingMachine, answered time.Time) {
	pod := &corev1.Pod{}
	g.Expect(k8s.Get(context.Background(), client.ObjectKey{Namespace: vm.Namespace, Name: machine(g, vm).Status.PodName}, pod)).
		To(Succeed())
	since := func(at metav1.Time) string { return at.Sub(answered).Round(time.Second).String() }
	var scheduled, ready string
	for _, c := range pod.Status.Conditions {
		switch c.Type {
		case corev1.PodScheduled:
			scheduled = since(c.LastTransitionTime)
		case corev1.PodReady:
			ready = since(c.LastTransitionTime)
		}
	}
	t.Logf("outage: after /readyz answered: pod %s created %s, scheduled %s, Ready %s", pod.Name,
		since(pod.CreationTimestamp), scheduled, ready)
}
