package supervisor

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/supervision"
)

// Pure functions over a machine's pods: which incarnation a pod is, whether it failed, why, and
// whether the failure was the machine's own.

// Names the supervisor reads on pods and machines.
const (
	// LabelIncarnation on a pod: its incarnation n (the pod is <machine>-<n>).
	LabelIncarnation = "vending.resilience.dev/incarnation"
	// AnnotationTemplateHash on a pod: a hash of the spec fields it was built from.
	AnnotationTemplateHash = "vending.resilience.dev/template-hash"
	// Finalizer on every pod of a machine: the pod object stays until the supervisor has
	// recorded how it ended (as the Job controller's job-tracking finalizer does), so a pod
	// deleted as soon as it failed (kubectl delete, a clean-up, the pod GC) still counts.
	Finalizer = "vending.resilience.dev/supervised"
	// AnnotationReset on a VendingMachine: change its value to clear an escalation or a stop and
	// restart the machine with a fresh restart window (what a VendingFleet or a human does).
	AnnotationReset = "vending.resilience.dev/reset"
)

// HasFinalizer: the pod carries the supervisor's finalizer.
func HasFinalizer(pod *corev1.Pod) bool {
	for _, f := range pod.Finalizers {
		if f == Finalizer {
			return true
		}
	}
	return false
}

// PodName is incarnation n of the machine's pod.
func PodName(vm *vendingv1alpha1.VendingMachine, n int32) string {
	return fmt.Sprintf("%s-%d", vm.Name, n)
}

// Incarnation is a pod's incarnation, -1 when it has none.
func Incarnation(pod *corev1.Pod) int32 {
	n, err := strconv.Atoi(pod.Labels[LabelIncarnation])
	if err != nil {
		return -1
	}
	return int32(n)
}

// incarnationOfName reads n from <machine>-<n>; -1 for an empty or foreign name.
func incarnationOfName(vm *vendingv1alpha1.VendingMachine, name string) int32 {
	n, err := strconv.Atoi(strings.TrimPrefix(name, vm.Name+"-"))
	if err != nil || !strings.HasPrefix(name, vm.Name+"-") {
		return -1
	}
	return int32(n)
}

// Terminal: the pod's containers have all ended and will not run again (restartPolicy Never).
func Terminal(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded
}

// Ready reports the pod's Ready condition.
func Ready(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func vendingContainer(pod *corev1.Pod) *corev1.ContainerStatus {
	for i := range pod.Status.ContainerStatuses {
		if pod.Status.ContainerStatuses[i].Name == "vending" {
			return &pod.Status.ContainerStatuses[i]
		}
	}
	return nil
}

// podStatusReasonsExternal are the pod status reasons a kubelet writes when it stops a pod on
// purpose: node-pressure eviction and graceful node shutdown. The machine did nothing wrong.
var podStatusReasonsExternal = map[string]bool{
	"Evicted":      true, // node-pressure eviction
	"Terminated":   true, // graceful node shutdown ("Pod was terminated in response to imminent node shutdown.")
	"NodeShutdown": true, // admission refused while the node shuts down
	"Shutdown":     true, // older kubelets' graceful node shutdown
}

// ReasonPodDeleted is the reason of a failure that came from a deletion asked for from outside
// (kubectl delete, a controller) while the pod ran: its container ended on the SIGTERM.
const ReasonPodDeleted = "PodDeleted"

// disruption says why a pod was stopped from outside: its DisruptionTarget condition (eviction
// API, preemption, taint manager, pod GC, the kubelet), a kubelet's status reason, or a deletion
// asked for before the container ended. Only what came before the container ended counts: a
// drain that evicts a pod that had already failed by itself does not make its failure external.
func disruption(pod *corev1.Pod) (reason string, ok bool) {
	var ended *time.Time
	if cs := vendingContainer(pod); cs != nil && cs.State.Terminated != nil && !cs.State.Terminated.FinishedAt.IsZero() {
		ended = &cs.State.Terminated.FinishedAt.Time
	}
	before := func(t time.Time) bool { return ended == nil || !t.After(*ended) }
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.DisruptionTarget && c.Status == corev1.ConditionTrue && before(c.LastTransitionTime.Time) {
			return c.Reason, true
		}
	}
	if podStatusReasonsExternal[pod.Status.Reason] {
		return pod.Status.Reason, true
	}
	if d := pod.DeletionTimestamp; d != nil {
		// deletionTimestamp is when the grace period ends; the deletion was asked for that long before.
		asked := d.Add(-time.Duration(ptrDeref(pod.DeletionGracePeriodSeconds)) * time.Second)
		if before(asked) {
			return ReasonPodDeleted, true
		}
	}
	return "", false
}

// disruptionTime is when the pod's DisruptionTarget condition came (its creation when it has none).
func disruptionTime(pod *corev1.Pod) time.Time {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.DisruptionTarget && c.Status == corev1.ConditionTrue {
			return c.LastTransitionTime.Time
		}
	}
	return pod.CreationTimestamp.Time
}

func ptrDeref(p *int64) int64 {
	if p == nil {
		return 0
	}
	return *p
}

