// Package fleet is the pure policy of a VendingFleet, the supervisor of machines: what to do
// when machines escalate (Erlang's OneForOne, AllForOne, RestForOne with a restart intensity),
// what to do with a machine whose log is corrupt, and which machine a template rollout takes
// next. No client, no clock reads: the reconciler observes, calls these functions and acts on
// what they return.
package fleet

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Strategy is which machines are reset when one escalates.
type Strategy string

// The strategies, as Erlang names them.
const (
	OneForOne  Strategy = "OneForOne"
	AllForOne  Strategy = "AllForOne"
	RestForOne Strategy = "RestForOne"
)

// ReasonCorruptLog is the failure that a reset on the same log cannot fix. What the fleet does
// about it is its CorruptLogPolicy.
const ReasonCorruptLog = "CorruptLog"

// CorruptLogPolicy is what the fleet does with a machine whose log is corrupt.
type CorruptLogPolicy string

const (
	// CorruptLogEscalate (the default) hands the machine to humans with its claim intact.
	CorruptLogEscalate CorruptLogPolicy = "Escalate"
	// CorruptLogStartNewLog quarantines the claim and starts the machine on a new, empty log:
	// what the old log acknowledged (coins, pending orders, idempotency keys) is out of service.
	CorruptLogStartNewLog CorruptLogPolicy = "StartNewLog"
)

// Policy is the fleet's supervision: its strategy, its intensity, and what it does with a
// corrupt log.
type Policy struct {
	Strategy Strategy
	// MaxEscalations the fleet handles within Window; one more and the fleet escalates.
	MaxEscalations int
	Window         time.Duration
	// CorruptLog: anything but CorruptLogStartNewLog (the empty value included) escalates, so
	// that losing acknowledged facts is never the result of a missing field.
	CorruptLog CorruptLogPolicy
}

// Evidence says where a machine's failure left its traces: for a corrupt log, what a human
// opens to inspect it.
type Evidence struct {
	// Claim is the PersistentVolumeClaim that holds the machine's log.
	Claim string
	// Pod is the pod that failed; it names one occurrence of the failure.
	Pod string
	// File and Offset say where the log is damaged, as the pod reported it.
	File   string
	Offset int64
	// Sequence is the last durable sequence the pod reported; 0 when it reported none.
	Sequence int64
}

// Escalation is one machine escalation the fleet handled.
type Escalation struct {
	Machine string `json:"machine"`
	// Time the fleet decided to answer it (the plan's time).
	Time   time.Time `json:"time"`
	Reason string    `json:"reason,omitempty"`
	// Pod that failed last before the machine escalated, and when it failed: for humans.
	Pod      string    `json:"pod,omitempty"`
	FailedAt time.Time `json:"failedAt,omitzero"`
	// ObservedReset is the machine's reset value when it escalated. A machine stays escalated
	// until that value changes, so (Machine, ObservedReset) names one escalation.
	ObservedReset string `json:"observedReset,omitempty"`
	// Plan is the token of the reset plan that answers it; empty on records written before
	// plans existed.
	Plan string `json:"plan,omitempty"`
}

// Key identifies an escalation across its copies (the fleet's status, each machine it reset,
// the plan): a planned one by machine and reset value, an older record by machine and time to
// the second (the precision status stores).
func (e Escalation) Key() string {
	if e.Plan != "" {
		return escalationKey(e.Machine, e.ObservedReset)
	}
	return e.Machine + "\x00at=" + strconv.FormatInt(e.Time.Unix(), 10)
}

func escalationKey(machine, observedReset string) string {
	return machine + "\x00reset=" + observedReset
}

// Machine is what the fleet observed of one of its machines.
type Machine struct {
	Index int
	Name  string
	// Escalated: the machine gave up on its failure and no reset of it is pending.
	Escalated bool
	// ObservedReset is the reset value its status reflects.
	ObservedReset string
	// Reason of its last failure, and when it failed.
	Reason   string
	FailedAt time.Time
	// History is the escalations recorded on the machine (by earlier resets).
	History []Escalation
	// Evidence of its last failure.
	Evidence Evidence
	// Held names the failed pod whose corrupt log the fleet already handed to humans (recorded
	// on the machine), so that each occurrence is announced once.
	Held string
}

// Hold is a machine whose corrupt log the fleet hands to humans: it is not reset, its claim is
// not touched, and no other machine is reset because of it.
type Hold struct {
	Index    int
	Name     string
	Evidence Evidence
	// Announce: this occurrence is new (not yet recorded on the machine); record it and emit
	// the events once.
	Announce bool
	// Message says what is affected, where, and what a human can do.
	Message string
}

