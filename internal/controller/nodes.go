package controller

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/supervisor"
)

// Nodes, as the supervising reconciler sees them: the state of the nodes a machine's pods are
// bound to (supervisor.NodeState), the node its volume is pinned to, and the news of a node's
// change for the machines on it. What is safe to conclude from a node's state is the
// supervisor's (internal/supervisor/nodes.go).

// podsByNode indexes the cached (the operator's own) pods by the node they are bound to.
const podsByNode = "vending.resilience.dev/pods-by-node"

// ReasonNodeUnreachable on Ready, Progressing and Stalled, and the event: a pod of the machine
// is bound to a node that does not answer, and only a human can say whether it still runs.
const ReasonNodeUnreachable = "NodeUnreachable"

// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=persistentvolumes,verbs=get

// TrimNode is the cache's transform of a node: its name, taints and Ready condition (a node's
// images and its other conditions are most of its bytes, and change every few seconds).
func TrimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	trimmed := &corev1.Node{TypeMeta: n.TypeMeta, ObjectMeta: metav1.ObjectMeta{Name: n.Name, UID: n.UID,
		ResourceVersion: n.ResourceVersion, DeletionTimestamp: n.DeletionTimestamp}, Spec: corev1.NodeSpec{Taints: n.Spec.Taints}}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			// Only the status and its transition: the heartbeat time changes every report.
			trimmed.Status.Conditions = []corev1.NodeCondition{{Type: c.Type, Status: c.Status,
				LastTransitionTime: c.LastTransitionTime, Reason: c.Reason}}
		}
	}
	return trimmed, nil
}

// nodesOf reads the state of the nodes the pods are bound to. From the cache, except what the
// supervisor would act on: a node missing from the cache is read again from the API server
// before it is taken as deleted (a new node the cache has not seen yet is not a lost one), and a
// fence is confirmed live (a human may have taken it back). live: read every node live (a step
// that creates a pod is decided on live reads).
func (r *VendingMachineReconciler) nodesOf(ctx context.Context, live bool, pods ...[]corev1.Pod) (map[string]supervisor.NodeState, error) {
	nodes := map[string]supervisor.NodeState{}
	for _, list := range pods {
		for i := range list {
			name := list[i].Spec.NodeName
			if _, seen := nodes[name]; seen || name == "" || supervisor.Terminal(&list[i]) {
				continue
			}
			state, err := r.nodeState(ctx, name, live)
			if err != nil {
				return nil, err
			}
			nodes[name] = state
		}
	}
	return nodes, nil
}

// nodeState reads one node's state (see nodesOf).
func (r *VendingMachineReconciler) nodeState(ctx context.Context, name string, live bool) (supervisor.NodeState, error) {
	n := &corev1.Node{}
	var err error
	if !live {
		err = r.Get(ctx, client.ObjectKey{Name: name}, n)
	}
	if live || apierrors.IsNotFound(err) || (err == nil && supervisor.StateOfNode(n).Lost()) {
		n = &corev1.Node{}
		err = r.apiReader().Get(ctx, client.ObjectKey{Name: name}, n)
	}
	switch {
	case apierrors.IsNotFound(err):
		return supervisor.StateOfNode(nil), nil
	case err != nil:
		return supervisor.NodeUp, err
	}
	return supervisor.StateOfNode(n), nil
}

// pinnedTo names the node the claim's volume is pinned to, when its PersistentVolume may only
// be used on that one node (local storage: a required node affinity on the node's hostname
// alone); "" when it can follow the pod (network storage) or is not bound. Read live, and only
// when a pod's node is not up: it is the exception.
func (r *VendingMachineReconciler) pinnedTo(ctx context.Context, namespace, claim string) (string, error) {
	pvc := &corev1.PersistentVolumeClaim{}
	if err := r.apiReader().Get(ctx, client.ObjectKey{Namespace: namespace, Name: claim}, pvc); err != nil {
		return "", client.IgnoreNotFound(err)
	}
	if pvc.Spec.VolumeName == "" {
		return "", nil
	}
	pv := &corev1.PersistentVolume{}
	if err := r.apiReader().Get(ctx, client.ObjectKey{Name: pvc.Spec.VolumeName}, pv); err != nil {
		return "", client.IgnoreNotFound(err)
	}
	return pinnedNode(pv), nil
}

// pinnedNode is the one node a volume's required node affinity allows by hostname: every term
// (terms are ORed) asks for that one hostname. "" if there is none, or the volume may go
// elsewhere.
func pinnedNode(pv *corev1.PersistentVolume) string {
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return ""
	}
	pinned := ""
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		host := ""
		for _, e := range term.MatchExpressions {
			if e.Key == corev1.LabelHostname && e.Operator == corev1.NodeSelectorOpIn && len(e.Values) == 1 {
				host = e.Values[0]
			}
		}
		if host == "" || (pinned != "" && host != pinned) {
			return "" // this term lets the volume go to other nodes
		}
		pinned = host
	}
	return pinned
}