// FailureOf reads a terminal pod's failure as the kubelet reported it: the vending pod's JSON
// termination message when there is one, else a reason derived from the exit. A pod stopped
// from outside is External, whatever its container said (a SIGTERM from a shutting-down node
// exits 143 like any other).
func FailureOf(pod *corev1.Pod) (supervision.Failure, vendingv1alpha1.Failure) {
	at := pod.CreationTimestamp.Time
	api := vendingv1alpha1.Failure{PodName: pod.Name}
	f := supervision.Failure{}
	if reason, ok := disruption(pod); ok {
		f.Reason, f.External = reason, true
		api.Message = pod.Status.Message
		if reason == ReasonNodeLost {
			at = disruptionTime(pod) // when the node was found lost: its container's last words never came
		}
		if api.Message == "" {
			api.Message = "the pod was stopped from outside (" + reason + ")"
		}
	}
	if cs := vendingContainer(pod); cs != nil && cs.State.Terminated != nil {
		t := cs.State.Terminated
		at = t.FinishedAt.Time
		api.ExitCode = t.ExitCode
		var msg contract.TerminationMessage
		parsed := strings.HasPrefix(strings.TrimSpace(t.Message), "{") && json.Unmarshal([]byte(t.Message), &msg) == nil
		if parsed && msg.Reason != "" {
			if f.Reason == "" {
				f.Reason = msg.Reason
				api.Message = msg.Message
			}
			api.PendingOrder, api.Sequence = msg.PendingOrder, int64(msg.Sequence)
			api.File, api.Offset = msg.File, msg.Offset
		} else if f.Reason == "" {
			// No report of the failure: the exit says what it was. (A pod's supervisor that was
			// killed leaves only its in-place history, which is no message for humans.)
			f.Reason = reasonFromExit(t)
			if !parsed {
				api.Message = lastLine(t.Message)
			}
		}
	}
	if f.Reason == "" {
		f.Reason = contract.ReasonError
		if api.Message == "" {
			api.Message = pod.Status.Message
		}
	}
	f.At = at
	api.Time, api.Reason, api.External = metav1.NewTime(at), f.Reason, f.External
	return f, api
}

func reasonFromExit(t *corev1.ContainerStateTerminated) string {
	switch {
	case t.Reason == "OOMKilled":
		return contract.ReasonOOMKilled
	case t.ExitCode == 137:
		return contract.ReasonKilled
	case t.ExitCode == 143:
		return contract.ReasonTerminated
	case t.ExitCode == 0:
		return contract.ReasonExited
	}
	return contract.ReasonError
}

// lastLine keeps the end of a log excerpt (FallbackToLogsOnError) short enough for status.
func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > 512 {
		s = s[len(s)-512:]
	}
	return s
}

// PolicyOf turns the API's supervision spec into the pure policy.
func PolicyOf(vm *vendingv1alpha1.VendingMachine) supervision.Policy {
	s := vm.Spec.Supervision
	p := supervision.Policy{
		MaxRestarts:   10,
		Window:        time.Minute,
		BackoffMin:    250 * time.Millisecond,
		BackoffMax:    30 * time.Second,
		JitterPercent: 10,
		Decider:       map[string]supervision.Action{},
	}
	if s.MaxRestarts != nil {
		p.MaxRestarts = int(*s.MaxRestarts)
	}
	if s.Backoff.JitterPercent != nil {
		p.JitterPercent = int(*s.Backoff.JitterPercent)
	}
	if s.Window != nil {
		p.Window = s.Window.Duration
	}
	if s.Backoff.Initial != nil {
		p.BackoffMin = s.Backoff.Initial.Duration
	}
	if s.Backoff.Max != nil {
		p.BackoffMax = s.Backoff.Max.Duration
	}
	for _, r := range s.Decider {
		p.Decider[r.Reason] = supervision.Action(r.Action)
	}
	return p
}

// InPlaceOf is what the pod's own supervisor reported of its in-place restarts: the newer of
// its live annotation and, once it ended, its termination message (nil: none reported).
func InPlaceOf(pod *corev1.Pod) *contract.InPlace {
	var best *contract.InPlace
	consider := func(r *contract.InPlace) {
		if r != nil && r.Restarts > 0 && (best == nil || r.Restarts > best.Restarts) {
			best = r
		}
	}
	if v, ok := pod.Annotations[contract.AnnotationInPlace]; ok {
		var r contract.InPlace
		if json.Unmarshal([]byte(v), &r) == nil {
			consider(&r)
		}
	}
	if cs := vendingContainer(pod); cs != nil && cs.State.Terminated != nil {
		var msg contract.TerminationMessage
		if json.Unmarshal([]byte(cs.State.Terminated.Message), &msg) == nil {
			consider(msg.InPlace)
		}
	}
	return best
}

// failureOfMessage is a failure of pod podName as its termination message tells it.
func failureOfMessage(m contract.TerminationMessage, podName string) vendingv1alpha1.Failure {
	return vendingv1alpha1.Failure{Time: metav1.NewTime(m.Time), Reason: m.Reason, ExitCode: int32(m.ExitCode),
		Message: m.Message, PendingOrder: m.PendingOrder, Sequence: int64(m.Sequence), File: m.File, Offset: m.Offset,
		PodName: podName}
}