// Reset is one machine to reset.
type Reset struct {
	Index int
	Name  string
	// Quarantine: its log is corrupt and the policy is CorruptLogStartNewLog; set the claim
	// aside (never delete it) and start the machine on a new log.
	Quarantine bool
}

// Plan is what the fleet does this pass.
type Plan struct {
	// Resets, in index order; empty when nothing escalated or the fleet escalated.
	Resets []Reset
	// Record is the reset plan that carries out Resets: recorded in the fleet's status before
	// any machine is touched. Nil when Resets is empty.
	Record *ResetPlan
	// History is the escalations inside the window after this pass, oldest first.
	History []Escalation
	// Escalated: handling the machines' escalations would exceed the fleet's intensity. The
	// fleet resets nothing and hands the failure up, to humans.
	Escalated bool
	// Message says what happened, for the condition and the event.
	Message string
	// Held are the machines with a corrupt log left to humans (CorruptLogEscalate), in index
	// order. They do not count against the intensity: the fleet spent no reset on them.
	Held []Hold
}

// Decide is the fleet's supervisor: given its policy, its machines, its own memory and the
// time, which machines to reset. Escalations observed together are judged together: if
// handling all of them would exceed the intensity, none is handled.
//
// An escalation is answered once: one that a reset plan answers or answered (mem, or the
// records on the machines) is neither counted again nor planned again, whatever a stale view
// of the machine says. While a plan is in progress (mem.Plan) no other plan is made: it
// completes first, and new escalations wait for the next pass after it.
//
// A machine with a corrupt log is only reset (onto a new log, its claim quarantined) when the
// policy opts in with CorruptLogStartNewLog. Otherwise it is held for humans: left out of the
// escalations the fleet handles, so its claim stays as it is, it uses none of the intensity,
// and under AllForOne or RestForOne it resets no other machine (a reset of the others would
// not bring it back and would only interrupt their customers). The other machines' escalations
// are handled as usual; a held machine is never among the machines reset for them.
func Decide(p Policy, machines []Machine, mem Memory, now time.Time) Plan {
	history := Recent(machines, mem, p.Window, now)
	plan := Plan{History: history}
	held := map[int]bool{}
	var escalated []Machine
	for _, m := range machines {
		switch {
		case !m.Escalated:
		case Answered(m, history, mem.Plan):
		case m.Reason == ReasonCorruptLog && p.CorruptLog != CorruptLogStartNewLog:
			held[m.Index] = true
			plan.Held = append(plan.Held, Hold{Index: m.Index, Name: m.Name, Evidence: m.Evidence,
				Announce: m.Held != m.Evidence.Pod, Message: HoldMessage(m)})
		default:
			escalated = append(escalated, m)
		}
	}
	slices.SortFunc(plan.Held, func(a, b Hold) int { return a.Index - b.Index })
	slices.SortFunc(escalated, func(a, b Machine) int { return a.Index - b.Index })
	if mem.Plan != nil {
		plan.Message = progress(mem.Plan, machines)
		if len(escalated) > 0 {
			plan.Message += "; " + describe(escalated) + " escalated meanwhile, judged once it completes"
		}
		return plan
	}
	if len(escalated) == 0 {
		return plan
	}
	if len(history)+len(escalated) > p.MaxEscalations {
		plan.Escalated = true
		plan.Message = fmt.Sprintf(
			"%s escalated; the fleet already handled %d escalations within %v (intensity %d): "+
				"not resetting. Look at the machines' lastFailure and their pods' logs; change a machine's "+
				"reset annotation once fixed", describe(escalated), len(history), p.Window, p.MaxEscalations)
		return plan
	}

	token := Token(escalated, now)
	var added []Escalation
	corrupt := map[int]bool{}
	for _, m := range escalated {
		added = append(added, Escalation{Machine: m.Name, Time: now, Reason: m.Reason, Pod: m.Evidence.Pod,
			FailedAt: m.FailedAt, ObservedReset: m.ObservedReset, Plan: token})
		corrupt[m.Index] = m.Reason == ReasonCorruptLog
	}
	plan.History = append(slices.Clone(history), added...)
	plan.Message = fmt.Sprintf("%s escalated: %s resets %s (%d of %d escalations used within %v)",
		describe(escalated), p.Strategy, targetsText(p.Strategy), len(history)+len(added), p.MaxEscalations, p.Window)
	if len(held) > 0 {
		plan.Message += "; not " + describeHeld(plan.Held) + ", held for humans with a corrupt log"
	}
	for _, m := range targets(p.Strategy, machines, escalated[0].Index) {
		if held[m.Index] {
			continue
		}
		plan.Resets = append(plan.Resets, Reset{Index: m.Index, Name: m.Name, Quarantine: corrupt[m.Index]})
	}
	plan.Record = newResetPlan(p.Strategy, plan, added, token, now)
	return plan
}

