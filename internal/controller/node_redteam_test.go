package controller

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/supervisor"
)

// Node-loss red team (envtest): G1 (unreachable: nothing started, nothing forced), G2 (fenced or
// deleted: moved once), G3 (pinned: escalates), G4 (the condition, one event per loss).

// rtPinnedClaim makes a PersistentVolume pinned to node (local storage) and the claim name
// bound to it, before the machine that uses the claim exists.
func rtPinnedClaim(t *testing.T, g Gomega, ns, claim, node string) {
	t.Helper()
	ctx := context.Background()
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-" + ns + "-" + claim},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:               corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			AccessModes:            []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeSource: corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/tmp/" + ns}},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpIn,
					Values: []string{node}}}}}}},
		}}
	g.Expect(k8sClient.Create(ctx, pv)).To(Succeed())
	t.Cleanup(func() { _ = k8sClient.Delete(ctx, pv) })
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: claim, Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{VolumeName: pv.Name,
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}}}
	g.Expect(k8sClient.Create(ctx, pvc)).To(Succeed())
}

func rtPodGone(ns, name string) bool {
	return apierrors.IsNotFound(k8sClient.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &corev1.Pod{}))
}

// rtNoPod holds for a while: no pod of that name appears.
func rtNoPod(g Gomega, ns, name, why string) {
	g.Consistently(func() bool { return rtPodGone(ns, name) }, 2*time.Second).Should(BeTrue(), why)
}

// rtNotForced: the pod exists and, if it is being deleted, gracefully.
func rtNotForced(g Gomega, ns, name string) {
	p := &corev1.Pod{}
	g.Expect(k8sClient.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, p)).To(Succeed(), "pod %s is gone", name)
	if p.DeletionTimestamp != nil {
		g.Expect(p.DeletionGracePeriodSeconds).NotTo(BeNil())
		g.Expect(*p.DeletionGracePeriodSeconds).To(BeNumerically(">", 0), "pod %s force-deleted", name)
	}
}

func rtSetReset(g Gomega, vm *vendingv1alpha1.VendingMachine, v string) {
	g.Eventually(func() error {
		got := getMachine(g, vm)
		if got.Annotations == nil {
			got.Annotations = map[string]string{}
		}
		got.Annotations[supervisor.AnnotationReset] = v
		return k8sClient.Update(context.Background(), got)
	}).Should(Succeed())
}

func rtWaitUnreachable(g Gomega, vm *vendingv1alpha1.VendingMachine, node string) {
	g.Eventually(func(g Gomega) {
		got := getMachine(g, vm)
		ready := condition(got, vendingv1alpha1.ConditionReady)
		g.Expect(ready).NotTo(BeNil())
		g.Expect(ready.Reason).To(Equal(ReasonNodeUnreachable))
		g.Expect(ready.Message).To(ContainSubstring(node))
		g.Expect(condition(got, vendingv1alpha1.ConditionProgressing)).To(HaveField("Reason", ReasonNodeUnreachable))
		g.Expect(condition(got, vendingv1alpha1.ConditionStalled)).To(HaveField("Reason", ReasonNodeUnreachable))
	}).Should(Succeed())
}

