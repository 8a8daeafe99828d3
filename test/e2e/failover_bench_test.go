//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/customer"
	"github.com/vendingfleet/vending-operator/internal/supervisor"
)

// BenchmarkNodeFailover measures, on the local cluster with three nodes, how long after a
// powered-off node is fenced (the out-of-service taint) a machine on movable storage is Ready on
// another node with every acknowledged coin, against the same for a StatefulSet of one vending
// pod on the same node, in the same run (the baseline: what Kubernetes does by itself, the pod GC
// removing the fenced pod and the StatefulSet controller creating it again).
//
//	go test -tags e2e -run '^$' -bench NodeFailover -benchtime 3x ./test/e2e/   (make bench-failover)
func BenchmarkNodeFailover(b *testing.B) {
	nodes := requireNodes(b, 3)
	var operator, baseline time.Duration
	for i := 0; i < b.N; i++ {
		o, s := failoverOnce(b, nodes)
		operator += o
		baseline += s
		b.Logf("run %d: operator %v, StatefulSet %v", i+1, o.Round(10*time.Millisecond), s.Round(10*time.Millisecond))
	}
	b.ReportMetric(operator.Seconds()/float64(b.N), "s-operator/op")
	b.ReportMetric(baseline.Seconds()/float64(b.N), "s-statefulset/op")
	b.ReportMetric(0, "ns/op")
}

// failoverOnce powers off a node with a machine and a StatefulSet pod on it, with acknowledged
// coins in both, fences it, and returns how long each took to be Ready elsewhere with its coins.
func failoverOnce(b *testing.B, nodes []string) (operator, baseline time.Duration) {
	g := NewWithT(b)
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "bench-failover-"}}
	g.Expect(k8s.Create(ctx, ns)).To(Succeed())
	defer func() { _ = k8s.Delete(context.Background(), ns) }()
	op, target := operatorNode(g), ""
	for _, n := range nodes {
		if n != nodeZero && n != op {
			target = n
		}
	}
	g.Expect(target).NotTo(BeEmpty())
	for _, n := range nodes { // both land on target
		if n != target {
			setCordon(g, n, true)
		}
	}
	uncordon := func() {
		for _, n := range nodes {
			setCordon(g, n, false)
		}
	}
	defer uncordon()

	vm := &vendingv1alpha1.VendingMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "coffee"}}
	vm.Spec.Storage.WhenDeleted = vendingv1alpha1.DeletePVC
	vm.Spec.Storage.StorageClassName = ptr.To(movableClass)
	g.Expect(k8s.Create(ctx, vm)).To(Succeed())
	g.Expect(k8s.Create(ctx, baselineService(ns.Name))).To(Succeed())
	g.Expect(k8s.Create(ctx, baselineStatefulSet(ns.Name))).To(Succeed())
	machineC := customer.Client{Clientset: clientset, Namespace: ns.Name, Service: "coffee"}
	baselineC := customer.Client{Clientset: clientset, Namespace: ns.Name, Service: "baseline"}
	for i, c := range []customer.Client{machineC, baselineC} {
		for k := range 20 {
			g.Expect(c.PostUntil(ctx, "v1/coins", `{"count":1}`, "k"+string(rune('a'+i))+string(rune('a'+k)), 2*time.Minute)).
				To(HaveStatus(200))
		}
	}
	uncordon()
	for _, name := range []string{"coffee-0", "baseline-0"} {
		p := &corev1.Pod{}
		g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: name}, p)).To(Succeed())
		g.Expect(p.Spec.NodeName).To(Equal(target))
	}

	_, err := localCluster("node-stop", target)
	g.Expect(err).NotTo(HaveOccurred())
	defer func() {
		setTaint(g, target, false)
		_, _ = localCluster("node-start", target)
		g.Eventually(func(g Gomega) { g.Expect(requireReady(g, target)).To(BeTrue()) }).WithTimeout(3 * time.Minute).Should(Succeed())
	}()
	waitNodeUnreachable(g, ns.Name, "coffee", target)
	fenced := time.Now()
	setTaint(g, target, true)
	movedWithCoins := func(c customer.Client, pod string) bool {
		p := &corev1.Pod{}
		if k8s.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: pod}, p) != nil || p.Spec.NodeName == target ||
			p.Spec.NodeName == "" || p.DeletionTimestamp != nil {
			return false
		}
		r := c.Get(ctx, "v1/state")
		var st contract.State
		return r.Code == 200 && json.Unmarshal([]byte(r.Body), &st) == nil && st.TotalCoins == 20
	}
	for operator == 0 || baseline == 0 {
		if time.Since(fenced) > 3*time.Minute {
			b.Fatalf("not moved within 3 minutes (operator %v, StatefulSet %v)", operator, baseline)
		}
		if operator == 0 {
			st := &vendingv1alpha1.VendingMachine{}
			if k8s.Get(ctx, client.ObjectKeyFromObject(vm), st) == nil && st.Status.PodName != "" &&
				movedWithCoins(machineC, st.Status.PodName) {
				operator = time.Since(fenced)
			}
		}
		if baseline == 0 && movedWithCoins(baselineC, "baseline-0") {
			baseline = time.Since(fenced)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return operator, baseline
}

func requireReady(g Gomega, node string) bool {
	n := &corev1.Node{}
	g.Expect(k8s.Get(context.Background(), client.ObjectKey{Name: node}, n)).To(Succeed())
	return supervisor.StateOfNode(n) == supervisor.NodeUp
}

func baselineService(ns string) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "baseline"},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: map[string]string{"app": "baseline"},
			Ports: []corev1.ServicePort{{Name: "http", Port: contract.Port, TargetPort: intstr.FromInt32(contract.Port)}}}}
}

// baselineStatefulSet is one vending pod as a StatefulSet runs it: the same image and log, the
// kubelet restarting it, no operator.
func baselineStatefulSet(ns string) *appsv1.StatefulSet {
	labels := map[string]string{"app": "baseline"}
	image := "vendingfleet/vendingpod:dev"
	return &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "baseline"},
		Spec: appsv1.StatefulSetSpec{Replicas: ptr.To[int32](1), ServiceName: "baseline",
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{{ObjectMeta: metav1.ObjectMeta{Name: "log"},
				Spec: corev1.PersistentVolumeClaimSpec{StorageClassName: ptr.To(movableClass),
					AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
					Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{
						corev1.ResourceStorage: resource.MustParse("64Mi")}}}}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: ptr.To[int64](5),
					SecurityContext:               &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](65532)},
					Containers: []corev1.Container{{Name: "vending", Image: image, ImagePullPolicy: corev1.PullIfNotPresent,
						Args:  []string{"--data-dir=/data"},
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: contract.Port}},
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
							Path: contract.PathReadyz, Port: intstr.FromString("http")}}, PeriodSeconds: 1, FailureThreshold: 1},
						VolumeMounts: []corev1.VolumeMount{{Name: "log", MountPath: "/data"}},
					}},
				}},
		}}
}
