package controller

import (
	"context"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/supervisor"
)

// The tests play the node lifecycle controller and the kubelet: a Node object whose Ready
// condition they set, and pods they bind to it.

func createNode(t *testing.T, g Gomega, name string) *corev1.Node {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelHostname: name}}}
	g.Expect(k8sClient.Create(context.Background(), n)).To(Succeed())
	t.Cleanup(func() { _ = k8sClient.Delete(context.Background(), n) })
	setNodeReady(g, n, corev1.ConditionTrue)
	return n
}

func setNodeReady(g Gomega, n *corev1.Node, s corev1.ConditionStatus) {
	g.Eventually(func() error {
		if err := k8sClient.Get(context.Background(), client.ObjectKeyFromObject(n), n); err != nil {
			return err
		}
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: s, Reason: "Test",
			LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
		return k8sClient.Status().Update(context.Background(), n)
	}).Should(Succeed())
}

func fenceNode(g Gomega, n *corev1.Node) {
	g.Eventually(func() error {
		if err := k8sClient.Get(context.Background(), client.ObjectKeyFromObject(n), n); err != nil {
			return err
		}
		n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: supervisor.TaintOutOfService, Value: "nodeshutdown",
			Effect: corev1.TaintEffectNoExecute})
		return k8sClient.Update(context.Background(), n)
	}).Should(Succeed())
}

// bindAndRun schedules the pod on the node (as the scheduler does) and reports it running.
func bindAndRun(g Gomega, pod *corev1.Pod, node string) {
	b := &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace},
		Target: corev1.ObjectReference{Kind: "Node", Name: node}}
	g.Expect(k8sClient.SubResource("binding").Create(context.Background(), pod, b)).To(Succeed())
	g.Expect(k8sClient.Get(context.Background(), client.ObjectKeyFromObject(pod), pod)).To(Succeed())
	kubeletRun(g, pod)
}

// machineOnNewNode is machine coffee in ns, its pod bound to a new Ready node and running.
func machineOnNewNode(t *testing.T, g Gomega, ns string) (*corev1.Node, *vendingv1alpha1.VendingMachine, *corev1.Pod) {
	t.Helper()
	node := createNode(t, g, "n-"+ns)
	vm := createMachine(t, ns, "coffee", nil)
	pod := waitPod(g, vm, 0)
	bindAndRun(g, pod, node.Name)
	readyMachine(g, vm)
	return node, vm, pod
}

func readyMachine(g Gomega, vm *vendingv1alpha1.VendingMachine) {
	g.Eventually(func(g Gomega) {
		g.Expect(condition(getMachine(g, vm), vendingv1alpha1.ConditionReady)).To(
			HaveField("Status", metav1.ConditionTrue))
	}).Should(Succeed())
}

func count(xs []string, x string) int {
	n := 0
	for _, s := range xs {
		if s == x {
			n++
		}
	}
	return n
}

// A node that stops answering: the machine says so (Ready, Progressing, Stalled and one event,
// naming the node and what to do) and starts nothing beside its pod, which may still run.
// Fenced, or its Node deleted: the stuck pod is removed at once and the machine starts again
// on the same log, as a recreation outside the restart window.
func TestAMachineOnALostNodeMovesOnceItIsFenced(t *testing.T) {
	for _, how := range []string{"fenced", "deleted"} {
		t.Run(how, func(t *testing.T) {
			g := NewWithT(t)
			ns := newNamespace(t)
			node := createNode(t, g, "n-"+ns)
			vm := createMachine(t, ns, "coffee", nil)
			pod := waitPod(g, vm, 0)
			bindAndRun(g, pod, node.Name)
			readyMachine(g, vm)

			setNodeReady(g, node, corev1.ConditionUnknown)
			g.Eventually(func(g Gomega) {
				got := getMachine(g, vm)
				ready := condition(got, vendingv1alpha1.ConditionReady)
				g.Expect(ready.Reason).To(Equal(ReasonNodeUnreachable))
				g.Expect(ready.Message).To(And(ContainSubstring(node.Name), ContainSubstring("out-of-service")))
				g.Expect(condition(got, vendingv1alpha1.ConditionStalled)).To(HaveField("Reason", ReasonNodeUnreachable))
				g.Expect(condition(got, vendingv1alpha1.ConditionReconciling)).To(BeNil())
				g.Expect(got.Status.Phase).NotTo(Equal(vendingv1alpha1.PhaseRunning), "its pod's Ready is the unreachable kubelet's last word")
				g.Expect(eventReasons(g, vm)).To(ContainElement(ReasonNodeUnreachable))
			}).Should(Succeed())
			next := client.ObjectKey{Namespace: ns, Name: "coffee-1"}
			g.Consistently(func() bool {
				return apierrors.IsNotFound(k8sClient.Get(context.Background(), next, &corev1.Pod{}))
			}, 2*time.Second).Should(BeTrue(), "no second pod while the first may still run")

			if how == "fenced" {
				fenceNode(g, node)
			} else {
				g.Expect(k8sClient.Delete(context.Background(), node)).To(Succeed())
			}
			g.Eventually(func() bool {
				return apierrors.IsNotFound(k8sClient.Get(context.Background(), client.ObjectKeyFromObject(pod), &corev1.Pod{}))
			}).Should(BeTrue(), "the stuck pod is removed at once (no kubelet will confirm a graceful deletion)")
			waitPod(g, vm, 1)
			g.Eventually(func(g Gomega) {
				got := getMachine(g, vm)
				g.Expect(got.Status.PodName).To(Equal("coffee-1"))
				g.Expect(got.Status.PodCause).To(Equal(vendingv1alpha1.PodRecreated))
				g.Expect(got.Status.Recreations).To(BeEquivalentTo(1))
				g.Expect(got.Status.RestartTimes).To(BeEmpty(), "a lost node is not the machine's failure")
				g.Expect(got.Status.LastFailure).To(HaveField("Reason", supervisor.ReasonNodeLost))
				g.Expect(got.Status.LastFailure.Message).To(ContainSubstring(node.Name))
				g.Expect(condition(got, vendingv1alpha1.ConditionStalled)).To(BeNil())
				events := eventReasons(g, vm)
				g.Expect(events).To(ContainElements("Disrupted", "Recreated"))
				g.Expect(count(events, ReasonNodeUnreachable)).To(Equal(1), "one event per loss: %v", events)
			}).Should(Succeed())
		})
	}
}