// A reset (annotation) and a second one, then a spec change (a roll), while the node is
// unreachable: nothing is started, the pod is never force-deleted, the machine keeps saying
// NodeUnreachable. Fenced, the reserved incarnation is created once; no name is skipped twice.
func TestRedTeamNodeResetAndRollWhileUnreachable(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	node, vm, _ := machineOnNewNode(t, g, ns)

	setNodeReady(g, node, corev1.ConditionUnknown)
	rtWaitUnreachable(g, vm, node.Name)
	rtSetReset(g, vm, "r1")
	g.Eventually(func(g Gomega) { g.Expect(getMachine(g, vm).Status.ObservedReset).To(Equal("r1")) }).Should(Succeed())
	rtNoPod(g, ns, "coffee-1", "reset while unreachable: no second pod")
	rtNotForced(g, ns, "coffee-0")
	rtSetReset(g, vm, "r2")
	g.Eventually(func(g Gomega) { g.Expect(getMachine(g, vm).Status.ObservedReset).To(Equal("r2")) }).Should(Succeed())
	g.Eventually(func() error { // a roll
		got := getMachine(g, vm)
		got.Spec.Image = "vendingfleet/vendingpod:other"
		return k8sClient.Update(context.Background(), got)
	}).Should(Succeed())
	for _, n := range []string{"coffee-1", "coffee-2", "coffee-3"} {
		rtNoPod(g, ns, n, "reset/roll while unreachable: no second pod")
	}
	rtNotForced(g, ns, "coffee-0")
	rtWaitUnreachable(g, vm, node.Name)

	fenceNode(g, node)
	g.Eventually(func() bool { return rtPodGone(ns, "coffee-0") }).Should(BeTrue(), "fenced: the stuck pod goes at once")
	var name string
	g.Eventually(func(g Gomega) {
		got := getMachine(g, vm)
		name = got.Status.PodName
		g.Expect(rtPodGone(ns, name)).To(BeFalse(), "the reserved incarnation %s is created", name)
		g.Expect(got.Status.Resets).To(BeEquivalentTo(2))
		g.Expect(got.Status.RestartTimes).To(BeEmpty())
	}).Should(Succeed())
	time.Sleep(time.Second)
	pods := &corev1.PodList{}
	g.Expect(k8sClient.List(context.Background(), pods, client.InNamespace(ns))).To(Succeed())
	g.Expect(pods.Items).To(HaveLen(1), "exactly one pod after the move")
	g.Expect(pods.Items[0].Name).To(Equal(name))
}

// The node flaps Unknown → Ready → Unknown, with an operator restart in the first loss: one
// NodeUnreachable event per loss (the restart may repeat one), and Ready again in between.
func TestRedTeamNodeFlappingEvents(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	node, vm, _ := machineOnNewNode(t, g, ns)

	setNodeReady(g, node, corev1.ConditionUnknown)
	rtWaitUnreachable(g, vm, node.Name)
	g.Eventually(func(g Gomega) { g.Expect(count(eventReasons(g, vm), ReasonNodeUnreachable)).To(Equal(1)) }).Should(Succeed())
	setNodeReady(g, node, corev1.ConditionFalse) // still not Ready: no news
	g.Expect(restartManager()).To(Succeed())
	poke(g, vm)
	time.Sleep(2 * time.Second)
	g.Expect(count(eventReasons(g, vm), ReasonNodeUnreachable)).To(BeNumerically("<=", 2), "one per loss (+1 for a restart)")
	first := count(eventReasons(g, vm), ReasonNodeUnreachable)

	setNodeReady(g, node, corev1.ConditionTrue)
	readyMachine(g, vm)
	setNodeReady(g, node, corev1.ConditionUnknown)
	rtWaitUnreachable(g, vm, node.Name)
	g.Eventually(func(g Gomega) {
		g.Expect(count(eventReasons(g, vm), ReasonNodeUnreachable)).To(Equal(first + 1))
	}).Should(Succeed())
	for range 3 {
		poke(g, vm)
	}
	time.Sleep(2 * time.Second)
	g.Expect(count(eventReasons(g, vm), ReasonNodeUnreachable)).To(Equal(first+1), "no spam across passes")
	rtNoPod(g, ns, "coffee-1", "never a second pod while unreachable")
}

