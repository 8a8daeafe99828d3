package supervisor

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
)

func onNode(node string) func(*corev1.Pod) {
	return func(p *corev1.Pod) { p.Spec.NodeName = node }
}

// evictedGracefully is what the taint manager does to a pod on a tainted node: a graceful
// deletion that no kubelet of a lost node will ever confirm.
func evictedGracefully(p *corev1.Pod) {
	p.DeletionTimestamp, p.DeletionGracePeriodSeconds = &metav1.Time{Time: t0}, ptr.To[int64](30)
	disrupted("DeletionByTaintManager")(p)
}

func startedAs(name string) func(*vendingv1alpha1.VendingMachineStatus) {
	return func(st *vendingv1alpha1.VendingMachineStatus) {
		at(1, name)(st)
		st.PodRequested, st.PodCause = true, vendingv1alpha1.PodCreated
	}
}

// A node that stops answering proves nothing: a partitioned node's pod still runs and writes
// its log. Nothing is started beside it, nothing is deleted, nothing is decided.
func TestAPodOnAnUnreachableNodeIsLeftAlone(t *testing.T) {
	for _, evicted := range []bool{false, true} {
		p := pod("m-0", onNode("n2"))
		if evicted {
			evictedGracefully(&p)
		}
		s := Next(Input{Machine: machine(startedAs("m-0")), Pods: []corev1.Pod{p}, TemplateHash: hash, Now: t0,
			Nodes: map[string]NodeState{"n2": NodeUnreachable}})
		if s.Create || len(s.Delete) > 0 || s.Decided || s.Memory.LastFailure != nil {
			t.Fatalf("evicted=%v: a pod on an unreachable node may still run: %s", evicted, s)
		}
		if evicted && s.Memory.PodName != "m-1" {
			t.Fatalf("an evicted pod is lost from outside: its successor is reserved (and waits): %s", s)
		}
	}
}

// Fenced (out of service) or deleted, the node's pods are known not to run: the pod is removed
// at once (no grace period, its finalizer off) and the machine starts again on the same log,
// as a recreation outside the restart window.
func TestAPodOnALostNodeIsReplacedAtOnce(t *testing.T) {
	for _, state := range []NodeState{NodeOutOfService, NodeGone} {
		for _, evicted := range []bool{false, true} {
			p := pod("m-0", onNode("n2"), func(p *corev1.Pod) { p.Finalizers = []string{Finalizer} })
			if evicted {
				evictedGracefully(&p)
			}
			s := Next(Input{Machine: machine(startedAs("m-0")), Pods: []corev1.Pod{p}, TemplateHash: hash, Now: t0,
				Nodes: map[string]NodeState{"n2": state}})
			f := s.Memory.LastFailure
			if f == nil || !f.External || f.Reason != ReasonNodeLost || f.Action != vendingv1alpha1.ActionRestart || !s.Decided {
				t.Fatalf("%v evicted=%v: want an external NodeLost failure, restarted: %+v", state, evicted, f)
			}
			if !s.Create || s.Memory.PodName != "m-1" || s.Transition != vendingv1alpha1.PodRecreated || s.Memory.Recreations != 1 {
				t.Fatalf("%v evicted=%v: want m-1 created at once as a recreation: %s", state, evicted, s)
			}
			if len(s.Memory.RestartTimes) != 0 || s.Memory.Restarts != 0 {
				t.Fatalf("%v: a lost node is not the machine's failure: %d restarts in the window", state, len(s.Memory.RestartTimes))
			}
			if len(s.Delete) != 1 || s.Delete[0].Graceful || len(s.Release) != 1 {
				t.Fatalf("%v evicted=%v: want the pod's finalizer off and the pod deleted without grace: %s", state, evicted, s)
			}
			if !f.Time.Equal(&metav1.Time{Time: t0}) || f.Message == "" {
				t.Fatalf("the failure is dated when the node was found lost and says why: %+v", f)
			}
		}
	}
}

// Once forced, a deletion is not asked for again.
func TestAForceDeletedPodIsNotDeletedAgain(t *testing.T) {
	p := pod("m-0", onNode("n2"))
	p.DeletionTimestamp, p.DeletionGracePeriodSeconds = &metav1.Time{Time: t0}, ptr.To[int64](0)
	mem := machine(startedAs("m-0"))
	s := Next(Input{Machine: mem, Pods: []corev1.Pod{p}, TemplateHash: hash, Now: t0, Nodes: map[string]NodeState{"n2": NodeGone}})
	if len(s.Delete) != 0 {
		t.Fatalf("already deleted without grace: %s", s)
	}
}

