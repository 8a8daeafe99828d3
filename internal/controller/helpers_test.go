package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
)

// The tests play the kubelet: pods get IP 127.0.0.1, and what a pod reports on /v1/state comes
// from this loopback server (the vending pod's side of the contract).
var (
	podStateMu sync.Mutex
	podState   = contract.State{TotalCoins: 7, Sequence: 3}
)

// podStateReads counts the operator's requests to the pods' state (all pods share the fake).
var podStateReads atomic.Int64

func setPodState(s contract.State) { podStateMu.Lock(); podState = s; podStateMu.Unlock() }

func startFakePodAPI() StateReader {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		podStateMu.Lock()
		defer podStateMu.Unlock()
		podStateReads.Add(1)
		_ = json.NewEncoder(w).Encode(podState)
	}))
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	p, _ := strconv.Atoi(port)
	return &HTTPStateReader{Client: &http.Client{Timeout: time.Second}, Port: p}
}

func newMachine(ns, name string, mutate func(*vendingv1alpha1.VendingMachine)) *vendingv1alpha1.VendingMachine {
	vm := &vendingv1alpha1.VendingMachine{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	if mutate != nil {
		mutate(vm)
	}
	return vm
}

func createMachine(t *testing.T, ns, name string, mutate func(*vendingv1alpha1.VendingMachine)) *vendingv1alpha1.VendingMachine {
	t.Helper()
	vm := newMachine(ns, name, mutate)
	if err := k8sClient.Create(context.Background(), vm); err != nil {
		t.Fatalf("creating machine: %v", err)
	}
	return vm
}

func fastBackoff(d time.Duration) func(*vendingv1alpha1.VendingMachine) {
	return func(vm *vendingv1alpha1.VendingMachine) {
		vm.Spec.Supervision.Backoff.Initial = &metav1.Duration{Duration: d}
		vm.Spec.Supervision.Backoff.Max = &metav1.Duration{Duration: d}
	}
}

func getMachine(g Gomega, vm *vendingv1alpha1.VendingMachine) *vendingv1alpha1.VendingMachine {
	out := &vendingv1alpha1.VendingMachine{}
	g.Expect(k8sClient.Get(context.Background(), client.ObjectKeyFromObject(vm), out)).To(Succeed())
	return out
}

// waitPod waits for the machine's pod of the given incarnation.
func waitPod(g Gomega, vm *vendingv1alpha1.VendingMachine, n int) *corev1.Pod {
	pod := &corev1.Pod{}
	key := client.ObjectKey{Namespace: vm.Namespace, Name: fmt.Sprintf("%s-%d", vm.Name, n)}
	g.Eventually(func() error { return k8sClient.Get(context.Background(), key, pod) }).Should(Succeed())
	return pod
}

// kubeletRun reports the pod running and ready, as a kubelet would (on the suite's clock, which
// tests may have stepped).
func kubeletRun(g Gomega, pod *corev1.Pod) { kubeletRunAt(g, pod, "127.0.0.1") }

// kubeletRunAt is kubeletRun with the pod's IP.
func kubeletRunAt(g Gomega, pod *corev1.Pod, ip string) {
	now := metav1.NewTime(testClock.Now())
	pod.Status = corev1.PodStatus{
		Phase: corev1.PodRunning, PodIP: ip,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}},
		ContainerStatuses: []corev1.ContainerStatus{{Name: "vending", Ready: true, Image: pod.Spec.Containers[0].Image,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}}},
	}
	g.Expect(k8sClient.Status().Update(context.Background(), pod)).To(Succeed())
}

// kubeletFail reports the vending container terminated with an exit code and a termination
// message, as a kubelet would.
func kubeletFail(g Gomega, pod *corev1.Pod, exitCode int32, msg string) {
	g.Expect(k8sClient.Get(context.Background(), client.ObjectKeyFromObject(pod), pod)).To(Succeed())
	now := metav1.NewTime(testClock.Now())
	pod.Status.Phase = corev1.PodFailed
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse, LastTransitionTime: now}}
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "vending", Image: pod.Spec.Containers[0].Image,
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: exitCode, Message: msg, Reason: "Error", StartedAt: now, FinishedAt: now}}}}
	g.Expect(k8sClient.Status().Update(context.Background(), pod)).To(Succeed())
}

func outOfBeansMessage(order string) string {
	b, _ := json.Marshal(contract.TerminationMessage{Reason: contract.ReasonOutOfCoffeeBeans, ExitCode: contract.ExitOutOfCoffeeBeans,
		Message: "out of coffee beans", PendingOrder: order, Sequence: 9, Time: time.Now()})
	return string(b)
}

func failureMessage(reason string) string {
	b, _ := json.Marshal(contract.TerminationMessage{Reason: reason, Message: reason + " happened", Time: time.Now()})
	return string(b)
}

// eventReasons lists the reasons of the events about the machine, in order.
func eventReasons(g Gomega, vm *vendingv1alpha1.VendingMachine) []string {
	list := &eventsv1.EventList{}
	g.Expect(k8sClient.List(context.Background(), list, client.InNamespace(vm.Namespace))).To(Succeed())
	var out []string
	for _, e := range list.Items {
		if e.Regarding.Name == vm.Name && e.Regarding.Kind == "VendingMachine" {
			out = append(out, e.Reason)
		}
	}
	return out
}

func condition(vm *vendingv1alpha1.VendingMachine, t string) *metav1.Condition {
	for i := range vm.Status.Conditions {
		if vm.Status.Conditions[i].Type == t {
			return &vm.Status.Conditions[i]
		}
	}
	return nil
}
