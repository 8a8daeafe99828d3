package supervisor

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
)

// Node-loss red team: the supervisor's side of G1 (unreachable proves nothing), G2 (fenced or
// deleted: released, force-deleted, recreated once) and G3 (a pinned volume escalates).

// rtNodeMachine is machine() with a memory written from a step (what the reconciler writes).
func rtNodeMachine(mem Memory, mutate ...func(*vendingv1alpha1.VendingMachine)) *vendingv1alpha1.VendingMachine {
	vm := machine(func(st *vendingv1alpha1.VendingMachineStatus) { mem.WriteTo(st) })
	for _, m := range mutate {
		m(vm)
	}
	return vm
}

func withFinalizer(p *corev1.Pod) { p.Finalizers = []string{Finalizer} }

// noForceDeleteOfRunning fails when the step deletes a non-terminal pod without a grace period.
func noForceDeleteOfRunning(t *testing.T, what string, s Step) {
	t.Helper()
	for _, d := range s.Delete {
		if !d.Graceful && !Terminal(d.Pod) {
			t.Fatalf("%s: force-deletes pod %s, which may still run: %s", what, d.Pod.Name, s)
		}
	}
}

// KEP-2268 (and the pod GC that implements it: gcTerminating) takes a node's pods as gone only
// when the node is tainted out of service AND not Ready. A node that still reports Ready has a
// kubelet that runs its pods: the taint (misapplied, or applied before the shutdown) makes the
// taint manager evict them gracefully, and the kubelet stops them within their grace period. The
// operator instead takes the pod as ended at once, force-deletes it and starts the next one on
// the same log while the first may still write for up to its grace period.
func TestRedTeamNodeTaintOnAReadyNodeIsNotLost(t *testing.T) {
	n := &corev1.Node{Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}}
	n.Spec.Taints = []corev1.Taint{{Key: TaintOutOfService, Value: "nodeshutdown", Effect: corev1.TaintEffectNoExecute}}
	state := StateOfNode(n)
	if state.Lost() {
		t.Errorf("a Ready node's kubelet still runs its pods: a taint alone does not make it lost (got %v)", state)
	}
	p := pod("m-0", onNode("n2"), withFinalizer)
	s := Next(Input{Machine: machine(startedAs("m-0")), Pods: []corev1.Pod{p}, TemplateHash: hash, Now: t0,
		Nodes: map[string]NodeState{"n2": state}})
	if s.Create {
		t.Errorf("a second pod beside one whose kubelet still reports: %s", s)
	}
	noForceDeleteOfRunning(t, "tainted Ready node", s)
}

// The fence is taken back (the taint removed: the node was only partitioned) after the NodeLost
// decision was written and before it was carried out (the release, the force delete and the
// create failed, or the operator restarted). The node is merely unreachable again: the pod that
// the memory holds as failed may still run, so nothing may be started beside it, nor may it be
// force-deleted.
func TestRedTeamNodeUnfencedAfterTheDecision(t *testing.T) {
	p := pod("m-0", onNode("n2"), withFinalizer)
	s1 := Next(Input{Machine: machine(startedAs("m-0")), Pods: []corev1.Pod{p}, TemplateHash: hash, Now: t0,
		Nodes: map[string]NodeState{"n2": NodeOutOfService}})
	if !s1.Create || s1.Memory.PodName != "m-1" {
		t.Fatalf("setup: fenced, m-1 is created: %s", s1)
	}
	for _, state := range []NodeState{NodeUnreachable, NodeUp} {
		for _, evicted := range []bool{false, true} {
			q := p
			if evicted {
				q = pod("m-0", onNode("n2"), withFinalizer, evictedGracefully)
			}
			vm := rtNodeMachine(s1.Memory)
			s := Next(Input{Machine: vm, Pods: []corev1.Pod{q}, TemplateHash: hash, Now: t0.Add(time.Second),
				Nodes: map[string]NodeState{"n2": state}})
			if s.Create {
				t.Fatalf("%v evicted=%v: m-0 may still run: no second pod: %s", state, evicted, s)
			}
			noForceDeleteOfRunning(t, state.String(), s)
			if s.Memory.PodName != "m-1" || s.Memory.Recreations != 1 {
				t.Fatalf("%v: the decision stands, counted once: %s recreations=%d", state, s, s.Memory.Recreations)
			}
			// Fenced again: m-1 (its name reserved, never asked for? asked for: PodRequested) goes on.
			s2 := Next(Input{Machine: rtNodeMachine(s.Memory), Pods: []corev1.Pod{q}, TemplateHash: hash, Now: t0.Add(2 * time.Second),
				Nodes: map[string]NodeState{"n2": NodeOutOfService}})
			if s2.Memory.Recreations != 1 || s2.Memory.Restarts != 0 || len(s2.Memory.RestartTimes) != 0 {
				t.Fatalf("%v: fenced again, the loss is not counted twice: %+v", state, s2.Memory)
			}
			if s2.Memory.PodName == "m-1" && !s2.Create {
				t.Fatalf("%v: fenced again, m-1 (asked for, not seen) is asked for: %s", state, s2)
			}
		}
	}
}