// A machine whose volume is pinned to the lost node cannot move: it escalates, and starts no
// pod that would wait for that node for good.
func TestAPinnedMachineOnALostNodeEscalates(t *testing.T) {
	p := pod("m-0", onNode("n2"))
	s := Next(Input{Machine: machine(startedAs("m-0")), Pods: []corev1.Pod{p}, TemplateHash: hash, Now: t0,
		Nodes: map[string]NodeState{"n2": NodeOutOfService}, PinnedTo: "n2"})
	f := s.Memory.LastFailure
	if f == nil || f.Action != vendingv1alpha1.ActionEscalate || f.DecisionReason != ReasonVolumePinned || s.Create {
		t.Fatalf("want an escalation for the pinned volume, nothing created: %s %+v", s, f)
	}
	if !s.Memory.Escalated() {
		t.Fatal("the machine must read as escalated")
	}
	// Pinned elsewhere (it moved there since): the machine moves as usual.
	s = Next(Input{Machine: machine(startedAs("m-0")), Pods: []corev1.Pod{p}, TemplateHash: hash, Now: t0,
		Nodes: map[string]NodeState{"n2": NodeOutOfService}, PinnedTo: "n3"})
	if !s.Create {
		t.Fatalf("a volume pinned to another node is no reason to stay: %s", s)
	}
}

// The successor reserved while the evicted pod hung on its unreachable node is created once the
// node is fenced, and the hung pod is force-deleted.
func TestAReservedSuccessorStartsOnceTheNodeIsFenced(t *testing.T) {
	old := pod("m-0", onNode("n2"), evictedGracefully)
	vm := machine(func(st *vendingv1alpha1.VendingMachineStatus) {
		st.PodName, st.PodCause, st.PreviousPodName = "m-1", vendingv1alpha1.PodRecreated, "m-0"
		st.Recreations = 1
	})
	nodes := map[string]NodeState{"n2": NodeUnreachable}
	if s := Next(Input{Machine: vm, Pods: []corev1.Pod{old}, TemplateHash: hash, Now: t0, Nodes: nodes}); s.Create {
		t.Fatalf("the old pod may still run: %s", s)
	}
	nodes["n2"] = NodeOutOfService
	s := Next(Input{Machine: vm, Pods: []corev1.Pod{old}, TemplateHash: hash, Now: t0, Nodes: nodes})
	if !s.Create || s.Memory.PodName != "m-1" || len(s.Delete) != 1 || s.Delete[0].Graceful {
		t.Fatalf("fenced: m-1 is created and m-0 force-deleted: %s", s)
	}
}

// A predecessor's pod (a machine of the same name deleted and created again) on a lost node
// does not block either.
func TestAPredecessorsPodOnALostNodeDoesNotBlock(t *testing.T) {
	other := pod("m-0", onNode("n2"))
	in := Input{Machine: machine(nil), Others: []corev1.Pod{other}, TemplateHash: hash, Now: t0,
		Nodes: map[string]NodeState{"n2": NodeUnreachable}}
	if s := Next(in); s.Create {
		t.Fatalf("a predecessor's pod on an unreachable node may still run: %s", s)
	}
	in.Nodes["n2"] = NodeGone
	if s := Next(in); !s.Create {
		t.Fatalf("a predecessor's pod on a deleted node runs nowhere: %s", s)
	}
}

func TestStateOfNode(t *testing.T) {
	ready := func(s corev1.ConditionStatus) *corev1.Node {
		return &corev1.Node{Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: s}}}}
	}
	fenced := ready(corev1.ConditionUnknown)
	fenced.Spec.Taints = []corev1.Taint{{Key: TaintOutOfService, Value: "nodeshutdown", Effect: corev1.TaintEffectNoExecute}}
	for _, c := range []struct {
		node *corev1.Node
		want NodeState
	}{{nil, NodeGone}, {ready(corev1.ConditionTrue), NodeUp}, {ready(corev1.ConditionUnknown), NodeUnreachable},
		{ready(corev1.ConditionFalse), NodeUnreachable}, {fenced, NodeOutOfService}, {&corev1.Node{}, NodeUp}} {
		if got := StateOfNode(c.node); got != c.want {
			t.Errorf("%+v: got %v, want %v", c.node, got, c.want)
		}
	}
}
