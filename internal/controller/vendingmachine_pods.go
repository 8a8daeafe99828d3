package controller

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/supervision"
)

// Pure functions over pods: what incarnation a pod is, whether it failed and why, and what the
// supervisor remembered on it.

func incarnation(pod *corev1.Pod) int32 {
	n, err := strconv.Atoi(pod.Labels[labelIncarnation])
	if err != nil {
		return -1
	}
	return int32(n)
}

// splitPods finds the current pod (the highest incarnation) and the older ones.
func splitPods(pods []corev1.Pod) (current *corev1.Pod, older []*corev1.Pod) {
	for i := range pods {
		p := &pods[i]
		switch {
		case current == nil || incarnation(p) > incarnation(current):
			if current != nil {
				older = append(older, current)
			}
			current = p
		default:
			older = append(older, p)
		}
	}
	return current, older
}

func podTerminal(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded
}

func podReady(pod *corev1.Pod) bool {
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

// failureOf reads a terminal pod's failure as the kubelet reported it: the vending pod's JSON
// termination message when there is one, else a reason derived from the exit.
func failureOf(pod *corev1.Pod) (supervision.Failure, vendingv1alpha1.Failure) {
	at := pod.CreationTimestamp.Time
	api := vendingv1alpha1.Failure{PodName: pod.Name}
	f := supervision.Failure{}
	if pod.Status.Reason == "Evicted" {
		f.Reason, f.External = "Evicted", true
		api.Message = pod.Status.Message
	}
	if cs := vendingContainer(pod); cs != nil && cs.State.Terminated != nil {
		t := cs.State.Terminated
		at = t.FinishedAt.Time
		api.ExitCode = t.ExitCode
		var msg contract.TerminationMessage
		if strings.HasPrefix(strings.TrimSpace(t.Message), "{") && json.Unmarshal([]byte(t.Message), &msg) == nil && msg.Reason != "" {
			if f.Reason == "" {
				f.Reason = msg.Reason
			}
			api.Message, api.PendingOrder, api.Sequence = msg.Message, msg.PendingOrder, int64(msg.Sequence)
			api.File, api.Offset = msg.File, msg.Offset
		} else if f.Reason == "" {
			f.Reason = reasonFromExit(t)
			api.Message = lastLine(t.Message)
		}
	}
	if f.Reason == "" {
		f.Reason = contract.ReasonError
		if api.Message == "" {
			api.Message = pod.Status.Message
		}
	}
	f.At = at
	api.Time, api.Reason = metav1.NewTime(at), f.Reason
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

// restartHistory reads the restart times a pod carries.
func restartHistory(pod *corev1.Pod) []time.Time {
	if pod == nil {
		return nil
	}
	var out []time.Time
	for _, s := range strings.Split(pod.Annotations[annotationRestartHistory], ",") {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			out = append(out, t)
		}
	}
	return out
}

func formatHistory(ts []time.Time) string {
	parts := make([]string, len(ts))
	for i, t := range ts {
		parts[i] = t.UTC().Format(time.RFC3339Nano)
	}
	return strings.Join(parts, ",")
}

// recordedDecision is what annotationDecision holds.
type recordedDecision struct {
	Action    supervision.Action      `json:"action"`
	RestartAt time.Time               `json:"restartAt,omitzero"`
	Reason    string                  `json:"reason"`
	Message   string                  `json:"message"`
	Failure   vendingv1alpha1.Failure `json:"failure"`
}

func decisionOf(pod *corev1.Pod) (recordedDecision, bool) {
	var d recordedDecision
	v, ok := pod.Annotations[annotationDecision]
	if !ok || json.Unmarshal([]byte(v), &d) != nil {
		return d, false
	}
	return d, true
}

func lastFailureOf(pod *corev1.Pod) *vendingv1alpha1.Failure {
	if pod == nil {
		return nil
	}
	if d, ok := decisionOf(pod); ok {
		f := d.Failure
		f.Action = vendingv1alpha1.SupervisorAction(d.Action)
		return &f
	}
	var f vendingv1alpha1.Failure
	if v, ok := pod.Annotations[annotationLastFailure]; ok && json.Unmarshal([]byte(v), &f) == nil {
		return &f
	}
	return nil
}

// policyOf turns the API's supervision spec into the pure policy.
func policyOf(vm *vendingv1alpha1.VendingMachine) supervision.Policy {
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