// A pod that had already failed by itself before its node was lost is the machine's own
// failure (counted in the window, decided by the decider), not NodeLost; and nothing about its
// node changes that.
func TestRedTeamNodeTerminalPodOnALostNodeIsItsOwnFailure(t *testing.T) {
	for _, state := range []NodeState{NodeOutOfService, NodeGone, NodeUnreachable} {
		p := pod("m-0", onNode("n2"), withFinalizer, killedAt(t0.Add(-time.Second)))
		s := Next(Input{Machine: machine(startedAs("m-0")), Pods: []corev1.Pod{p}, TemplateHash: hash, Now: t0,
			Nodes: map[string]NodeState{"n2": state}})
		f := s.Memory.LastFailure
		if f == nil || f.External || f.Reason != contract.ReasonKilled {
			t.Fatalf("%v: want its own Killed failure: %+v", state, f)
		}
		if s.Memory.Restarts != 1 || len(s.Memory.RestartTimes) != 1 {
			t.Fatalf("%v: its own failure is counted in the window: %+v", state, s.Memory)
		}
	}
}

// While a pod's node is unreachable, nothing the supervisor is asked to do (a reset, a roll, a
// second reset, an eviction, the memory lost) starts a second pod or force-deletes it.
func TestRedTeamNodeUnreachableWithstandsEverything(t *testing.T) {
	unreachable := map[string]NodeState{"n2": NodeUnreachable}
	type c struct {
		name string
		vm   *vendingv1alpha1.VendingMachine
		pods []corev1.Pod
	}
	cases := []c{
		{"reset", machine(startedAs("m-0")), []corev1.Pod{pod("m-0", onNode("n2"), withFinalizer)}},
		{"roll", machine(startedAs("m-0")), []corev1.Pod{pod("m-0", onNode("n2"), withFinalizer, oldHash)}},
		{"evicted", machine(startedAs("m-0")), []corev1.Pod{pod("m-0", onNode("n2"), withFinalizer, evictedGracefully)}},
		{"memory lost", machine(nil), []corev1.Pod{pod("m-0", onNode("n2"), withFinalizer)}},
		{"memory lost, evicted", machine(nil), []corev1.Pod{pod("m-0", onNode("n2"), withFinalizer, evictedGracefully)}},
		{"force-deleted by a human", machine(startedAs("m-0")), []corev1.Pod{pod("m-0", onNode("n2"), withFinalizer,
			func(p *corev1.Pod) {
				p.DeletionTimestamp, p.DeletionGracePeriodSeconds = &metav1.Time{Time: t0}, ptr.To[int64](0)
			})}},
	}
	cases[0].vm.Annotations = map[string]string{AnnotationReset: "r1"}
	for _, cs := range cases {
		vm := cs.vm
		// Up to four passes, each on the memory of the last, with a reset asked for again midway.
		for i := range 4 {
			if i == 2 {
				if vm.Annotations == nil {
					vm.Annotations = map[string]string{}
				}
				vm.Annotations[AnnotationReset] = "r2"
			}
			s := Next(Input{Machine: vm, Pods: cs.pods, TemplateHash: hash, Now: t0.Add(time.Duration(i) * time.Minute), Nodes: unreachable})
			if s.Create {
				t.Fatalf("%s pass %d: a second pod beside one on an unreachable node: %s", cs.name, i, s)
			}
			noForceDeleteOfRunning(t, cs.name, s)
			for _, r := range s.Release {
				if !MayRelease(r, true) {
					t.Fatalf("%s: releases %s, whose object could then vanish while it runs", cs.name, r.Name)
				}
			}
			if s.Memory.LastFailure != nil && s.Memory.LastFailure.Reason == ReasonNodeLost {
				t.Fatalf("%s: unreachable is no loss: %+v", cs.name, s.Memory.LastFailure)
			}
			vm = rtNodeMachine(s.Memory, func(m *vendingv1alpha1.VendingMachine) { m.Annotations = vm.Annotations })
		}
	}
}

