package fleet

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// planFor is the plan Decide records when f-1 escalates under reset value r0 at t0 (AllForOne,
// three machines): the plan the table below finds in the fleet's status in its various stages.
func planFor(t *testing.T, p Policy) (*ResetPlan, []Machine) {
	t.Helper()
	ms := machines(3, map[int]string{1: "Panic"})
	ms[1].ObservedReset = "r0"
	d := Decide(p, ms, Memory{}, t0)
	if d.Record == nil {
		t.Fatalf("no plan recorded for %v", ms)
	}
	return d.Record, ms
}

// Decide during and after a plan: the states an interrupted reset leaves behind (a conflict or
// an operator restart between two machine writes), and the stale views a cache can show.
func TestDecideWithAPlan(t *testing.T) {
	allForOne := Policy{Strategy: AllForOne, MaxEscalations: 3, Window: 10 * time.Minute}
	plan, base := planFor(t, allForOne)
	later := t0.Add(time.Minute)
	// writtenTo gives the machines as the plan leaves them when it has written the named ones:
	// the token, and its escalation recorded on them.
	writtenTo := func(names ...string) []Machine {
		ms := slices.Clone(base)
		for i := range ms {
			if slices.Contains(names, ms[i].Name) {
				ms[i].Escalated = false // a reset is pending: no longer counts as escalated
				ms[i].History = MachineHistory(nil, plan, allForOne.Window, t0)
			}
		}
		return ms
	}
	observed := func(ms []Machine, name string) []Machine {
		for i := range ms {
			if ms[i].Name == name {
				ms[i].ObservedReset, ms[i].Reason = plan.Token, ""
			}
		}
		return ms
	}
	escalate := func(ms []Machine, name, under string) []Machine {
		for i := range ms {
			if ms[i].Name == name {
				ms[i].Escalated, ms[i].Reason, ms[i].ObservedReset = true, "Panic", under
			}
		}
		return ms
	}
	retired := Memory{History: plan.Escalations}

	tests := []struct {
		name          string
		policy        Policy
		machines      []Machine
		mem           Memory
		wantRecord    bool
		wantEscalated bool
		wantHistory   int
		wantRemaining []string // of mem.Plan
		wantMessage   string
	}{
		{name: "plan recorded, no machine written: the escalation is not answered again, nor counted twice",
			policy: allForOne, machines: base, mem: Memory{Plan: plan},
			wantHistory: 1, wantRemaining: []string{"f-1", "f-0", "f-2"}, wantMessage: "in progress: 3 of 3"},
		{name: "escalated machine reset, the others not yet: the plan continues, nothing new",
			policy: allForOne, machines: writtenTo("f-1"), mem: Memory{Plan: plan},
			wantHistory: 1, wantRemaining: []string{"f-0", "f-2"}, wantMessage: "2 of 3"},
		{name: "operator restarted mid-plan, the machine has observed its reset meanwhile",
			policy: allForOne, machines: observed(writtenTo("f-1", "f-0"), "f-1"), mem: Memory{Plan: plan},
			wantHistory: 1, wantRemaining: []string{"f-2"}},
		{name: "every machine written, plan not yet retired: nothing remains",
			policy: allForOne, machines: writtenTo("f-0", "f-1", "f-2"), mem: Memory{Plan: plan},
			wantHistory: 1, wantRemaining: nil},
		{name: "a new escalation during a plan waits for it",
			policy: allForOne, machines: escalate(writtenTo("f-1"), "f-2", "r2"), mem: Memory{Plan: plan},
			wantHistory: 1, wantRemaining: []string{"f-0", "f-2"}, wantMessage: "f-2 (Panic) escalated meanwhile"},
		{name: "plan retired, a stale view still shows the machine escalated: no second plan",
			policy: allForOne, machines: base, mem: retired, wantHistory: 1},
		{name: "plan retired, stale view, intensity 1: the answered escalation does not escalate the fleet",
			policy: Policy{Strategy: AllForOne, MaxEscalations: 1, Window: 10 * time.Minute}, machines: base, mem: retired,
			wantHistory: 1},
		{name: "the machine escalates again, under the plan's token: a new escalation, a new plan",
			policy: allForOne, machines: escalate(observed(writtenTo("f-0", "f-1", "f-2"), "f-1"), "f-1", plan.Token),
			mem: retired, wantRecord: true, wantHistory: 2},
		{name: "the answered escalation left the window: forgotten by the intensity",
			policy:   Policy{Strategy: AllForOne, MaxEscalations: 3, Window: 30 * time.Second},
			machines: observed(writtenTo("f-0", "f-1", "f-2"), "f-1"), mem: retired, wantHistory: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Decide(tt.policy, tt.machines, tt.mem, later)
			if (d.Record != nil) != tt.wantRecord || (len(d.Resets) > 0) != tt.wantRecord {
				t.Errorf("record %+v, resets %v; want a new plan: %v", d.Record, resetNames(d), tt.wantRecord)
			}
			if d.Escalated != tt.wantEscalated {
				t.Errorf("escalated = %v, want %v (%s)", d.Escalated, tt.wantEscalated, d.Message)
			}
			if len(d.History) != tt.wantHistory {
				t.Errorf("history = %v, want %d entries", d.History, tt.wantHistory)
			}
			if tt.mem.Plan != nil {
				var names []string
				for _, pr := range Remaining(tt.mem.Plan, tt.machines) {
					names = append(names, pr.Name)
				}
				if !slices.Equal(names, tt.wantRemaining) {
					t.Errorf("remaining = %v, want %v", names, tt.wantRemaining)
				}
			}
			if !strings.Contains(d.Message, tt.wantMessage) {
				t.Errorf("message %q does not say %q", d.Message, tt.wantMessage)
			}
		})
	}
}

