package fleet

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

// machines makes n healthy machines f-0 ... f-(n-1); escalate marks some escalated.
func machines(n int, escalate map[int]string) []Machine {
	out := make([]Machine, n)
	for i := range out {
		out[i] = Machine{Index: i, Name: fmt.Sprintf("f-%d", i)}
		if reason, ok := escalate[i]; ok {
			out[i].Escalated, out[i].Reason = true, reason
			out[i].Evidence = Evidence{Claim: out[i].Name + "-log", Pod: out[i].Name + "-0"}
		}
	}
	return out
}

func resetNames(p Plan) []string {
	out := make([]string, 0, len(p.Resets))
	for _, r := range p.Resets {
		name := r.Name
		if r.Quarantine {
			name += "!"
		}
		out = append(out, name)
	}
	return out
}

func TestDecide(t *testing.T) {
	policy := func(s Strategy, max int) Policy {
		return Policy{Strategy: s, MaxEscalations: max, Window: 10 * time.Minute}
	}
	old := func(ago time.Duration, machine string) []Escalation {
		return []Escalation{{Machine: machine, Time: t0.Add(-ago), Reason: "Panic"}}
	}
	withHistory := func(ms []Machine, i int, h []Escalation) []Machine { ms[i].History = h; return ms }
	withCorruptLog := func(p Policy, c CorruptLogPolicy) Policy { p.CorruptLog = c; return p }

	tests := []struct {
		name          string
		policy        Policy
		machines      []Machine
		wantResets    []string // "!" marks a quarantine
		wantHeld      []string
		wantEscalated bool
		wantHistory   int
	}{
		{name: "nothing escalated: nothing to do",
			policy: policy(OneForOne, 3), machines: machines(3, nil), wantHistory: 0},
		{name: "OneForOne resets only the machine that escalated",
			policy: policy(OneForOne, 3), machines: machines(3, map[int]string{1: "Panic"}),
			wantResets: []string{"f-1"}, wantHistory: 1},
		{name: "AllForOne resets every machine",
			policy: policy(AllForOne, 3), machines: machines(3, map[int]string{1: "Panic"}),
			wantResets: []string{"f-0", "f-1", "f-2"}, wantHistory: 1},
		{name: "RestForOne resets the machine and those after it",
			policy: policy(RestForOne, 3), machines: machines(4, map[int]string{1: "Panic"}),
			wantResets: []string{"f-1", "f-2", "f-3"}, wantHistory: 1},
		{name: "RestForOne starts at the first of several escalated machines",
			policy: policy(RestForOne, 3), machines: machines(4, map[int]string{3: "Panic", 2: "Panic"}),
			wantResets: []string{"f-2", "f-3"}, wantHistory: 2},
		{name: "StartNewLog: a corrupt log is quarantined, the others are reset on their logs",
			policy: withCorruptLog(policy(AllForOne, 3), CorruptLogStartNewLog), machines: machines(3, map[int]string{2: ReasonCorruptLog}),
			wantResets: []string{"f-0", "f-1", "f-2!"}, wantHistory: 1},
		{name: "StartNewLog under OneForOne: only the corrupt machine moves to a new log",
			policy: withCorruptLog(policy(OneForOne, 3), CorruptLogStartNewLog), machines: machines(3, map[int]string{1: ReasonCorruptLog}),
			wantResets: []string{"f-1!"}, wantHistory: 1},
		{name: "by default a corrupt log is held for humans: no reset, no new log, no intensity used",
			policy: policy(OneForOne, 3), machines: machines(3, map[int]string{1: ReasonCorruptLog}),
			wantHeld: []string{"f-1"}, wantHistory: 0},
		{name: "Escalate under AllForOne: the healthy machines are not reset either",
			policy: withCorruptLog(policy(AllForOne, 3), CorruptLogEscalate), machines: machines(3, map[int]string{2: ReasonCorruptLog}),
			wantHeld: []string{"f-2"}, wantHistory: 0},
		{name: "Escalate under RestForOne: the machines after it are not reset either",
			policy: withCorruptLog(policy(RestForOne, 3), CorruptLogEscalate), machines: machines(3, map[int]string{0: ReasonCorruptLog}),
			wantHeld: []string{"f-0"}, wantHistory: 0},
		{name: "a held machine does not stop the others' escalations, and is not reset with them (AllForOne)",
			policy: policy(AllForOne, 3), machines: machines(3, map[int]string{0: "Panic", 2: ReasonCorruptLog}),
			wantResets: []string{"f-0", "f-1"}, wantHeld: []string{"f-2"}, wantHistory: 1},
		{name: "a held machine is skipped by a RestForOne reset that spans it",
			policy: policy(RestForOne, 3), machines: machines(4, map[int]string{1: "Panic", 2: ReasonCorruptLog}),
			wantResets: []string{"f-1", "f-3"}, wantHeld: []string{"f-2"}, wantHistory: 1},
		{name: "a held machine uses none of the intensity",
			policy: policy(OneForOne, 1), machines: machines(3, map[int]string{0: ReasonCorruptLog, 1: "Panic"}),
			wantResets: []string{"f-1"}, wantHeld: []string{"f-0"}, wantHistory: 1},
		{name: "intensity 0: a corrupt log is still held, not counted as the fleet escalating",
			policy: policy(OneForOne, 0), machines: machines(2, map[int]string{0: ReasonCorruptLog}),
			wantHeld: []string{"f-0"}, wantHistory: 0},
		{name: "past the intensity with a held machine: both reported, nothing reset",
			policy: policy(OneForOne, 0), machines: machines(3, map[int]string{0: ReasonCorruptLog, 1: "Panic"}),
			wantHeld: []string{"f-0"}, wantEscalated: true, wantHistory: 0},
		{name: "an unknown policy value is not an opt-in",
			policy: withCorruptLog(policy(OneForOne, 3), "startnewlog"), machines: machines(2, map[int]string{0: ReasonCorruptLog}),
			wantHeld: []string{"f-0"}, wantHistory: 0},
		{name: "a corrupt machine that is not escalated (a reset on its way) is neither held nor reset",
			policy: policy(OneForOne, 3), machines: func() []Machine {
				ms := machines(2, nil)
				ms[0].Reason = ReasonCorruptLog
				return ms
			}(), wantHistory: 0},
		{name: "within the intensity: the last escalation allowed is handled",
			policy: policy(OneForOne, 3), machines: withHistory(machines(3, map[int]string{0: "Panic"}), 1,
				append(old(time.Minute, "f-1"), old(2*time.Minute, "f-2")...)),
			wantResets: []string{"f-0"}, wantHistory: 3},
		{name: "past the intensity: the fleet escalates and resets nothing",
			policy: policy(OneForOne, 2), machines: withHistory(machines(3, map[int]string{0: "Panic"}), 1,
				append(old(time.Minute, "f-1"), old(2*time.Minute, "f-2")...)),
			wantEscalated: true, wantHistory: 2},
		{name: "escalations observed together are judged together",
			policy: policy(OneForOne, 2), machines: withHistory(machines(3, map[int]string{0: "Panic", 2: "Panic"}), 1,
				old(time.Minute, "f-1")),
			wantEscalated: true, wantHistory: 1},
		{name: "escalations older than the window are forgotten",
			policy: policy(OneForOne, 1), machines: withHistory(machines(3, map[int]string{0: "Panic"}), 1,
				old(11*time.Minute, "f-1")),
			wantResets: []string{"f-0"}, wantHistory: 1},
		{name: "intensity 0: every escalation goes to humans",
			policy: policy(AllForOne, 0), machines: machines(2, map[int]string{0: "Panic"}),
			wantEscalated: true, wantHistory: 0},
		{name: "an AllForOne record on every machine counts once",
			policy: policy(AllForOne, 2), machines: func() []Machine {
				ms := machines(3, map[int]string{1: "Panic"})
				for i := range ms {
					ms[i].History = old(time.Minute, "f-0")
				}
				return ms
			}(),
			wantResets: []string{"f-0", "f-1", "f-2"}, wantHistory: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Decide(tt.policy, tt.machines, Memory{}, t0)
			if got := resetNames(p); !slices.Equal(got, tt.wantResets) {
				t.Errorf("resets = %v, want %v", got, tt.wantResets)
			}
			if p.Escalated != tt.wantEscalated {
				t.Errorf("escalated = %v, want %v (%s)", p.Escalated, tt.wantEscalated, p.Message)
			}
			if len(p.History) != tt.wantHistory {
				t.Errorf("history = %v, want %d entries", p.History, tt.wantHistory)
			}
			if got := heldNames(p); !slices.Equal(got, tt.wantHeld) {
				t.Errorf("held = %v, want %v", got, tt.wantHeld)
			}
			if (len(p.Resets) > 0 || p.Escalated) && p.Message == "" {
				t.Error("a plan that acts must say why")
			}
			for _, h := range p.Held {
				if !h.Announce || h.Message == "" {
					t.Errorf("held %s: announce %v, message %q: a new occurrence is announced, with a message", h.Name, h.Announce, h.Message)
				}
			}
			if len(p.Held) > 0 && len(p.Resets) > 0 && !strings.Contains(p.Message, "held for humans") {
				t.Errorf("message %q should say which machines the resets leave alone", p.Message)
			}
			if (p.Record != nil) != (len(p.Resets) > 0) {
				t.Fatalf("record %+v for resets %v: a reset is always carried out by a recorded plan", p.Record, resetNames(p))
			}
			for _, r := range p.Resets {
				h := MachineHistory(tt.machines[r.Index].History, p.Record, tt.policy.Window, t0)
				if len(h) == 0 || !h[len(h)-1].Time.Equal(t0) || h[len(h)-1].Plan != p.Record.Token {
					t.Errorf("reset %s records %v: want this escalation last, answered by plan %s", r.Name, h, p.Record.Token)
				}
			}
		})
	}
}