// An unscheduled pod (Pending, no node) is never taken as lost, whatever the nodes are.
func TestRedTeamNodeUnscheduledPodIsNotLost(t *testing.T) {
	p := pod("m-0", withFinalizer, func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending; p.Status.Conditions = nil })
	s := Next(Input{Machine: machine(startedAs("m-0")), Pods: []corev1.Pod{p}, TemplateHash: hash, Now: t0,
		Nodes: map[string]NodeState{"": NodeGone, "n2": NodeGone}})
	if s.Create || len(s.Delete) > 0 || s.Memory.LastFailure != nil {
		t.Fatalf("an unscheduled pod runs nowhere yet and is not lost: %s", s)
	}
}

// An earlier incarnation left on a lost node while the current one runs on a healthy node:
// the old pod is released and force-deleted, nothing is decided, nothing created, nothing counted.
func TestRedTeamNodeOlderIncarnationOnALostNode(t *testing.T) {
	vm := machine(func(st *vendingv1alpha1.VendingMachineStatus) {
		at(1, "m-1")(st)
		st.PodRequested, st.PodCause, st.Recreations = true, vendingv1alpha1.PodRecreated, 1
	})
	for _, evicted := range []bool{false, true} {
		old := pod("m-0", onNode("n2"), withFinalizer)
		if evicted {
			evictedGracefully(&old)
		}
		cur := pod("m-1", onNode("n1"), withFinalizer)
		s := Next(Input{Machine: vm, Pods: []corev1.Pod{old, cur}, TemplateHash: hash, Now: t0,
			Nodes: map[string]NodeState{"n2": NodeGone, "n1": NodeUp}})
		if s.Create || s.Decided || s.Memory.Recreations != 1 || s.Memory.PodName != "m-1" {
			t.Fatalf("evicted=%v: nothing to decide about the old pod: %s", evicted, s)
		}
		if len(s.Delete) != 1 || s.Delete[0].Pod.Name != "m-0" || s.Delete[0].Graceful || len(s.Release) != 1 {
			t.Fatalf("evicted=%v: the old pod is released and deleted at once: %s", evicted, s)
		}
		// Merely unreachable: deleted gracefully (if not yet), never at once.
		s = Next(Input{Machine: vm, Pods: []corev1.Pod{old, cur}, TemplateHash: hash, Now: t0,
			Nodes: map[string]NodeState{"n2": NodeUnreachable, "n1": NodeUp}})
		noForceDeleteOfRunning(t, "old pod on an unreachable node", s)
	}
}

// A machine whose volume is pinned to a lost node escalated (VolumePinnedToLostNode). Its fleet
// resets it (that is what a fleet does with an escalation), or a human does, while the node is
// still fenced and the volume still pinned to it: the reset creates a pod that can only wait for
// that node for good (the scheduler cannot place it anywhere else), and the machine no longer
// says it is escalated. G3: "escalates instead of creating a pod".
func TestRedTeamNodeResetOfAPinnedMachineWhileItsNodeIsLost(t *testing.T) {
	p := pod("m-0", onNode("n2"), withFinalizer)
	lost := map[string]NodeState{"n2": NodeOutOfService}
	s1 := Next(Input{Machine: machine(startedAs("m-0")), Pods: []corev1.Pod{p}, TemplateHash: hash, Now: t0, Nodes: lost, PinnedTo: "n2"})
	if !s1.Memory.Escalated() || s1.Create {
		t.Fatalf("setup: pinned to the lost node, it escalates: %s", s1)
	}
	vm := rtNodeMachine(s1.Memory, withReset("fleet-token-1"))
	s := Next(Input{Machine: vm, Pods: []corev1.Pod{p}, TemplateHash: hash, Now: t0.Add(time.Second), Nodes: lost, PinnedTo: "n2"})
	if s.Create {
		t.Fatalf("the volume is still pinned to the lost node: a new pod could only wait for it: %s", s)
	}
	if !s.Memory.Escalated() {
		t.Fatalf("the machine must still read as escalated (VolumePinnedToLostNode): %+v", s.Memory.LastFailure)
	}
}

