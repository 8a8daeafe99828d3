package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"
)

// results are every kill and, for the in-place subjects, every round's count in the status
// and events. Durations in the JSON are nanoseconds.
type results struct {
	Kills  []killRecord  `json:"kills"`
	Rounds []roundRecord `json:"rounds,omitempty"`
}

func writeJSON(path string, res results) error {
	if path == "" {
		return nil
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// report prints the tables: recovery as the customer saw it for every subject, then, for the
// in-place subjects, how soon the machine's status and events showed each restart, then the
// ratio at the third crash of a round against the StatefulSet.
func report(w io.Writer, o options, subjects []*subject, res results) {
	by := map[*subject][]killRecord{}
	counted := map[*subject][2]int32{} // restarts and events the status counted over all rounds
	for _, s := range subjects {
		for _, k := range res.Kills {
			if k.Subject == s.key && k.Backoff == s.backoff {
				by[s] = append(by[s], k)
			}
		}
		for _, r := range res.Rounds {
			if r.Subject == s.key && r.Backoff == s.backoff {
				c := counted[s]
				counted[s] = [2]int32{c[0] + r.Restarts, c[1] + r.Events}
			}
		}
	}
	recoveryTable(w, o, subjects, by)
	visibilityTable(w, o, subjects, by, counted)
	ratios(w, o, subjects, by)
}

func took(ks []killRecord, crash int) []time.Duration {
	var out []time.Duration
	for _, k := range ks {
		if crash == 0 || k.Crash == crash {
			out = append(out, k.Took)
		}
	}
	return out
}

func recoveryTable(w io.Writer, o options, subjects []*subject, by map[*subject][]killRecord) {
	_, _ = fmt.Fprintf(w, "\nKill → first durable reply (keyed POST /v1/coins answered 200), %d rounds of %d consecutive crashes, "+
		"%d %s events in each log before the first kill:\n\n", o.rounds, o.crashes, o.events,
		map[bool]string{true: "keyed", false: "unkeyed"}[o.keyedFill])
	header := make([]string, 0, 6+o.crashes)
	header = append(header, "subject", "kills", "all kills p50 / p99")
	for k := range o.crashes {
		header = append(header, fmt.Sprintf("crash #%d p50", k+1))
	}
	header = append(header, "conn refused", "other conn errors (of them timed out or given up)", "5xx")
	row(w, header...)
	row(w, slices.Repeat([]string{"---"}, len(header))...)
	for _, s := range subjects {
		ks := by[s]
		cells := make([]string, 0, len(header))
		cells = append(cells, s.name, fmt.Sprint(len(ks)), pct(took(ks, 0), 50)+" / "+pct(took(ks, 0), 99))
		for k := range o.crashes {
			cells = append(cells, pct(took(ks, k+1), 50))
		}
		var refused, other, timeouts, fiveXX int
		for _, k := range ks {
			refused, other, timeouts, fiveXX = refused+k.Refused, other+k.Other, timeouts+k.Timeouts, fiveXX+k.Status5xx
		}
		cells = append(cells, fmt.Sprint(refused), fmt.Sprintf("%d (%d)", other, timeouts), fmt.Sprint(fiveXX))
		row(w, cells...)
	}
}

func visibilityTable(w io.Writer, o options, subjects []*subject, by map[*subject][]killRecord, counted map[*subject][2]int32) {
	header := true
	for _, s := range subjects {
		if !s.inPlace {
			continue
		}
		if header {
			_, _ = fmt.Fprintf(w, "\nKill → the machine's status counts it (status.restarts + 1) / a RestartedInPlace event does:\n\n")
			row(w, "subject", "kills", "status p50 / p99", "event p50 / p99",
				"not shown within "+o.visibility.String()+" (status / event)", "counted (restarts / events)", "not in place")
			row(w, "---", "---", "---", "---", "---", "---", "---")
			header = false
		}
		ks := by[s]
		var status, event []time.Duration
		var notInPlace int
		for _, k := range ks {
			if k.StatusAfter != nil {
				status = append(status, *k.StatusAfter)
			}
			if k.EventAfter != nil {
				event = append(event, *k.EventAfter)
			}
			if k.ServedBy != k.Killed {
				notInPlace++
			}
		}
		row(w, s.name, fmt.Sprint(len(ks)), pct(status, 50)+" / "+pct(status, 99), pct(event, 50)+" / "+pct(event, 99),
			fmt.Sprintf("%d / %d", len(ks)-len(status), len(ks)-len(event)),
			fmt.Sprintf("%d / %d", counted[s][0], counted[s][1]), fmt.Sprint(notInPlace))
	}
}

// ratios compares every subject with the StatefulSet at the third consecutive crash, where the
// kubelet's CrashLoopBackOff has grown twice.
func ratios(w io.Writer, o options, subjects []*subject, by map[*subject][]killRecord) {
	const third = 3
	var baseline *subject
	for _, s := range subjects {
		if s.key == "c" {
			baseline = s
		}
	}
	if baseline == nil || o.crashes < third {
		return
	}
	c := quantile(took(by[baseline], third), 50)
	_, _ = fmt.Fprintln(w)
	for _, s := range subjects {
		if a := quantile(took(by[s], third), 50); s != baseline && a > 0 {
			_, _ = fmt.Fprintf(w, "crash #3 p50: %s %s, StatefulSet %s: %.1f× faster\n", s.name, human(a), human(c),
				float64(c)/float64(a))
		}
	}
}

func row(w io.Writer, cells ...string) {
	_, _ = fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
}

func pct(ds []time.Duration, p int) string {
	if len(ds) == 0 {
		return "–"
	}
	return human(quantile(ds, p))
}

// quantile is the nearest-rank percentile: with 51 kills, p99 is the slowest.
func quantile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}

func human(d time.Duration) string {
	switch {
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%d ms", d.Round(time.Millisecond).Milliseconds())
	default:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
}
