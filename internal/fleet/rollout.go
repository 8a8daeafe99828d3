package fleet

import (
	"fmt"
	"time"
)

// RolloutMachine is what a rollout needs to know of one machine.
type RolloutMachine struct {
	Index int
	Name  string
	// Updated: the machine's spec is the fleet's current template.
	Updated bool
	// Ready: the machine's status describes its current spec and says Ready (its pod is up
	// and its log replayed).
	Ready bool
	// NotReadySince is when the machine was last seen going not Ready, or was updated,
	// whichever is later; zero when Ready.
	NotReadySince time.Time
}

// Step is what a rollout does this pass.
type Step struct {
	// Roll names the machine to update now; empty for none.
	Roll string
	// Done: every machine is made from the current template.
	Done bool
	// Stalled: an updated machine did not become Ready within the deadline; the rollout stops.
	Stalled bool
	Message string
}

// NextRollout rolls one machine at a time: a machine is updated only when every machine made
// from the new template is Ready. Machines that are down anyway go first (updating them costs
// no availability); then in index order.
func NextRollout(ms []RolloutMachine, deadline time.Duration, now time.Time) Step {
	updated := 0
	for _, m := range ms {
		if !m.Updated {
			continue
		}
		updated++
		if m.Ready {
			continue
		}
		if waited := now.Sub(m.NotReadySince); waited > deadline {
			return Step{Stalled: true, Message: fmt.Sprintf(
				"machine %s, updated to the new template, is not Ready after %v (deadline %v): rollout stopped with %d of %d "+
					"machines updated; look at the machine's conditions, or revert the template",
				m.Name, waited.Round(time.Second), deadline, updated, len(ms))}
		}
		return Step{Message: fmt.Sprintf("waiting for machine %s to become Ready on the new template (%d of %d updated)",
			m.Name, updated, len(ms))}
	}
	if updated == len(ms) {
		return Step{Done: true, Message: fmt.Sprintf("all %d machines run the current template", len(ms))}
	}
	next := -1
	for i, m := range ms {
		if m.Updated {
			continue
		}
		if next < 0 || (!m.Ready && ms[next].Ready) || (m.Ready == ms[next].Ready && m.Index < ms[next].Index) {
			next = i
		}
	}
	return Step{Roll: ms[next].Name, Message: fmt.Sprintf("rolling machine %s to the new template (%d of %d updated)",
		ms[next].Name, updated, len(ms))}
}