// The taint manager's eviction (a graceful deletion no kubelet confirms) on an unreachable
// node, then the node fenced: the successor reserved at the eviction is created once, counted
// once; the stuck pod is force-deleted.
func TestRedTeamNodeEvictedThenFenced(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	node, vm, pod := machineOnNewNode(t, g, ns)

	setNodeReady(g, node, corev1.ConditionUnknown)
	rtWaitUnreachable(g, vm, node.Name)
	g.Expect(k8sClient.Delete(ctx, pod, client.GracePeriodSeconds(30))).To(Succeed())
	g.Eventually(func(g Gomega) { g.Expect(getMachine(g, vm).Status.PodName).To(Equal("coffee-1")) }).Should(Succeed())
	rtNoPod(g, ns, "coffee-1", "evicted on an unreachable node: the old pod may still run")
	rtNotForced(g, ns, "coffee-0")
	rtWaitUnreachable(g, vm, node.Name)

	fenceNode(g, node)
	g.Eventually(func() bool { return rtPodGone(ns, "coffee-0") }).Should(BeTrue())
	waitPod(g, vm, 1)
	g.Eventually(func(g Gomega) {
		got := getMachine(g, vm)
		g.Expect(got.Status.PodName).To(Equal("coffee-1"))
		g.Expect(got.Status.PodCause).To(Equal(vendingv1alpha1.PodRecreated))
		g.Expect(got.Status.Recreations).To(BeEquivalentTo(1))
		g.Expect(got.Status.RestartTimes).To(BeEmpty())
	}).Should(Succeed())
	rtNoPod(g, ns, "coffee-2", "created once")
}

// A machine deleted while its pod's node is unreachable and created again under its name (a
// GitOps tool re-applies it): the predecessor's pod may still run there, so nothing is started
// (held), and the machine should say why and what a human can do (G4: NodeUnreachable naming the
// node). It says instead that its pod "does not exist yet", with no Stalled, forever.
func TestRedTeamNodePredecessorOnAnUnreachableNode(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	node, vm, _ := machineOnNewNode(t, g, ns)
	setNodeReady(g, node, corev1.ConditionUnknown)
	rtWaitUnreachable(g, vm, node.Name)

	g.Expect(k8sClient.Delete(ctx, vm)).To(Succeed())
	g.Eventually(func() bool {
		return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(vm), &vendingv1alpha1.VendingMachine{}))
	}).Should(BeTrue())
	vm2 := createMachine(t, ns, "coffee", nil)
	rtNoPod(g, ns, "coffee-1", "a predecessor's pod may still run on the claim")
	g.Eventually(func(g Gomega) {
		got := getMachine(g, vm2)
		ready := condition(got, vendingv1alpha1.ConditionReady)
		g.Expect(ready).NotTo(BeNil())
		g.Expect(ready.Reason).To(Equal(ReasonNodeUnreachable), ready.Message)
		g.Expect(ready.Message).To(ContainSubstring(node.Name))
		g.Expect(condition(got, vendingv1alpha1.ConditionStalled)).To(HaveField("Reason", ReasonNodeUnreachable))
	}).Should(Succeed())
}

// A fleet's machine whose volume is pinned to its node; the node is lost and fenced: the
// machine escalates (VolumePinnedToLostNode), and its fleet resets it, as it resets every
// escalation. The reset creates a pod that can only wait for the fenced node for good, and the
// machine no longer reads as escalated: G3 ("escalates instead of creating a pod") is undone by
// the very next actor.
func TestRedTeamNodeFleetResetOfAPinnedMachine(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	node := createNode(t, g, "n-"+ns)
	rtPinnedClaim(t, g, ns, "f-0-log", node.Name)
	f := createFleet(t, ns, 1, nil)
	m := fleetMachine(ns, 0)
	bindAndRun(g, waitPod(g, m, 0), node.Name)
	readyMachine(g, m)

	setNodeReady(g, node, corev1.ConditionUnknown)
	rtWaitUnreachable(g, m, node.Name)
	fenceNode(g, node)
	g.Eventually(func(g Gomega) {
		got := getMachine(g, m)
		g.Expect(got.Status.LastFailure).NotTo(BeNil())
		g.Expect(got.Status.LastFailure.DecisionReason).To(Equal(supervisor.ReasonVolumePinned))
	}).Should(Succeed())
	_ = f
	g.Consistently(func(g Gomega) {
		got := getMachine(g, m)
		g.Expect(rtPodGone(ns, "f-0-1")).To(BeTrue(), "the volume is pinned to the fenced node: a new pod could only wait "+
			"for it (resets %d, cause %s, phase %s)", got.Status.Resets, got.Status.PodCause, got.Status.Phase)
		g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseEscalated), "still escalated")
	}, 2*time.Second).Should(Succeed())
}

