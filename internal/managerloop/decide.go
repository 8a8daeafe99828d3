package managerloop

import (
	"errors"
	"fmt"
	"time"
)

// Timing is the leader election's timing, the same for every manager of the process.
type Timing struct {
	// LeaseDuration is how long another replica waits, after it last saw the lease change,
	// before it takes the lease.
	LeaseDuration time.Duration
	// RenewDeadline is how long the leader keeps failing to renew before it gives up.
	RenewDeadline time.Duration
	// RetryPeriod is the pause between two attempts to acquire or renew.
	RetryPeriod time.Duration
}

// DefaultTiming is client-go's and controller-runtime's default: 15 s, 10 s, 2 s.
var DefaultTiming = Timing{LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second}

// withDefaults fills the zero fields from DefaultTiming.
func (t Timing) withDefaults() Timing {
	if t.LeaseDuration == 0 {
		t.LeaseDuration = DefaultTiming.LeaseDuration
	}
	if t.RenewDeadline == 0 {
		t.RenewDeadline = DefaultTiming.RenewDeadline
	}
	if t.RetryPeriod == 0 {
		t.RetryPeriod = DefaultTiming.RetryPeriod
	}
	return t
}

// DrainBudget is how long the old manager's controllers may take to stop after its Start
// returned on a lost lease, before another replica may lead: the leader renewed last at most
// RetryPeriod + RenewDeadline before it gave up, and another replica takes the lease no earlier
// than LeaseDuration after that renewal.
func (t Timing) DrainBudget() time.Duration {
	return t.LeaseDuration - t.RenewDeadline - t.RetryPeriod
}

// Validate refuses a timing that leaves no time to stop the old controllers before another
// replica may lead, and what client-go itself refuses. The lease is written in whole seconds.
func (t Timing) Validate() error {
	switch {
	case t.LeaseDuration%time.Second != 0:
		return fmt.Errorf("managerloop: lease duration %v is not a whole number of seconds (the lease records seconds)", t.LeaseDuration)
	case t.RetryPeriod <= 0 || t.RenewDeadline <= 0:
		return fmt.Errorf("managerloop: renew deadline %v and retry period %v must be positive", t.RenewDeadline, t.RetryPeriod)
	case float64(t.RenewDeadline) <= 1.2*float64(t.RetryPeriod): // client-go's JitterFactor
		return fmt.Errorf("managerloop: renew deadline %v must exceed 1.2 x retry period %v", t.RenewDeadline, t.RetryPeriod)
	case t.DrainBudget() <= 0:
		return fmt.Errorf("managerloop: lease duration %v must exceed renew deadline %v + retry period %v, "+
			"or another replica may lead before this one has stopped", t.LeaseDuration, t.RenewDeadline, t.RetryPeriod)
	}
	return nil
}

// restartDelay is the pause before the next manager when the last ones ended soon after they
// started (a manager that fails at once, e.g. a missing CRD, must not spin): none after a
// manager that ran a while (the usual case: a lease lost in an outage), then base, doubling, capped.
func restartDelay(shortRuns int, base, maxDelay time.Duration) time.Duration {
	if shortRuns <= 0 {
		return 0
	}
	d := base
	for i := 1; i < shortRuns && d < maxDelay; i++ {
		d *= 2
	}
	return min(d, maxDelay)
}

// nextShortRuns counts consecutive managers that ended within minRun of their start.
func nextShortRuns(shortRuns int, ran, minRun time.Duration) int {
	if ran < minRun {
		return shortRuns + 1
	}
	return 0
}

// errBuildWhileUp marks a manager that could not be built while the API server answered: a
// configuration error (bad options, a scheme without a kind), which another round cannot fix.
var errBuildWhileUp = errors.New("managerloop: cannot build the manager while the API server answers")

// afterBuildFailure decides what a failure to build a manager means: with the API server away
// it may be the outage (go round: nil); with the API server answering it is the configuration.
func afterBuildFailure(err error, apiServerAnswers bool) error {
	if !apiServerAnswers {
		return nil
	}
	return fmt.Errorf("%w: %w", errBuildWhileUp, err)
}

// releaseAllowed says whether the lease may be given up: only when the process is stopping (a
// lost lease is never released: client-go would do it before the controllers were told to stop)
// and no runnable of the manager still runs.
func releaseAllowed(stopping bool, running int) bool {
	return stopping && running == 0
}