func TestDecideRecordsThePlanBeforeAnyWrite(t *testing.T) {
	p := Policy{Strategy: RestForOne, MaxEscalations: 3, Window: time.Minute, CorruptLog: CorruptLogStartNewLog}
	ms := machines(4, map[int]string{2: ReasonCorruptLog, 1: "Panic"})
	ms[1].ObservedReset, ms[1].FailedAt = "h1", t0.Add(-time.Second)
	d := Decide(p, ms, Memory{}, t0)
	rp := d.Record
	if rp == nil {
		t.Fatal("no plan")
	}
	order := make([]string, 0, len(rp.Machines))
	for _, pr := range rp.Machines {
		name := pr.Name
		if pr.Quarantine {
			name += "!"
		}
		order = append(order, name)
	}
	if want := []string{"f-1", "f-2!", "f-3"}; !slices.Equal(order, want) {
		t.Errorf("machines %v, want %v: the escalated ones first, then index order, quarantine kept", order, want)
	}
	if rp.Strategy != RestForOne || !rp.Created.Equal(t0) || rp.Message != d.Message || !strings.HasPrefix(rp.Token, "fleet-") {
		t.Errorf("plan %+v", rp)
	}
	want := []Escalation{
		{Machine: "f-1", Time: t0, Reason: "Panic", Pod: "f-1-0", FailedAt: t0.Add(-time.Second), ObservedReset: "h1", Plan: rp.Token},
		{Machine: "f-2", Time: t0, Reason: ReasonCorruptLog, Pod: "f-2-0", Plan: rp.Token},
	}
	if !slices.Equal(rp.Escalations, want) {
		t.Errorf("escalations\n%+v\nwant\n%+v", rp.Escalations, want)
	}
	if !slices.Equal(d.History, want) {
		t.Errorf("history %+v: the status lists what the plan answers, with its token", d.History)
	}
}

func TestToken(t *testing.T) {
	a := machines(2, map[int]string{0: "Panic"})[:1]
	b := machines(2, map[int]string{1: "Panic"})[1:]
	if again := slices.Clone(a); Token(a, t0) != Token(again, t0) {
		t.Error("a token is a pure function of its inputs")
	}
	if Token(a, t0) == Token(b, t0) {
		t.Error("two plans at one instant (a clock that does not move) answer different escalations: different tokens")
	}
	if Token(a, t0) == Token(a, t0.Add(time.Nanosecond)) {
		t.Error("the same machine escalating again later gets a new token")
	}
	c := machines(2, map[int]string{0: "Panic"})[:1]
	c[0].ObservedReset = "fleet-1"
	if Token(a, t0) == Token(c, t0) {
		t.Error("a machine escalating under another reset value is another escalation")
	}
}