// observeNodes adds to o the state of its pods' nodes and, when it matters, the node the
// machine's volume is pinned to, with that node's state: when a pod's node is not up, and when
// the step will create a pod after a node was lost (a reset of a machine escalated for a pinned
// volume: its old pod may be gone, its node still lost). creating: the step creates a pod and is
// decided on live reads, so every node is read live too (see nodesOf).
func (r *VendingMachineReconciler) observeNodes(ctx context.Context, vm *vendingv1alpha1.VendingMachine, o *observation,
	creating bool) error {
	nodes, err := r.nodesOf(ctx, creating, o.pods, o.others)
	if err != nil {
		return err
	}
	o.nodes, o.pinnedTo = nodes, ""
	claim := ""
	for i := range o.pods {
		if p := &o.pods[i]; supervisor.NodeOf(p, nodes) != supervisor.NodeUp && claim == "" {
			claim = claimOf(vm, p)
		}
	}
	if f := vm.Status.LastFailure; claim == "" && creating && f != nil && f.Reason == supervisor.ReasonNodeLost {
		claim = pvcName(vm)
	}
	if claim == "" {
		return nil
	}
	if o.pinnedTo, err = r.pinnedTo(ctx, vm.Namespace, claim); err != nil || o.pinnedTo == "" {
		return err
	}
	if _, known := nodes[o.pinnedTo]; !known {
		nodes[o.pinnedTo], err = r.nodeState(ctx, o.pinnedTo, creating)
	}
	return err
}

// unreachable is the pod of the machine that may still run on a node that does not answer
// (nil: none). While there is one, no other pod is started on the claim.
func (o observation) unreachable() *corev1.Pod {
	for _, pods := range [][]corev1.Pod{o.pods, o.others} { // a predecessor's pod blocks as well
		for i := range pods {
			p := &pods[i]
			if !supervisor.Terminal(p) && supervisor.NodeOf(p, o.nodes) == supervisor.NodeUnreachable {
				return p
			}
		}
	}
	return nil
}

// unreachableMessage says what is known and what a human can do, for the conditions and the event.
func unreachableMessage(p *corev1.Pod, pinnedTo string) string {
	node := p.Spec.NodeName
	msg := fmt.Sprintf("pod %s is on node %s, which is unreachable: the pod may still run there and write its log "+
		"(a network partition looks the same as a power-off), so no second pod is started on the machine's log. ", p.Name, node)
	if pinnedTo == node {
		return msg + fmt.Sprintf("The machine's volume is pinned to node %s (local storage): it cannot move to another node. "+
			"Bring node %s back; if it is gone for good, fencing it (taint node.kubernetes.io/out-of-service) escalates the machine.",
			node, node)
	}
	return msg + fmt.Sprintf("If node %s is down for good, fence it: kubectl taint node %s "+
		"node.kubernetes.io/out-of-service=nodeshutdown:NoExecute (or kubectl delete node %s), and the machine moves "+
		"to another node on the same log at once. Never fence a node whose pods may still run.", node, node, node)
}

// nodeHealthChanged lets through the node events a machine may care about: a change of what the
// supervisor concludes from the node (up, unreachable, out of service) and its deletion.
var nodeHealthChanged = predicate.Funcs{
	CreateFunc:  func(event.CreateEvent) bool { return false },
	GenericFunc: func(event.GenericEvent) bool { return false },
	DeleteFunc:  func(event.DeleteEvent) bool { return true },
	UpdateFunc: func(e event.UpdateEvent) bool {
		o, ok1 := e.ObjectOld.(*corev1.Node)
		n, ok2 := e.ObjectNew.(*corev1.Node)
		return ok1 && ok2 && supervisor.StateOfNode(o) != supervisor.StateOfNode(n)
	},
}

// machinesOnNode maps a node to the machines with a pod bound to it.
func (r *VendingMachineReconciler) machinesOnNode(ctx context.Context, node client.Object) []reconcile.Request {
	pods := &corev1.PodList{}
	if err := r.List(ctx, pods, client.MatchingFields{podsByNode: node.GetName()}); err != nil {
		return nil
	}
	var out []reconcile.Request
	for i := range pods.Items {
		out = append(out, machineOfPod(ctx, &pods.Items[i])...)
	}
	return out
}

func (r *VendingMachineReconciler) apiReader() client.Reader {
	if r.APIReader != nil {
		return r.APIReader
	}
	return r.Client
}