// rtNodeRig: the machine settled by the suite's operator, which is then suspended; a reconciler
// driven by hand with the client given takes over.
func rtNodeRig(t *testing.T, g Gomega, ns string, vm *vendingv1alpha1.VendingMachine, cl client.Client,
	created *[]string) *VendingMachineReconciler {
	t.Helper()
	g.Eventually(func(g Gomega) { g.Expect(getMachine(g, vm).Status.PodUID).NotTo(BeEmpty()) }).Should(Succeed())
	suspendManager(t)
	direct, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	g.Expect(err).NotTo(HaveOccurred())
	_ = ns
	_ = created
	return &VendingMachineReconciler{Client: cl, Scheme: scheme, Recorder: events.NewFakeRecorder(100), VendingImage: DefaultVendingImage,
		Clock: testClock, APIReader: direct}
}

// The operator's cache still shows the node fenced after a human took the fence back (the node
// was only partitioned: its pod still runs). The step that creates a pod is decided "again on
// live reads" (decide), but the nodes are read from the cache both times: the pod is force-deleted
// and a second one created beside it. G1: "... stale caches".
func TestRedTeamNodeStaleFenceInTheCache(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	node, vm, _ := machineOnNewNode(t, g, ns)
	setNodeReady(g, node, corev1.ConditionUnknown) // the truth: unreachable, not fenced

	var created []string
	r := rtNodeRig(t, g, ns, vm, fencedInCache(g, node.Name, &created), &created)
	_, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(vm)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(created).To(BeEmpty(), "the node is merely unreachable (live): its pod may still run")
	rtNotForced(g, ns, "coffee-0")
}

// The pod cache has not seen the machine's pod (a lagging informer) when its node, to which the
// machine's volume is pinned, is fenced. The cached view has no pod not up, so the pinned node
// is not read; the live re-read then finds the pod on the fenced node, and the decision is taken
// with PinnedTo "": a pod is created that can only wait for the lost node, instead of the
// escalation (G3).
func TestRedTeamNodePinnedWithALaggingPodCache(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	node := createNode(t, g, "n-"+ns)
	rtPinnedClaim(t, g, ns, "coffee-log", node.Name)
	vm := createMachine(t, ns, "coffee", nil)
	bindAndRun(g, waitPod(g, vm, 0), node.Name)
	readyMachine(g, vm)

	c, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	g.Expect(err).NotTo(HaveOccurred())
	var created []string
	lagging := interceptor.NewClient(c, interceptor.Funcs{List: hidePods, Create: recordPodCreates(&created)})
	r := rtNodeRig(t, g, ns, vm, lagging, &created)
	setNodeReady(g, node, corev1.ConditionUnknown)
	fenceNode(g, node)
	_, err = r.Reconcile(ctx, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(vm)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(created).To(BeEmpty(), "pinned to the fenced node: no pod that could only wait for it")
	got := getMachine(g, vm)
	g.Expect(got.Status.LastFailure).NotTo(BeNil())
	g.Expect(got.Status.LastFailure.DecisionReason).To(Equal(supervisor.ReasonVolumePinned))
}

// pinnedNode: required node affinity terms are ORed. A term that does not name a single
// hostname (a zone, several hosts) lets the volume go elsewhere: it is not pinned. Taking it as
// pinned escalates a machine that could have moved (false escalation, no safety issue).
func TestRedTeamNodePinnedNodeWithOredTerms(t *testing.T) {
	host := func(vs ...string) corev1.NodeSelectorTerm {
		return corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: corev1.LabelHostname,
			Operator: corev1.NodeSelectorOpIn, Values: vs}}}
	}
	zone := corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: corev1.LabelTopologyZone,
		Operator: corev1.NodeSelectorOpIn, Values: []string{"z1"}}}}
	pv := func(terms ...corev1.NodeSelectorTerm) *corev1.PersistentVolume {
		return &corev1.PersistentVolume{Spec: corev1.PersistentVolumeSpec{NodeAffinity: &corev1.VolumeNodeAffinity{
			Required: &corev1.NodeSelector{NodeSelectorTerms: terms}}}}
	}
	g := NewWithT(t)
	g.Expect(pinnedNode(pv(host("n1")))).To(Equal("n1"))
	g.Expect(pinnedNode(pv(host("n1"), zone))).To(Equal(""), "n1 OR any node of zone z1")
	g.Expect(pinnedNode(pv(host("n1"), host("n1", "n2")))).To(Equal(""), "n1 OR n1/n2")
}

