// Package supervision is the supervisor's policy as pure functions: given a machine's
// strategy, its restart history and a failure, at a given time, what to do and when. No
// client, no clock reads: the controller passes now in, and the tests pass explicit times.
//
// It is the talk's
//
//	OneForOneStrategy(maxNrOfRetries = 10, withinTimeRange = 1.minute) {
//	  case _: OutOfCoffeeBeansFailure => Restart
//	  case _                          => Escalate
//	}
//
// plus exponential backoff between restarts.
package supervision

import (
	"fmt"
	"hash/fnv"
	"time"
)

// Action is what the supervisor does about a failure.
type Action string

// Actions.
const (
	Restart  Action = "Restart"
	Stop     Action = "Stop"
	Escalate Action = "Escalate"
)

// Policy is a machine's supervisor strategy.
type Policy struct {
	MaxRestarts   int
	Window        time.Duration
	BackoffMin    time.Duration // the first restart's delay
	BackoffMax    time.Duration
	JitterPercent int
	// Decider maps failure reasons to actions; unlisted reasons escalate.
	Decider map[string]Action
}

// Failure is one observed failure of a machine's pod.
type Failure struct {
	Reason string
	At     time.Time // when the container terminated
	// External failures (evicted, terminated by a shutting-down node's kubelet, a
	// DisruptionTarget) were done to the machine, not by it: the decider is not asked, the pod
	// is recreated at once, and the restart does not count against the intensity, so that a
	// drain or a node shutdown never escalates a healthy machine. (What keeps doing this to a
	// machine is the cluster's problem, and the cluster's events say so.)
	External bool
}

// Decision is what the supervisor decided.
type Decision struct {
	Action Action
	// RestartAt is when to restart (Restart only): the failure time plus the backoff.
	RestartAt time.Time
	// Reason is a CamelCase reason for conditions and events; Message says why, for humans.
	Reason  string
	Message string
}

// Reasons of decisions.
const (
	ReasonDeciderRestart   = "DeciderRestart"
	ReasonDeciderStop      = "DeciderStop"
	ReasonDeciderEscalate  = "DeciderEscalate"
	ReasonUnknownFailure   = "UnknownFailure"
	ReasonIntensityReached = "RestartIntensityExceeded"
	ReasonRecreate         = "PodLost"
)

// RecentRestarts returns the restarts inside the window that ends at now, oldest first. A
// restart "in the future" by less than a window is kept: it was recorded by a supervisor whose
// clock runs ahead of this one (a previous leader on another node), and it did happen. One
// further ahead than a window is a clock that was wrong (a bad NTP step): keeping it would use
// up the machine's budget for as long as the error, so it is dropped.
func RecentRestarts(restarts []time.Time, window time.Duration, now time.Time) []time.Time {
	var out []time.Time
	for _, t := range restarts {
		if now.Sub(t) < window && t.Sub(now) < window {
			out = append(out, t)
		}
	}
	return out
}

// Decide says what to do about failure f of a machine with the given restart history. seed
// (the machine's identity) makes the jitter deterministic: the same inputs always give the
// same decision, and machines that fail together restart apart.
func Decide(p Policy, restarts []time.Time, f Failure, seed string, now time.Time) Decision {
	if f.External {
		return Decision{Action: Restart, RestartAt: f.At, Reason: ReasonRecreate, Message: fmt.Sprintf(
			"pod stopped from outside (%s), not by a failure of its own: recreating it at once, outside the restart window", f.Reason)}
	}
	action, ok := p.Decider[f.Reason]
	if !ok {
		return Decision{Action: Escalate, Reason: ReasonUnknownFailure,
			Message: fmt.Sprintf("failure %s is not in the decider: escalating", f.Reason)}
	}
	switch action {
	case Stop:
		return Decision{Action: Stop, Reason: ReasonDeciderStop,
			Message: fmt.Sprintf("the decider stops the machine on %s", f.Reason)}
	case Escalate:
		return Decision{Action: Escalate, Reason: ReasonDeciderEscalate,
			Message: fmt.Sprintf("the decider escalates %s", f.Reason)}
	}
	msg := fmt.Sprintf("the decider restarts on %s", f.Reason)
	recent := RecentRestarts(restarts, p.Window, now)
	if len(recent) >= p.MaxRestarts {
		return Decision{Action: Escalate, Reason: ReasonIntensityReached, Message: fmt.Sprintf(
			"%s after %d restarts within %v (maxRestarts %d): escalating", f.Reason, len(recent), p.Window, p.MaxRestarts)}
	}
	delay := Backoff(p, len(recent), seed)
	return Decision{Action: Restart, RestartAt: f.At.Add(delay), Reason: ReasonDeciderRestart,
		Message: fmt.Sprintf("%s; restart %d of %d within %v, after %v", msg, len(recent)+1, p.MaxRestarts, p.Window, delay)}
}

// Backoff is the delay before a restart when n restarts already happened inside the window:
// BackoffMin·2ⁿ, at most BackoffMax, plus up to JitterPercent of it derived from seed and n.
func Backoff(p Policy, n int, seed string) time.Duration {
	d := p.BackoffMin
	for i := 0; i < n && d < p.BackoffMax; i++ {
		d *= 2
	}
	if d > p.BackoffMax {
		d = p.BackoffMax
	}
	if p.JitterPercent > 0 && d > 0 {
		h := fnv.New64a()
		_, _ = fmt.Fprintf(h, "%s/%d", seed, n)
		frac := float64(h.Sum64()%10000) / 10000 // [0, 1)
		d += time.Duration(float64(d) * float64(p.JitterPercent) / 100 * frac)
	}
	return d
}