func heldNames(p Plan) []string {
	out := make([]string, 0, len(p.Held))
	for _, h := range p.Held {
		out = append(out, h.Name)
	}
	return out
}

// Whatever the strategy, the intensity and the other failures, a claim is quarantined (and the
// machine started on an empty log) only when the policy says StartNewLog.
func TestDecideQuarantinesOnlyWithTheOptIn(t *testing.T) {
	for _, s := range []Strategy{OneForOne, AllForOne, RestForOne} {
		for _, c := range []CorruptLogPolicy{"", CorruptLogEscalate, CorruptLogStartNewLog} {
			for _, max := range []int{0, 1, 5} {
				for mask := 1; mask < 1<<4; mask++ {
					esc := map[int]string{}
					for i := range 4 {
						if mask&(1<<i) != 0 {
							esc[i] = []string{ReasonCorruptLog, "Panic"}[i%2]
						}
					}
					p := Decide(Policy{Strategy: s, MaxEscalations: max, Window: time.Minute, CorruptLog: c}, machines(4, esc), Memory{}, t0)
					for _, r := range p.Resets {
						if (r.Quarantine || esc[r.Index] == ReasonCorruptLog) && c != CorruptLogStartNewLog {
							t.Errorf("%s/%q/max %d/%v: reset %+v of a corrupt machine without the opt-in", s, c, max, esc, r)
						}
					}
					if c == CorruptLogStartNewLog && len(p.Held) > 0 {
						t.Errorf("%s/%q/max %d/%v: held %v although the policy starts new logs", s, c, max, esc, heldNames(p))
					}
				}
			}
		}
	}
}

