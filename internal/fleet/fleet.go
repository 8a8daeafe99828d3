// Package fleet is the pure policy of a VendingFleet, the supervisor of machines: what to do
// when machines escalate (Erlang's OneForOne, AllForOne, RestForOne with a restart intensity),
// and which machine a template rollout takes next. No client, no clock reads: the reconciler
// observes, calls these functions and acts on what they return.
package fleet

import (
	"fmt"
	"slices"
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

// ReasonCorruptLog is the failure that a reset on the same log cannot fix: the machine's log is
// quarantined and the machine starts on a new one.
const ReasonCorruptLog = "CorruptLog"

// Policy is the fleet's supervision: its strategy and its intensity.
type Policy struct {
	Strategy Strategy
	// MaxEscalations the fleet handles within Window; one more and the fleet escalates.
	MaxEscalations int
	Window         time.Duration
}

// Escalation is one machine escalation the fleet handled.
type Escalation struct {
	Machine string    `json:"machine"`
	Time    time.Time `json:"time"`
	Reason  string    `json:"reason,omitempty"`
}

// Machine is what the fleet observed of one of its machines.
type Machine struct {
	Index int
	Name  string
	// Escalated: the machine gave up on its failure and no reset of it is pending.
	Escalated bool
	// Reason of its last failure.
	Reason string
	// History is the escalations recorded on the machine (by earlier resets).
	History []Escalation
}

// Reset is one machine to reset.
type Reset struct {
	Index int
	Name  string
	// Quarantine: its log is corrupt; set the claim aside (never delete it) and start the
	// machine on a new log.
	Quarantine bool
	// History to record on the machine: its escalations inside the window plus this one.
	History []Escalation
}

// Plan is what the fleet does this pass.
type Plan struct {
	// Resets, in index order; empty when nothing escalated or the fleet escalated.
	Resets []Reset
	// History is the escalations inside the window after this pass, oldest first.
	History []Escalation
	// Escalated: handling the machines' escalations would exceed the fleet's intensity. The
	// fleet resets nothing and hands the failure up, to humans.
	Escalated bool
	// Message says what happened, for the condition and the event.
	Message string
}

// Decide is the fleet's supervisor: given its policy, its machines and the time, which
// machines to reset. Escalations observed together are judged together: if handling all of
// them would exceed the intensity, none is handled.
func Decide(p Policy, machines []Machine, now time.Time) Plan {
	history := Recent(machines, p.Window, now)
	var escalated []Machine
	for _, m := range machines {
		if m.Escalated {
			escalated = append(escalated, m)
		}
	}
	if len(escalated) == 0 {
		return Plan{History: history}
	}
	slices.SortFunc(escalated, func(a, b Machine) int { return a.Index - b.Index })
	if len(history)+len(escalated) > p.MaxEscalations {
		return Plan{History: history, Escalated: true, Message: fmt.Sprintf(
			"%s escalated; the fleet already handled %d escalations within %v (intensity %d): "+
				"not resetting. Look at the machines' lastFailure and their pods' logs; change a machine's "+
				"reset annotation once fixed", describe(escalated), len(history), p.Window, p.MaxEscalations)}
	}

	var added []Escalation
	corrupt := map[int]bool{}
	for _, m := range escalated {
		added = append(added, Escalation{Machine: m.Name, Time: now, Reason: m.Reason})
		corrupt[m.Index] = m.Reason == ReasonCorruptLog
	}
	plan := Plan{History: append(slices.Clone(history), added...), Message: fmt.Sprintf(
		"%s escalated: %s resets %s (%d of %d escalations used within %v)",
		describe(escalated), p.Strategy, targetsText(p.Strategy), len(history)+len(added), p.MaxEscalations, p.Window)}
	for _, m := range targets(p.Strategy, machines, escalated[0].Index) {
		plan.Resets = append(plan.Resets, Reset{
			Index:      m.Index,
			Name:       m.Name,
			Quarantine: corrupt[m.Index],
			History:    append(inWindow(m.History, p.Window, now), added...),
		})
	}
	return plan
}

// Recent is the fleet's escalations inside the window, from the records on its machines
// (an AllForOne reset writes the same record on every machine: it is counted once).
func Recent(machines []Machine, window time.Duration, now time.Time) []Escalation {
	seen := map[string]bool{}
	var out []Escalation
	for _, m := range machines {
		for _, e := range inWindow(m.History, window, now) {
			key := e.Machine + "@" + e.Time.UTC().Format(time.RFC3339Nano)
			if !seen[key] {
				seen[key] = true
				out = append(out, e)
			}
		}
	}
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