// Recent is the fleet's escalations inside the window, oldest first: those its status
// remembers, those of the plan in progress, and the records on its machines (an AllForOne
// reset writes the same record on every machine: each escalation is counted once).
func Recent(machines []Machine, mem Memory, window time.Duration, now time.Time) []Escalation {
	all := slices.Clone(mem.History)
	if mem.Plan != nil {
		all = append(all, mem.Plan.Escalations...)
	}
	for _, m := range machines {
		all = append(all, m.History...)
	}
	out := union(inWindow(all, window, now))
	slices.SortStableFunc(out, func(a, b Escalation) int { return a.Time.Compare(b.Time) })
	return out
}

// RestartBudget is how many restarts one machine may take before a human is asked: the
// machine's supervisor restarts it maxRestarts times per window, and the fleet resets the
// machine (a fresh window) maxEscalations times. Budgets multiply across levels.
func RestartBudget(maxRestarts, maxEscalations int) int {
	return maxRestarts * (maxEscalations + 1)
}

func targets(s Strategy, machines []Machine, first int) []Machine {
	var out []Machine
	for _, m := range machines {
		switch {
		case s == AllForOne,
			s == RestForOne && m.Index >= first,
			m.Escalated:
			out = append(out, m)
		}
	}
	slices.SortFunc(out, func(a, b Machine) int { return a.Index - b.Index })
	return out
}

func targetsText(s Strategy) string {
	switch s {
	case AllForOne:
		return "every machine"
	case RestForOne:
		return "it and the machines after it"
	default:
		return "only the machines that escalated"
	}
}

func inWindow(h []Escalation, window time.Duration, now time.Time) []Escalation {
	var out []Escalation
	for _, e := range h {
		if now.Sub(e.Time) < window {
			out = append(out, e)
		}
	}
	return out
}

func describe(ms []Machine) string {
	parts := make([]string, len(ms))
	for i, m := range ms {
		parts[i] = m.Name
		if m.Reason != "" {
			parts[i] += " (" + m.Reason + ")"
		}
	}
	return strings.Join(parts, ", ")
}

// HoldMessage says, for kubectl describe, what a machine held for its corrupt log has lost from
// service, where the evidence is, and what a human can do about it.
func HoldMessage(m Machine) string {
	e := m.Evidence
	return fmt.Sprintf("machine %s cannot open its event log: %s. "+
		"Its coins, pending orders and idempotency keys are out of service until the log opens again; "+
		"the fleet keeps the claim as it is and starts no new log (spec.corruptLog.policy: Escalate). "+
		"%s Then either repair or restore the log and reset "+
		"the machine (kubectl annotate vend %s vending.resilience.dev/reset=<new value> --overwrite), or set the "+
		"fleet's spec.corruptLog.policy to StartNewLog to quarantine the claim and start the machine on a new, "+
		"empty log, giving up what the old log acknowledged.",
		m.Name, e, InspectHint(e.Claim), m.Name)
}

// InspectHint tells a human how to read a corrupt log: the one sentence every message about it
// shares (the dump tool ships in the vending pod's image).
func InspectHint(claim string) string {
	return fmt.Sprintf("Inspect the log with `vendinglog dump /data` in a pod that mounts claim %s at /data, as the vending pod does.", claim)
}

// String says where a corrupt log is damaged: the words every condition and event about it uses.
func (e Evidence) String() string {
	where := "at an offset the pod did not report"
	if e.File != "" {
		where = fmt.Sprintf("in file %s at offset %d", e.File, e.Offset)
	}
	seq := "not reported"
	if e.Sequence > 0 {
		seq = fmt.Sprint(e.Sequence)
	}
	return fmt.Sprintf("%s %s on claim %s (last durable sequence: %s)", ReasonCorruptLog, where, e.Claim, seq)
}

func describeHeld(hs []Hold) string {
	parts := make([]string, len(hs))
	for i, h := range hs {
		parts[i] = h.Name
	}
	return strings.Join(parts, ", ")
}
