package supervision

import (
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

func talkPolicy() Policy {
	return Policy{
		MaxRestarts: 10, Window: time.Minute, BackoffMin: 250 * time.Millisecond, BackoffMax: 30 * time.Second,
		Decider: map[string]Action{"OutOfCoffeeBeans": Restart, "Killed": Restart, "DiskFull": Stop, "Panic": Escalate},
	}
}

// restartsEvery returns n restart times, spaced by every, ending at end.
func restartsEvery(n int, every time.Duration, end time.Time) []time.Time {
	out := make([]time.Time, n)
	for i := range out {
		out[i] = end.Add(-time.Duration(n-1-i) * every)
	}
	return out
}

func TestDecide(t *testing.T) {
	tests := []struct {
		name       string
		policy     Policy
		restarts   []time.Time
		failure    Failure
		now        time.Time
		wantAction Action
		wantReason string
		wantDelay  time.Duration // RestartAt - failure time, for Restart
	}{
		{name: "first OutOfCoffeeBeans restarts after the initial backoff",
			failure: Failure{Reason: "OutOfCoffeeBeans", At: t0}, now: t0,
			wantAction: Restart, wantReason: ReasonDeciderRestart, wantDelay: 250 * time.Millisecond},
		{name: "backoff doubles with each restart inside the window",
			restarts: restartsEvery(3, time.Second, t0), failure: Failure{Reason: "Killed", At: t0}, now: t0,
			wantAction: Restart, wantReason: ReasonDeciderRestart, wantDelay: 2 * time.Second},
		{name: "backoff is capped",
			policy:   Policy{MaxRestarts: 100, Window: time.Hour, BackoffMin: time.Second, BackoffMax: 5 * time.Second, Decider: map[string]Action{"Killed": Restart}},
			restarts: restartsEvery(20, time.Second, t0), failure: Failure{Reason: "Killed", At: t0}, now: t0,
			wantAction: Restart, wantReason: ReasonDeciderRestart, wantDelay: 5 * time.Second},
		{name: "the 10th restart within the window is still allowed",
			restarts: restartsEvery(9, time.Second, t0), failure: Failure{Reason: "OutOfCoffeeBeans", At: t0}, now: t0,
			wantAction: Restart, wantReason: ReasonDeciderRestart, wantDelay: 30 * time.Second},
		{name: "the 11th failure within the window escalates",
			restarts: restartsEvery(10, time.Second, t0), failure: Failure{Reason: "OutOfCoffeeBeans", At: t0}, now: t0,
			wantAction: Escalate, wantReason: ReasonIntensityReached},
		{name: "restarts older than the window no longer count",
			restarts: restartsEvery(10, time.Second, t0.Add(-2*time.Minute)), failure: Failure{Reason: "OutOfCoffeeBeans", At: t0}, now: t0,
			wantAction: Restart, wantReason: ReasonDeciderRestart, wantDelay: 250 * time.Millisecond},
		{name: "a restart exactly one window ago is outside it",
			restarts: []time.Time{t0.Add(-time.Minute)}, failure: Failure{Reason: "Killed", At: t0}, now: t0,
			wantAction: Restart, wantReason: ReasonDeciderRestart, wantDelay: 250 * time.Millisecond},
		{name: "an unknown reason escalates at once (case _ => Escalate)",
			failure: Failure{Reason: "CorruptLog", At: t0}, now: t0, wantAction: Escalate, wantReason: ReasonUnknownFailure},
		{name: "a Stop decider stops",
			failure: Failure{Reason: "DiskFull", At: t0}, now: t0, wantAction: Stop, wantReason: ReasonDeciderStop},
		{name: "an Escalate decider escalates even with budget left",
			failure: Failure{Reason: "Panic", At: t0}, now: t0, wantAction: Escalate, wantReason: ReasonDeciderEscalate},
		{name: "a lost pod is recreated at once, whatever the decider",
			restarts: restartsEvery(3, time.Second, t0), failure: Failure{Reason: "PodDeleted", At: t0, External: true}, now: t0,
			wantAction: Restart, wantReason: ReasonRecreate, wantDelay: 0},
		{name: "a pod stopped from outside is not the machine's failure: no escalation with the window full",
			restarts: restartsEvery(10, time.Second, t0), failure: Failure{Reason: "Evicted", At: t0, External: true}, now: t0,
			wantAction: Restart, wantReason: ReasonRecreate, wantDelay: 0},
		{name: "nor with maxRestarts 0",
			policy:  Policy{MaxRestarts: 0, Window: time.Minute, Decider: map[string]Action{}},
			failure: Failure{Reason: "TerminationByKubelet", At: t0, External: true}, now: t0,
			wantAction: Restart, wantReason: ReasonRecreate, wantDelay: 0},
		{name: "maxRestarts 0 escalates the first failure",
			policy:  Policy{MaxRestarts: 0, Window: time.Minute, Decider: map[string]Action{"Killed": Restart}},
			failure: Failure{Reason: "Killed", At: t0}, now: t0, wantAction: Escalate, wantReason: ReasonIntensityReached},
		{name: "backoff counts from the failure, not from now (an operator restart resumes)",
			restarts: restartsEvery(1, time.Second, t0.Add(-5*time.Second)), failure: Failure{Reason: "Killed", At: t0.Add(-2 * time.Second)}, now: t0,
			wantAction: Restart, wantReason: ReasonDeciderRestart, wantDelay: 500 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.policy
			if p.Decider == nil {
				p = talkPolicy()
			}
			d := Decide(p, tt.restarts, tt.failure, "ns/coffee", tt.now)
			if d.Action != tt.wantAction || d.Reason != tt.wantReason || d.Message == "" {
				t.Fatalf("Decide = %+v, want %s %s", d, tt.wantAction, tt.wantReason)
			}
			if d.Action == Restart {
				if got := d.RestartAt.Sub(tt.failure.At); got != tt.wantDelay {
					t.Fatalf("delay %v, want %v", got, tt.wantDelay)
				}
			}
		})
	}
}

func TestBackoffJitterIsBoundedAndDeterministic(t *testing.T) {
	p := Policy{BackoffMin: time.Second, BackoffMax: time.Minute, JitterPercent: 10}
	seen := map[time.Duration]bool{}
	for _, seed := range []string{"a/1", "a/2", "b/1", "c/9"} {
		d := Backoff(p, 2, seed)
		if d < 4*time.Second || d >= 4*time.Second+400*time.Millisecond {
			t.Fatalf("Backoff(%s) = %v, want within [4s, 4.4s)", seed, d)
		}
		if Backoff(p, 2, seed) != d {
			t.Fatal("jitter is not deterministic")
		}
		seen[d] = true
	}
	if len(seen) < 2 {
		t.Fatal("jitter does not spread machines apart")
	}
}