// One escalation has up to three copies (the fleet's status stores times to the second, the
// machines' annotations to the nanosecond, the plan): it is counted once.
func TestRecentCountsEachEscalationOnce(t *testing.T) {
	nano := t0.Add(-time.Minute + 123456789)
	planned := Escalation{Machine: "f-1", Time: nano, Reason: "Panic", ObservedReset: "r0", Plan: "fleet-x"}
	inStatus := planned
	inStatus.Time = nano.Truncate(time.Second)
	old := Escalation{Machine: "f-0", Time: nano.Add(-time.Minute)} // written before plans: no token
	oldInStatus := old
	oldInStatus.Time = old.Time.Truncate(time.Second)
	again := Escalation{Machine: "f-1", Time: t0, Reason: "Panic", ObservedReset: "fleet-x", Plan: "fleet-y"}

	ms := machines(3, nil)
	ms[0].History = []Escalation{old, planned}
	ms[1].History = []Escalation{planned}
	got := Recent(ms, Memory{History: []Escalation{oldInStatus, inStatus}, Plan: &ResetPlan{Escalations: []Escalation{again}}},
		10*time.Minute, t0)
	keys := make([]string, 0, len(got))
	for _, e := range got {
		keys = append(keys, e.Machine+"/"+e.ObservedReset)
	}
	if want := []string{"f-0/", "f-1/r0", "f-1/fleet-x"}; !slices.Equal(keys, want) {
		t.Errorf("recent = %v, want %v (oldest first, each once)", keys, want)
	}
}

func TestMachineHistory(t *testing.T) {
	plan := &ResetPlan{Token: "fleet-x", Escalations: []Escalation{{Machine: "f-1", Time: t0, ObservedReset: "r0", Plan: "fleet-x"}}}
	own := []Escalation{
		{Machine: "f-2", Time: t0.Add(-11 * time.Minute)}, // left the window
		{Machine: "f-0", Time: t0.Add(-time.Minute)},
	}
	h := MachineHistory(own, plan, 10*time.Minute, t0)
	if len(h) != 2 || h[0].Machine != "f-0" || h[1].Machine != "f-1" {
		t.Fatalf("history %+v: want its own escalation inside the window, then the plan's", h)
	}
	// Written again after a conflict: the plan's escalation is not recorded twice.
	if again := MachineHistory(h, plan, 10*time.Minute, t0); !slices.Equal(again, h) {
		t.Errorf("rewritten history %+v, want %+v", again, h)
	}
}

func TestRemaining(t *testing.T) {
	plan := &ResetPlan{Token: "T", Machines: []PlannedReset{{Name: "f-2"}, {Name: "f-0", Quarantine: true}, {Name: "f-1"}}}
	byT := []Escalation{{Machine: "f-2", Time: t0, ObservedReset: "r", Plan: "T"}}
	byOlder := []Escalation{{Machine: "f-1", Time: t0.Add(-time.Minute), ObservedReset: "", Plan: "S"}}
	m := func(name string, h ...[]Escalation) Machine { return Machine{Name: name, History: slices.Concat(h...)} }
	tests := []struct {
		name     string
		machines []Machine
		want     []string
	}{
		{"none written: all, in the plan's order", []Machine{m("f-0"), m("f-1", byOlder), m("f-2")}, []string{"f-2", "f-0", "f-1"}},
		{"the plan's record marks a machine done", []Machine{m("f-0", byT), m("f-1", byOlder), m("f-2", byOlder, byT)}, []string{"f-1"}},
		{"all written: done", []Machine{m("f-0", byT), m("f-1", byT), m("f-2", byT)}, nil},
		{"a machine deleted meanwhile has nothing left to reset", []Machine{m("f-0"), m("f-2", byT)}, []string{"f-0"}},
		{"a machine outside the plan is not written", []Machine{m("f-0", byT), m("f-1", byT), m("f-2", byT), m("f-3")}, nil},
		// What a later plan leaves on a machine: its own token, and this plan's record kept.
		{"a machine that moved on to a later plan is done", []Machine{m("f-0", byT, []Escalation{{Machine: "f-0", Plan: "U"}}),
			m("f-1", byT), m("f-2", byT)}, nil},
		{"an older plan's record is not this plan's", []Machine{m("f-0", byOlder), m("f-1", byT), m("f-2", byT)}, []string{"f-0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, pr := range Remaining(plan, tt.machines) {
				got = append(got, pr.Name)
				if pr.Name == "f-0" && !pr.Quarantine {
					t.Error("the quarantine of f-0 is carried")
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("remaining = %v, want %v", got, tt.want)
			}
		})
	}
}
