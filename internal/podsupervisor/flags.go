package podsupervisor

import (
	"flag"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/vendingfleet/vending-operator/internal/supervision"
)

// Settings is what the in-pod supervisor is started with: the machine's policy, its identity
// (the jitter's seed) and the restarts the operator had made within the window.
type Settings struct {
	Policy  supervision.Policy
	Seed    string
	Earlier []time.Time
}

// Args renders s as the vendingpod flags that Register parses (the operator builds the pod's
// arguments with it; both sides of the contract live here).
func (s Settings) Args() []string {
	p := s.Policy
	decider := make([]string, 0, len(p.Decider))
	for reason, action := range p.Decider {
		decider = append(decider, reason+"="+string(action))
	}
	slices.Sort(decider)
	earlier := make([]string, len(s.Earlier))
	for i, t := range s.Earlier {
		earlier[i] = t.UTC().Format(time.RFC3339Nano)
	}
	return []string{
		fmt.Sprintf("--max-restarts=%d", p.MaxRestarts),
		"--restart-window=" + p.Window.String(),
		"--backoff-initial=" + p.BackoffMin.String(),
		"--backoff-max=" + p.BackoffMax.String(),
		fmt.Sprintf("--backoff-jitter-percent=%d", p.JitterPercent),
		"--decider=" + strings.Join(decider, ","),
		"--supervision-seed=" + s.Seed,
		"--earlier-restarts=" + strings.Join(earlier, ","),
	}
}

// Register defines the flags of s on fs; parse the set, then call the returned function to get
// s filled in (or the first bad value).
func Register(fs *flag.FlagSet, s *Settings) func() error {
	fs.IntVar(&s.Policy.MaxRestarts, "max-restarts", 10, "Supervised: restarts allowed within --restart-window before giving up.")
	fs.DurationVar(&s.Policy.Window, "restart-window", time.Minute, "Supervised: the time range restarts are counted over.")
	fs.DurationVar(&s.Policy.BackoffMin, "backoff-initial", 250*time.Millisecond,
		"Supervised: the delay before the first restart in the window.")
	fs.DurationVar(&s.Policy.BackoffMax, "backoff-max", 30*time.Second, "Supervised: the longest delay.")
	fs.IntVar(&s.Policy.JitterPercent, "backoff-jitter-percent", 10, "Supervised: spread of the delay, in percent.")
	decider := fs.String("decider", "OutOfCoffeeBeans=Restart,Killed=Restart,Terminated=Restart",
		"Supervised: Reason=Restart|Stop|Escalate,...; an unlisted reason escalates.")
	fs.StringVar(&s.Seed, "supervision-seed", "", "Supervised: the machine's namespace/name (the backoff's jitter).")
	earlier := fs.String("earlier-restarts", "",
		"Supervised: the machine's restarts in the window before this pod (RFC 3339, comma-separated).")
	return func() error {
		s.Policy.Decider = map[string]supervision.Action{}
		for _, part := range strings.Split(*decider, ",") {
			if part == "" {
				continue
			}
			reason, action, _ := strings.Cut(part, "=")
			switch a := supervision.Action(action); a {
			case supervision.Restart, supervision.Stop, supervision.Escalate:
				s.Policy.Decider[reason] = a
			default:
				return fmt.Errorf("--decider %q: the action must be Restart, Stop or Escalate", part)
			}
		}
		s.Earlier = nil
		for _, v := range strings.Split(*earlier, ",") {
			if v == "" {
				continue
			}
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return fmt.Errorf("--earlier-restarts: %w", err)
			}
			s.Earlier = append(s.Earlier, t)
		}
		if s.Policy.MaxRestarts < 0 || s.Policy.Window <= 0 || s.Policy.BackoffMin < 0 || s.Policy.BackoffMax < 0 {
			return fmt.Errorf("--max-restarts, --restart-window, --backoff-initial, --backoff-max must not be negative (and the window > 0)")
		}
		return nil
	}
}