// The successor reserved by a graceful eviction on an unreachable node, then the Node deleted:
// the next incarnation is created once, under the reserved name, and counted once.
func TestRedTeamNodeEvictedThenDeletedCountsOnce(t *testing.T) {
	old := pod("m-0", onNode("n2"), withFinalizer, evictedGracefully)
	nodes := map[string]NodeState{"n2": NodeUnreachable}
	s1 := Next(Input{Machine: machine(startedAs("m-0")), Pods: []corev1.Pod{old}, TemplateHash: hash, Now: t0, Nodes: nodes})
	if s1.Create || s1.Memory.PodName != "m-1" || s1.Memory.Recreations != 1 {
		t.Fatalf("setup: m-1 reserved, not created: %s", s1)
	}
	nodes["n2"] = NodeGone
	s2 := Next(Input{Machine: rtNodeMachine(s1.Memory), Pods: []corev1.Pod{old}, TemplateHash: hash, Now: t0.Add(time.Second), Nodes: nodes})
	if !s2.Create || s2.Memory.PodName != "m-1" || s2.Memory.Recreations != 1 || len(s2.Memory.RestartTimes) != 0 {
		t.Fatalf("deleted: m-1 is created, counted once: %s %+v", s2, s2.Memory)
	}
	if len(s2.Delete) != 1 || s2.Delete[0].Graceful {
		t.Fatalf("the stuck pod is force-deleted: %s", s2)
	}
	// The create's answer is lost; the next pass sees m-1 and m-0 (force delete pending): no third pod.
	cur := pod("m-1", withFinalizer, func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending; p.Status.Conditions = nil })
	s3 := Next(Input{Machine: rtNodeMachine(s2.Memory), Pods: []corev1.Pod{old, cur}, TemplateHash: hash, Now: t0.Add(2 * time.Second), Nodes: nodes})
	if s3.Create || s3.Memory.PodName != "m-1" || s3.Memory.Recreations != 1 {
		t.Fatalf("no second creation: %s", s3)
	}
}

// The pod on a node fenced out of service was evicted by the taint manager (DisruptionTarget
// DeletionByTaintManager, a graceful deletion): the machine whose volume is pinned there
// escalates all the same (its failure is NodeLost, not the eviction's reason).
func TestRedTeamNodePinnedAndEvictedEscalates(t *testing.T) {
	p := pod("m-0", onNode("n2"), withFinalizer, evictedGracefully)
	s := Next(Input{Machine: machine(startedAs("m-0")), Pods: []corev1.Pod{p}, TemplateHash: hash, Now: t0,
		Nodes: map[string]NodeState{"n2": NodeOutOfService}, PinnedTo: "n2"})
	if s.Create || !s.Memory.Escalated() || s.Memory.LastFailure.DecisionReason != ReasonVolumePinned {
		t.Fatalf("pinned to the fenced node, evicted: escalates: %s %+v", s, s.Memory.LastFailure)
	}
}

// A reset while the node is fenced and the pod still hangs in the taint manager's graceful
// eviction: the pod is force-deleted in the same step (no kubelet will end the grace period).
func TestRedTeamNodeResetWhileFencedForceDeletes(t *testing.T) {
	p := pod("m-0", onNode("n2"), withFinalizer, evictedGracefully)
	vm := machine(startedAs("m-0"))
	withReset("r1")(vm)
	s := Next(Input{Machine: vm, Pods: []corev1.Pod{p}, TemplateHash: hash, Now: t0, Nodes: map[string]NodeState{"n2": NodeOutOfService}})
	if !s.Create || s.Memory.PodName != "m-1" || len(s.Delete) != 1 || s.Delete[0].Graceful || len(s.Release) != 1 {
		t.Fatalf("reset while fenced: m-0 released and force-deleted, m-1 created: %s", s)
	}
}

// The common timeline of a lost node with a pinned volume: the node is unreachable for more than
// the pods' tolerationSeconds (300 s by default), so the taint manager evicts the pod (a graceful
// deletion that never completes) and the supervisor reserves the successor; only then does a
// human fence the node. The reserved successor is created (lost(): "asked for now") with no look
// at the pinned volume: a pod that can only wait for the fenced node, no escalation. G3.
func TestRedTeamNodePinnedEvictedBeforeTheFence(t *testing.T) {
	old := pod("m-0", onNode("n2"), withFinalizer, evictedGracefully)
	nodes := map[string]NodeState{"n2": NodeUnreachable}
	s1 := Next(Input{Machine: machine(startedAs("m-0")), Pods: []corev1.Pod{old}, TemplateHash: hash, Now: t0, Nodes: nodes, PinnedTo: "n2"})
	if s1.Create || s1.Memory.PodName != "m-1" {
		t.Fatalf("setup: evicted on an unreachable node, m-1 reserved: %s", s1)
	}
	nodes["n2"] = NodeOutOfService
	s2 := Next(Input{Machine: rtNodeMachine(s1.Memory), Pods: []corev1.Pod{old}, TemplateHash: hash, Now: t0.Add(time.Minute),
		Nodes: nodes, PinnedTo: "n2"})
	if s2.Create {
		t.Fatalf("the volume is pinned to the fenced node: m-1 could only wait for it: %s", s2)
	}
	if !s2.Memory.Escalated() || s2.Memory.LastFailure.DecisionReason != ReasonVolumePinned {
		t.Fatalf("want the escalation VolumePinnedToLostNode: %+v", s2.Memory.LastFailure)
	}
}