// The common timeline for a pinned volume: unreachable past the pods' tolerationSeconds, the
// taint manager evicts the pod (graceful, never confirmed), the successor is reserved; then a
// human fences the node. The successor is created on the volume pinned to the fenced node (a pod
// that waits for good) instead of the escalation. G3.
func TestRedTeamNodePinnedEvictedBeforeTheFence(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	node := createNode(t, g, "n-"+ns)
	rtPinnedClaim(t, g, ns, "coffee-log", node.Name)
	vm := createMachine(t, ns, "coffee", nil)
	pod := waitPod(g, vm, 0)
	bindAndRun(g, pod, node.Name)
	readyMachine(g, vm)
	setNodeReady(g, node, corev1.ConditionUnknown)
	rtWaitUnreachable(g, vm, node.Name)
	g.Expect(k8sClient.Delete(ctx, pod, client.GracePeriodSeconds(30))).To(Succeed()) // the taint manager, 300 s later
	g.Eventually(func(g Gomega) { g.Expect(getMachine(g, vm).Status.PodName).To(Equal("coffee-1")) }).Should(Succeed())
	fenceNode(g, node)
	g.Eventually(func() bool { return rtPodGone(ns, "coffee-0") }).Should(BeTrue())
	rtNoPod(g, ns, "coffee-1", "the volume is pinned to the fenced node: a new pod could only wait for it")
	got := getMachine(g, vm)
	g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhaseEscalated))
}

// A fence the cache still shows but a human took back, on a machine whose volume is pinned to
// the node: no escalation is decided on it (an escalation creates nothing, so it is not decided
// again on live reads: the fence itself is confirmed live).
func TestStaleFenceDoesNotEscalateAPinnedMachine(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	node := createNode(t, g, "n-"+ns)
	rtPinnedClaim(t, g, ns, "coffee-log", node.Name)
	vm := createMachine(t, ns, "coffee", nil)
	bindAndRun(g, waitPod(g, vm, 0), node.Name)
	readyMachine(g, vm)
	setNodeReady(g, node, corev1.ConditionUnknown) // the truth: unreachable, not fenced

	var created []string
	r := rtNodeRig(t, g, ns, vm, fencedInCache(g, node.Name, &created), &created)
	_, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(vm)})
	g.Expect(err).NotTo(HaveOccurred())
	got := getMachine(g, vm)
	g.Expect(got.Status.LastFailure).To(BeNil(), "no decision on a fence that is not there")
	g.Expect(got.Status.Phase).NotTo(Equal(vendingv1alpha1.PhaseEscalated))
	rtNotForced(g, ns, "coffee-0")
}

// fencedInCache is a client whose reads of the node show the out-of-service taint (what a cache
// saw a moment ago: the fence, since taken back); it records the pods created.
func fencedInCache(g Gomega, node string, created *[]string) client.Client {
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	g.Expect(err).NotTo(HaveOccurred())
	return interceptor.NewClient(c, interceptor.Funcs{
		Get: func(ctx context.Context, cl client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			if err := cl.Get(ctx, key, obj, opts...); err != nil {
				return err
			}
			if n, ok := obj.(*corev1.Node); ok && key.Name == node {
				n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: supervisor.TaintOutOfService, Value: "nodeshutdown",
					Effect: corev1.TaintEffectNoExecute})
			}
			return nil
		},
		Create: recordPodCreates(created),
	})
}
