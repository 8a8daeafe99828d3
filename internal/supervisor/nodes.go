package supervisor

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
)

// Nodes: what the supervisor knows of the nodes its pods are bound to, and what it may conclude.
//
// This follows Kubernetes' non-graceful node shutdown (KEP-2268) and StatefulSet's at-most-one
// semantics: a node that stops answering proves nothing about its pods. A power-off and a network
// partition look the same from the API server, and in a partition the pod still runs and still
// writes its log. So a pod on an unreachable node blocks its successor for as long as it takes,
// and the machine says so (the reconciler's NodeUnreachable condition and event). Only a human
// (or a fencing agent) knows the node is off: they say so by tainting it out of service
// (node.kubernetes.io/out-of-service) or by deleting its Node object. Then, and only then, the
// supervisor takes the node's pods as ended: their objects are removed at once and the machine
// starts on another node, on the same log, as a recreation (not its fault: outside the restart
// window). CloudNativePG fails a primary over on the same evidence and no less.

// NodeState is what is known of the node a pod is bound to.
type NodeState int

// Node states.
const (
	// NodeUp: Ready, or nothing known against it.
	NodeUp NodeState = iota
	// NodeUnreachable: not Ready (its kubelet stopped reporting, or reports not ready). Its pods
	// may still run: nothing is concluded.
	NodeUnreachable
	// NodeOutOfService: fenced by a human: tainted node.kubernetes.io/out-of-service. Its pods
	// do not run.
	NodeOutOfService
	// NodeGone: its Node object is deleted (read live, not merely missing from a cache). Its pods
	// do not run.
	NodeGone
)

// TaintOutOfService is the taint of a node fenced by a human (non-graceful node shutdown).
const TaintOutOfService = "node.kubernetes.io/out-of-service"

// ReasonNodeLost is the failure of a pod whose node was fenced or deleted: stopped from outside.
const ReasonNodeLost = "NodeLost"

// ReasonVolumePinned is the decision about a pod lost with its node when the machine's volume
// is pinned to that node (local storage): the machine cannot move, so it escalates.
const ReasonVolumePinned = "VolumePinnedToLostNode"

// StateOfNode reads a Node object (nil: it is gone). The out-of-service taint counts only on a
// node that is not Ready (as the pod GC reads it): on a node whose kubelet still reports, it is
// a mistake, and the node's pods still run.
func StateOfNode(n *corev1.Node) NodeState {
	if n == nil {
		return NodeGone
	}
	ready := true // a node that never reported yet has no pods running
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			ready = c.Status == corev1.ConditionTrue
		}
	}
	if ready {
		return NodeUp
	}
	for _, t := range n.Spec.Taints {
		if t.Key == TaintOutOfService {
			return NodeOutOfService
		}
	}
	return NodeUnreachable
}

// Lost: the node's pods are known not to run.
func (s NodeState) Lost() bool { return s == NodeOutOfService || s == NodeGone }

// String says what the state is, for humans.
func (s NodeState) String() string {
	switch s {
	case NodeUnreachable:
		return "unreachable"
	case NodeOutOfService:
		return "out of service (tainted " + TaintOutOfService + ")"
	case NodeGone:
		return "deleted (its Node object is gone)"
	}
	return "up"
}

// NodeOf is the state of the node pod is bound to (NodeUp for an unscheduled pod).
func NodeOf(pod *corev1.Pod, nodes map[string]NodeState) NodeState {
	if pod.Spec.NodeName == "" {
		return NodeUp
	}
	return nodes[pod.Spec.NodeName]
}

// endLost returns the pods with those on a lost node shown as what they are: ended. Such a pod
// is a copy marked Failed with reason NodeLost (as the pod GC would mark it), so every rule that
// holds for an ended pod holds for it: it is a failure from outside (recreated, outside the
// window), it blocks no successor, its finalizer may go, and it is deleted without a grace
// period, since no kubelet will ever confirm its end (mayDelete).
func endLost(pods []corev1.Pod, nodes map[string]NodeState, now time.Time) []corev1.Pod {
	out, copied := pods, false
	for i := range pods {
		p := &pods[i]
		state := NodeOf(p, nodes)
		if !state.Lost() || Terminal(p) {
			continue
		}
		if !copied {
			out, copied = append([]corev1.Pod(nil), pods...), true // the caller's pods are not changed
		}
		ended := p.DeepCopy()
		ended.Status.Phase = corev1.PodFailed
		ended.Status.Reason = ReasonNodeLost
		ended.Status.Message = fmt.Sprintf("node %s is %s: its pods are known not to run", p.Spec.NodeName, state)
		// The node's loss is the disruption (a taint manager's eviction for the out-of-service
		// taint, already on the pod, is its consequence).
		conds := []corev1.PodCondition{{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue, Reason: ReasonNodeLost,
			Message: ended.Status.Message, LastTransitionTime: metav1.NewTime(now)}}
		for _, c := range ended.Status.Conditions {
			if c.Type != corev1.DisruptionTarget {
				conds = append(conds, c)
			}
		}
		ended.Status.Conditions = conds
		out[i] = *ended
	}
	return out
}

// stayPinned keeps a step from creating a pod that could only wait for a lost node: the
// machine's volume is pinned to it. Whatever made the step create (a successor reserved when
// the taint manager evicted the pod, a reset, a roll), the machine escalates instead, on the
// incarnation it would have started, and a reset that finds the node still lost escalates again
// (so a fleet's resets end in its own escalation to humans).
func (s *Step) stayPinned(in Input) {
	node := in.PinnedTo
	if !s.Create || node == "" || !in.Nodes[node].Lost() {
		return
	}
	s.Create, s.Transition, s.Progress = false, "", Idle
	s.Memory.LastFailure = pinnedFailure(s.Memory.PodName, node, in.Nodes[node], in.Now)
	s.Decided = true
}

// pinnedFailure is the escalation of a machine whose volume is pinned to a lost node.
func pinnedFailure(pod, node string, state NodeState, now time.Time) *vendingv1alpha1.Failure {
	return &vendingv1alpha1.Failure{PodName: pod, Time: metav1.NewTime(now), Reason: ReasonNodeLost, External: true,
		Message:        fmt.Sprintf("node %s is %s, and the machine's volume is pinned to it", node, state),
		Action:         vendingv1alpha1.ActionEscalate,
		DecisionReason: ReasonVolumePinned,
		DecisionMessage: fmt.Sprintf("the machine's volume is pinned to node %s (local storage), which is lost: it cannot move "+
			"to another node. Bring node %s back (and remove its out-of-service taint), or restore the log onto storage "+
			"another node can mount, then reset the machine", node, node),
	}
}
