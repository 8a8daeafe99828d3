package controller

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
)

// A machine settles with its three children and one status write, and no event (a first start
// is routine). Settled, it costs nothing: no write, and no request to its pod until something
// about the pod changes or someone asks (the read-state annotation). At 10,000 machines each of
// these is 10,000 requests (issue 13, BENCHMARKS.md).
func TestASettledMachineCostsNothing(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)

	// This machine's pod has an address of its own (127.0.0.2, on the port of the suite's fake),
	// so that requests to it are told from those to other tests' pods.
	var reads atomic.Int64
	var state atomic.Pointer[contract.State]
	state.Store(&contract.State{TotalCoins: 7, Sequence: 3})
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.2", strconv.Itoa(podAPI.(*HTTPStateReader).Port)))
	g.Expect(err).NotTo(HaveOccurred())
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		reads.Add(1)
		_ = json.NewEncoder(w).Encode(state.Load())
	})}
	go func() { _ = srv.Serve(ln) }()
	defer func() { _ = srv.Close() }()

	// Every write to the machine is a new version of it: the watch counts them.
	wc, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	g.Expect(err).NotTo(HaveOccurred())
	w, err := wc.Watch(ctx, &vendingv1alpha1.VendingMachineList{}, client.InNamespace(ns))
	g.Expect(err).NotTo(HaveOccurred())
	defer w.Stop()
	var writes atomic.Int32
	go func() {
		for ev := range w.ResultChan() {
			if ev.Type == watch.Modified {
				writes.Add(1)
				st, _ := json.Marshal(ev.Object.(*vendingv1alpha1.VendingMachine).Status)
				t.Logf("write %d: %s", writes.Load(), st)
			}
		}
	}()

	vm := createMachine(t, ns, "quiet", nil)
	pod := waitPod(g, vm, 0)
	kubeletRunAt(g, pod, "127.0.0.2")
	g.Eventually(func(g Gomega) {
		got := getMachine(g, vm)
		g.Expect(condition(got, vendingv1alpha1.ConditionReady)).To(HaveField("Status", metav1.ConditionTrue))
		g.Expect(got.Status.TotalCoins).To(HaveValue(BeEquivalentTo(7)))
	}).Should(Succeed())
	g.Eventually(writes.Load).Should(BeNumerically(">=", 1)) // the watch follows the reads above
	g.Consistently(writes.Load, 3*time.Second).Should(BeEquivalentTo(1),
		"settling writes the status once (the claim, Service and pod are the other writes)")
	g.Expect(eventReasons(g, vm)).To(BeEmpty(), "a first start is routine: no event")
	g.Expect(reads.Load()).To(BeEquivalentTo(1), "the pod is asked for its state once, as it turns Ready")

	// Something about the pod that does not change what it reports (a label someone adds)
	// wakes the supervisor, and asks the pod nothing.
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(pod), pod)).To(Succeed())
	pod.Labels["team"] = "coffee"
	g.Expect(k8sClient.Update(ctx, pod)).To(Succeed())
	g.Consistently(reads.Load, 2*time.Second).Should(BeEquivalentTo(1), "a pass is not a reason to ask the pod")

	// Asked for: read now; an answer that changes nothing writes nothing.
	annotate(g, vm, AnnotationReadState, "1")
	g.Eventually(reads.Load).Should(BeEquivalentTo(2), "the read-state annotation asks the pod")
	g.Eventually(writes.Load).Should(BeEquivalentTo(2))
	g.Consistently(writes.Load, 2*time.Second).Should(BeEquivalentTo(2), "the annotation itself is the only write")

	// Out of milk, asked again: the status says so.
	state.Store(&contract.State{TotalCoins: 9, Sequence: 5, Degraded: true})
	annotate(g, vm, AnnotationReadState, "2")
	g.Eventually(func(g Gomega) {
		got := getMachine(g, vm)
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseDegraded))
		g.Expect(got.Status.TotalCoins).To(HaveValue(BeEquivalentTo(9)))
	}).Should(Succeed())
	g.Expect(reads.Load()).To(BeEquivalentTo(3))
}

func annotate(g Gomega, vm *vendingv1alpha1.VendingMachine, key, value string) {
	got := getMachine(g, vm)
	patch := client.MergeFrom(got.DeepCopy())
	if got.Annotations == nil {
		got.Annotations = map[string]string{}
	}
	got.Annotations[key] = value
	g.Expect(k8sClient.Patch(context.Background(), got, patch)).To(Succeed())
}