func TestDecideAnnouncesEachOccurrenceOnce(t *testing.T) {
	ms := machines(2, map[int]string{1: ReasonCorruptLog})
	ms[1].Evidence = Evidence{Claim: "f-1-log", Pod: "f-1-3"}
	policy := Policy{Strategy: OneForOne, MaxEscalations: 3, Window: time.Minute}
	if p := Decide(policy, ms, Memory{}, t0); len(p.Held) != 1 || !p.Held[0].Announce {
		t.Fatalf("held %+v: a new occurrence must be announced", p.Held)
	}
	ms[1].Held = "f-1-3" // recorded on the machine by the pass that announced it
	if p := Decide(policy, ms, Memory{}, t0); len(p.Held) != 1 || p.Held[0].Announce {
		t.Fatalf("held %+v: an occurrence already recorded must not be announced again", p.Held)
	}
	ms[1].Evidence.Pod = "f-1-4" // reset by a human, failed again: a new occurrence
	if p := Decide(policy, ms, Memory{}, t0); len(p.Held) != 1 || !p.Held[0].Announce {
		t.Fatalf("held %+v: the next failed pod is a new occurrence", p.Held)
	}
}

func TestHoldMessageSaysWhatWhereAndWhatNext(t *testing.T) {
	m := Machine{Name: "f-1", Reason: ReasonCorruptLog, Escalated: true,
		Evidence: Evidence{Claim: "f-1-log", Pod: "f-1-0", File: "/data/00000000000000000001.seg", Offset: 4096, Sequence: 42}}
	msg := HoldMessage(m)
	for _, want := range []string{"f-1", "CorruptLog", "claim f-1-log", "/data/00000000000000000001.seg", "offset 4096",
		"last durable sequence: 42", "vendinglog dump", "vending.resilience.dev/reset", "StartNewLog", "coins, pending orders and idempotency keys"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q does not say %q", msg, want)
		}
	}
	m.Evidence = Evidence{Claim: "f-1-log"}
	msg = HoldMessage(m)
	for _, want := range []string{"offset the pod did not report", "sequence: not reported"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q does not say %q", msg, want)
		}
	}
}

