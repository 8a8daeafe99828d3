package fleet

import (
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"time"
)

// A reset that touches several machines (AllForOne, RestForOne) takes one write per machine,
// and any of them can fail: a conflict, an API server away, the operator stopped. So the fleet
// first records what it will do, a ResetPlan in its own status (written with optimistic
// concurrency, so a stale view cannot record a second plan), and only then writes the
// machines. Every pass continues the recorded plan before deciding anything new; a machine
// that records the plan (its token and escalations, written in one update) is done, which
// makes every write idempotent; when all are done the plan is retired and its escalations stay
// in the fleet's window memory, so the escalation is never answered twice.

// ResetPlan is a reset the fleet decided and recorded before carrying it out.
type ResetPlan struct {
	// Token is the value each machine's reset annotation gets: a machine resets once per value.
	Token    string
	Strategy Strategy
	// Escalations the plan answers.
	Escalations []Escalation
	// Machines to reset, in the order they are written.
	Machines []PlannedReset
	Created  time.Time
	// Message says why, for the event when the plan completes.
	Message string
}

// PlannedReset is one machine of a plan.
type PlannedReset struct {
	Name string
	// Quarantine: set its corrupt log's claim aside and start it on a new log.
	Quarantine bool
}

// Memory is what the fleet's own status remembers.
type Memory struct {
	// History is the escalations the fleet handled, as its status lists them.
	History []Escalation
	// Plan is the reset plan recorded and not yet retired; nil for none.
	Plan *ResetPlan
}

// Token is the reset value of a plan made at now for these escalated machines: unique per
// plan even with a clock that does not move (a test's), since two plans made at one instant
// answer different escalations.
func Token(escalated []Machine, now time.Time) string {
	h := fnv.New32a()
	for _, m := range escalated {
		_, _ = fmt.Fprintf(h, "%s\x00%s\x00", m.Name, m.ObservedReset)
	}
	return "fleet-" + strconv.FormatInt(now.UnixNano(), 36) + "-" + strconv.FormatUint(uint64(h.Sum32()), 36)
}

// newResetPlan turns a decision into the plan to record. The escalated machines are written
// first: the machine that failed is helped first, and an interrupted plan has already done
// the part that matters most.
func newResetPlan(s Strategy, d Plan, answers []Escalation, token string, now time.Time) *ResetPlan {
	escalated := map[string]bool{}
	for _, e := range answers {
		escalated[e.Machine] = true
	}
	rp := &ResetPlan{Token: token, Strategy: s, Escalations: answers, Created: now, Message: d.Message}
	for _, first := range []bool{true, false} {
		for _, r := range d.Resets {
			if escalated[r.Name] == first {
				rp.Machines = append(rp.Machines, PlannedReset{Name: r.Name, Quarantine: r.Quarantine})
			}
		}
	}
	return rp
}

// Answered: the machine's escalation is answered by the plan in progress or by one in the
// history (a machine that still looks escalated under a value the fleet already answered is a
// stale view of it, or a reset on its way).
func Answered(m Machine, history []Escalation, plan *ResetPlan) bool {
	key := escalationKey(m.Name, m.ObservedReset)
	has := func(es []Escalation) bool {
		return slices.ContainsFunc(es, func(e Escalation) bool { return e.Key() == key })
	}
	return has(history) || (plan != nil && has(plan.Escalations))
}

// Remaining is what the plan still has to write, in order: its machines that exist and have
// not carried it out. A machine carried out a plan when it records the plan's escalations
// (written in the same update as the token, and kept by every later plan inside the window):
// not merely when it carries the token, since a pass that read the fleet before this plan
// completed and the next one began would see a machine with the next plan's token and write
// this plan's token over it, a second reset. A machine deleted meanwhile has nothing left.
func Remaining(plan *ResetPlan, machines []Machine) []PlannedReset {
	carried := map[string]bool{}
	exists := map[string]bool{}
	for _, m := range machines {
		exists[m.Name] = true
		carried[m.Name] = slices.ContainsFunc(m.History, func(e Escalation) bool { return e.Plan == plan.Token })
	}
	var out []PlannedReset
	for _, pr := range plan.Machines {
		if exists[pr.Name] && !carried[pr.Name] {
			out = append(out, pr)
		}
	}
	return out
}

// MachineHistory is what a machine the plan resets records: its own escalations inside the
// window and the plan's, each once.
func MachineHistory(own []Escalation, plan *ResetPlan, window time.Duration, now time.Time) []Escalation {
	out := union(append(inWindow(own, window, now), plan.Escalations...))
	slices.SortStableFunc(out, func(a, b Escalation) int { return a.Time.Compare(b.Time) })
	return out
}

// union keeps the first copy of each escalation.
func union(es []Escalation) []Escalation {
	seen := map[string]bool{}
	var out []Escalation
	for _, e := range es {
		if k := e.Key(); !seen[k] {
			seen[k] = true
			out = append(out, e)
		}
	}
	return out
}

// progress says how far a plan is, for the fleet's status.
func progress(plan *ResetPlan, machines []Machine) string {
	names := make([]string, len(plan.Escalations))
	for i, e := range plan.Escalations {
		names[i] = e.Machine
	}
	return fmt.Sprintf("reset plan %s (%s, answering %s) in progress: %d of %d machines to reset remain",
		plan.Token, plan.Strategy, strings.Join(names, ", "), len(Remaining(plan, machines)), len(plan.Machines))
}