// A machine whose volume is pinned to the lost node (local storage) cannot move: it says so
// while the node is unreachable, and escalates once the node is fenced, with no pod left waiting
// for a node that will not come back.
func TestAMachinePinnedToALostNodeEscalates(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	node := createNode(t, g, "n-"+ns)
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-" + ns},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:               corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			AccessModes:            []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeSource: corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/tmp/" + ns}},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpIn,
					Values: []string{node.Name}}}}}}},
		}}
	g.Expect(k8sClient.Create(ctx, pv)).To(Succeed())
	t.Cleanup(func() { _ = k8sClient.Delete(ctx, pv) })
	// The claim, bound to it (as the volume binder would), before the machine asks for it.
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "coffee-log", Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{VolumeName: pv.Name,
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}}}
	g.Expect(k8sClient.Create(ctx, pvc)).To(Succeed())

	vm := createMachine(t, ns, "coffee", nil)
	pod := waitPod(g, vm, 0)
	bindAndRun(g, pod, node.Name)
	readyMachine(g, vm)
	setNodeReady(g, node, corev1.ConditionUnknown)
	g.Eventually(func(g Gomega) {
		ready := condition(getMachine(g, vm), vendingv1alpha1.ConditionReady)
		g.Expect(ready.Reason).To(Equal(ReasonNodeUnreachable))
		g.Expect(ready.Message).To(ContainSubstring("pinned to node " + node.Name))
	}).Should(Succeed())

	fenceNode(g, node)
	g.Eventually(func(g Gomega) {
		got := getMachine(g, vm)
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseEscalated))
		esc := condition(got, vendingv1alpha1.ConditionEscalated)
		g.Expect(esc).To(HaveField("Reason", supervisor.ReasonVolumePinned))
		g.Expect(strings.Contains(esc.Message, "cannot move")).To(BeTrue(), esc.Message)
		g.Expect(condition(got, vendingv1alpha1.ConditionStalled)).To(HaveField("Reason", supervisor.ReasonVolumePinned))
		g.Expect(eventReasons(g, vm)).To(ContainElement("Escalated"))
	}).Should(Succeed())
	g.Consistently(func() bool {
		return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "coffee-1"}, &corev1.Pod{}))
	}, 2*time.Second).Should(BeTrue(), "no pod is started that could only wait for the lost node")
}

// cacheWithoutNodes is a cache that has not seen any Node yet (a node that just registered).
type cacheWithoutNodes struct{ client.Client }

func (c cacheWithoutNodes) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if _, ok := obj.(*corev1.Node); ok {
		return apierrors.NewNotFound(corev1.Resource("nodes"), key.Name)
	}
	return c.Client.Get(ctx, key, obj, opts...)
}

// A node missing from the cache is read from the API server before it is taken as deleted: a
// pod on a node the cache has not seen yet must not pass for lost (its pod would be
// force-deleted while it runs).
func TestANodeMissingFromTheCacheIsNotTakenAsDeleted(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	node := createNode(t, g, "n-"+ns)
	r := &VendingMachineReconciler{Client: cacheWithoutNodes{k8sClient}, APIReader: k8sClient}
	pods := []corev1.Pod{{Spec: corev1.PodSpec{NodeName: node.Name}}, {Spec: corev1.PodSpec{NodeName: "gone-" + ns}}}
	states, err := r.nodesOf(context.Background(), false, pods)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(states).To(Equal(map[string]supervisor.NodeState{node.Name: supervisor.NodeUp, "gone-" + ns: supervisor.NodeGone}))
}