func TestDecideEscalationMessageNamesMachinesAndReasons(t *testing.T) {
	p := Decide(Policy{Strategy: OneForOne, MaxEscalations: 0, Window: time.Minute, CorruptLog: CorruptLogStartNewLog},
		machines(2, map[int]string{1: ReasonCorruptLog}), Memory{}, t0)
	if !p.Escalated || !strings.Contains(p.Message, "f-1 (CorruptLog)") {
		t.Fatalf("message %q should name f-1 and its reason", p.Message)
	}
}

func TestRestartBudgetMultipliesAcrossLevels(t *testing.T) {
	if got := RestartBudget(10, 3); got != 40 {
		t.Fatalf("RestartBudget(10, 3) = %d, want 40: 10 restarts, then 3 fleet resets of 10 each", got)
	}
}

func TestNextRollout(t *testing.T) {
	deadline := 5 * time.Minute
	m := func(i int, updated, ready bool, down time.Duration) RolloutMachine {
		rm := RolloutMachine{Index: i, Name: fmt.Sprintf("f-%d", i), Updated: updated, Ready: ready}
		if !ready {
			rm.NotReadySince = t0.Add(-down)
		}
		return rm
	}
	tests := []struct {
		name        string
		machines    []RolloutMachine
		wantRoll    string
		wantDone    bool
		wantStalled bool
	}{
		{name: "all updated: done", machines: []RolloutMachine{m(0, true, true, 0), m(1, true, true, 0)}, wantDone: true},
		{name: "the first outdated machine goes first",
			machines: []RolloutMachine{m(0, false, true, 0), m(1, false, true, 0)}, wantRoll: "f-0"},
		{name: "one at a time: wait while an updated machine is not Ready",
			machines: []RolloutMachine{m(0, true, false, time.Minute), m(1, false, true, 0)}},
		{name: "next once the updated machine is Ready",
			machines: []RolloutMachine{m(0, true, true, 0), m(1, false, true, 0), m(2, false, true, 0)}, wantRoll: "f-1"},
		{name: "a machine that is down anyway goes first",
			machines: []RolloutMachine{m(0, false, true, 0), m(1, false, true, 0), m(2, false, false, time.Hour)}, wantRoll: "f-2"},
		{name: "an updated machine not Ready past the deadline stalls the rollout",
			machines: []RolloutMachine{m(0, true, false, 6*time.Minute), m(1, false, true, 0)}, wantStalled: true},
		{name: "no machines: done", wantDone: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NextRollout(tt.machines, deadline, t0)
			if s.Roll != tt.wantRoll || s.Done != tt.wantDone || s.Stalled != tt.wantStalled {
				t.Errorf("step = %+v, want roll %q done %v stalled %v", s, tt.wantRoll, tt.wantDone, tt.wantStalled)
			}
			if s.Message == "" {
				t.Error("every step says what it does")
			}
		})
	}
}
