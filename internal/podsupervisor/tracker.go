// Package podsupervisor is the supervision tree's level inside the pod: PID 1 of the vending
// container runs the vending service as a child process and restarts it in place when it
// fails, as an Erlang supervisor restarts its child next to it, in milliseconds, instead of
// waiting for the operator to make a new pod.
//
// It applies the machine's own spec.supervision with the same supervision.Decide the operator
// uses, over one restart history: the restarts the operator made within the window (passed in
// when the pod is created) and its own. When the decider says Stop or Escalate, or the intensity
// is used up, it gives up: PID 1 exits carrying the child's failure and its in-place restarts in
// the termination message, and the operator takes over with the same history. Failures of the
// pod itself (PID 1 dying, the container's OOM kill, deletion, the node) are the operator's.
package podsupervisor

import (
	"time"

	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/supervision"
)

// Tracker is the in-pod supervisor's memory and choice, without processes or clocks.
type Tracker struct {
	policy supervision.Policy
	seed   string
	// earlier restarts of the machine (the operator's and earlier pods'), from the pod's spec.
	earlier []time.Time
	report  contract.InPlace
	// own are this pod's restarts still inside the window (report.Times may be trimmed).
	own []time.Time
}

// NewTracker starts a pod's memory. seed is the machine's identity as the operator passes it to
// Decide (namespace/name), so that both levels back off by the same jittered delays; earlier are
// the machine's restarts the operator knew of when it created the pod.
func NewTracker(p supervision.Policy, seed string, earlier []time.Time) *Tracker {
	return &Tracker{policy: p, seed: seed, earlier: earlier}
}

// Decide is what to do about the child's failure f at now: the operator's decision for the same
// history. A decision to restart is carried out by Restarted.
func (t *Tracker) Decide(f contract.TerminationMessage, now time.Time) supervision.Decision {
	history := append(append([]time.Time(nil), t.earlier...), t.own...)
	return supervision.Decide(t.policy, history, supervision.Failure{Reason: f.Reason, At: f.Time}, t.seed, now)
}

// Restarted records a restart made at at, about failure f decided as d. The time is kept to
// the second, as the operator's status keeps it, so that both levels count the same window.
func (t *Tracker) Restarted(f contract.TerminationMessage, d supervision.Decision, at time.Time) {
	at = at.Truncate(time.Second)
	t.report.Restarts++
	t.report.Times = append(t.report.Times, at)
	if n := len(t.report.Times); n > contract.MaxInPlaceTimes {
		t.report.Times = append([]time.Time(nil), t.report.Times[n-contract.MaxInPlaceTimes:]...)
	}
	t.own = append(supervision.RecentRestarts(t.own, t.policy.Window, at), at)
	t.earlier = supervision.RecentRestarts(t.earlier, t.policy.Window, at)
	t.report.Last = &contract.InPlaceFailure{TerminationMessage: f, Action: string(d.Action),
		DecisionReason: d.Reason, DecisionMessage: d.Message, RestartAt: d.RestartAt}
}

// Report is what the pod tells the operator: every restart it made, the newest times, the last
// failure. It is cumulative, so the latest report carries everything the earlier ones did.
func (t *Tracker) Report() contract.InPlace {
	r := t.report
	r.Times = append([]time.Time(nil), r.Times...)
	if r.Last != nil {
		last := *r.Last
		r.Last = &last
	}
	return r
}
