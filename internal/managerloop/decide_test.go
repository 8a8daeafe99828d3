package managerloop

import (
	"errors"
	"testing"
	"time"
)

func TestTimingValidate(t *testing.T) {
	s := time.Second
	for _, tc := range []struct {
		name    string
		timing  Timing
		wantErr bool
	}{
		{"defaults", DefaultTiming, false},
		{"short, as the envtest uses", Timing{3 * s, 2 * s, 400 * time.Millisecond}, false},
		{"no margin: another replica may lead before ours stopped", Timing{12 * s, 10 * s, 2 * s}, true},
		{"renew deadline past the lease", Timing{10 * s, 15 * s, 2 * s}, true},
		{"lease in fractions of a second", Timing{2500 * time.Millisecond, s, 100 * time.Millisecond}, true},
		{"renew deadline within client-go's jitter of the retry period", Timing{15 * s, 2 * s, 2 * s}, true},
		{"zero retry period", Timing{15 * s, 10 * s, 0}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.timing.Validate(); (err != nil) != tc.wantErr {
				t.Fatalf("Validate(%+v) = %v, want error: %v", tc.timing, err, tc.wantErr)
			}
		})
	}
}

func TestDrainBudget(t *testing.T) {
	if got := DefaultTiming.DrainBudget(); got != 3*time.Second {
		t.Fatalf("DrainBudget of the defaults = %v, want 3s (15 s lease - 10 s renew deadline - 2 s retry)", got)
	}
}

func TestTimingWithDefaults(t *testing.T) {
	got := Timing{RenewDeadline: 4 * time.Second}.withDefaults()
	want := Timing{LeaseDuration: 15 * time.Second, RenewDeadline: 4 * time.Second, RetryPeriod: 2 * time.Second}
	if got != want {
		t.Fatalf("withDefaults = %+v, want %+v", got, want)
	}
}

func TestRestartDelay(t *testing.T) {
	s := time.Second
	for _, tc := range []struct {
		shortRuns int
		want      time.Duration
	}{
		{0, 0}, // the last manager ran a while: the next one at once
		{1, s},
		{2, 2 * s},
		{3, 4 * s},
		{6, 30 * s}, // capped
		{100, 30 * s},
	} {
		if got := restartDelay(tc.shortRuns, s, 30*s); got != tc.want {
			t.Errorf("restartDelay(%d) = %v, want %v", tc.shortRuns, got, tc.want)
		}
	}
}

func TestNextShortRuns(t *testing.T) {
	if got := nextShortRuns(2, 3*time.Second, 10*time.Second); got != 3 {
		t.Errorf("a manager that ran 3 s: %d short runs, want 3", got)
	}
	if got := nextShortRuns(2, time.Minute, 10*time.Second); got != 0 {
		t.Errorf("a manager that ran a minute: %d short runs, want 0", got)
	}
}

func TestAfterBuildFailure(t *testing.T) {
	cause := errors.New("no kind VendingMachine in the scheme")
	if err := afterBuildFailure(cause, false); err != nil {
		t.Errorf("API server away: %v, want nil (go round)", err)
	}
	err := afterBuildFailure(cause, true)
	if !errors.Is(err, errBuildWhileUp) || !errors.Is(err, cause) {
		t.Errorf("API server answering: %v, want a configuration error wrapping the cause", err)
	}
}

func TestReleaseAllowed(t *testing.T) {
	for _, tc := range []struct {
		stopping bool
		running  int
		want     bool
	}{
		{stopping: true, running: 0, want: true},
		{stopping: true, running: 1, want: false},  // graceful shutdown timed out: a controller still acts
		{stopping: false, running: 0, want: false}, // a lost lease: the process goes on
		{stopping: false, running: 2, want: false}, // client-go's release after a failed renewal
	} {
		if got := releaseAllowed(tc.stopping, tc.running); got != tc.want {
			t.Errorf("releaseAllowed(stopping %v, running %d) = %v, want %v", tc.stopping, tc.running, got, tc.want)
		}
	}
}
