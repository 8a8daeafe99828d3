package vendcli

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata with the output the tests got")

// golden compares got with testdata/NAME.golden (or rewrites it with -update).
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run the test with -update to write it)", err)
	}
	if string(want) != got {
		t.Errorf("output differs from %s (run with -update to accept it):\n--- got:\n%s\n--- want:\n%s", path, got, want)
	}
}

// The events pages were recorded from a real vending pod (cmd/vendingpod, GET /v1/events after
// coins, a Latte, two refused orders and a refill): the command renders exactly that body.
func TestRenderEventsOfARecordedPage(t *testing.T) {
	for _, tc := range []struct {
		file  string
		limit int
	}{
		{"events-page.json", 8},      // fewer than asked: the end of the log
		{"events-full-page.json", 3}, // a full page: say how to read on
	} {
		body, err := os.ReadFile(filepath.Join("testdata", tc.file))
		if err != nil {
			t.Fatal(err)
		}
		got, err := RenderEvents(body, "coffee", tc.limit)
		if err != nil {
			t.Fatal(err)
		}
		golden(t, strings.TrimSuffix(tc.file, ".json"), got)
	}
	if _, err := RenderEvents([]byte(`{"error":"Busy","message":"4 event reads are in progress"}`), "coffee", 3); err == nil {
		t.Error("an error body must not render as an empty page")
	}
}

func TestUseColor(t *testing.T) {
	env := func(kv ...string) func(string) string {
		return func(k string) string {
			for i := 0; i+1 < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	for _, tc := range []struct {
		name     string
		mode     ColorMode
		terminal bool
		env      func(string) string
		want     bool
	}{
		{"auto on a terminal", ColorAuto, true, env(), true},
		{"auto into a pipe", ColorAuto, false, env(), false},
		{"auto with NO_COLOR", ColorAuto, true, env("NO_COLOR", "1"), false},
		{"auto with an empty NO_COLOR", ColorAuto, true, env("NO_COLOR", ""), true},
		{"auto on a dumb terminal", ColorAuto, true, env("TERM", "dumb"), false},
		{"always wins over NO_COLOR and a pipe", ColorAlways, false, env("NO_COLOR", "1"), true},
		{"never on a terminal", ColorNever, true, env(), false},
	} {
		got, err := UseColor(tc.mode, tc.terminal, tc.env)
		if err != nil || got != tc.want {
			t.Errorf("%s: got %v, %v; want %v", tc.name, got, err, tc.want)
		}
	}
	if _, err := UseColor("sometimes", true, env()); err == nil {
		t.Error("--color=sometimes must be refused")
	}
}

func TestParseTarget(t *testing.T) {
	for arg, want := range map[string]Target{
		"coffee":         {KindMachine, "coffee"},
		"machine/coffee": {KindMachine, "coffee"},
		"vend/coffee":    {KindMachine, "coffee"},
		"vendingmachine.vending.resilience.dev/cof": {KindMachine, "cof"},
		"fleet/lobby":         {KindFleet, "lobby"},
		"vfleet/lobby":        {KindFleet, "lobby"},
		"VendingFleets/lobby": {KindFleet, "lobby"},
	} {
		if got, err := ParseTarget(arg); err != nil || got != want {
			t.Errorf("%s: got %v, %v; want %v", arg, got, err, want)
		}
	}
	for _, arg := range []string{"pod/coffee-1", "fleet/", "fleet/a/b", ""} {
		if _, err := ParseTarget(arg); err == nil {
			t.Errorf("%q must be refused", arg)
		}
	}
}

// A reset happens only when the annotation changes: the next value always differs from the
// current one, also twice within a second or a nanosecond.
func TestResetValueAlwaysChanges(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 5, time.UTC)
	first := ResetValue(now, "")
	if first != "2026-11-29T12:00:00Z" {
		t.Errorf("first reset: %q, want the time to the second", first)
	}
	second := ResetValue(now, first)
	if second == first {
		t.Errorf("a second reset within the same second wrote the same value %q", second)
	}
	if third := ResetValue(now, second); third == second {
		t.Errorf("a third reset at the same nanosecond wrote the same value %q", third)
	}
}

func TestShortenKeepsOneLineWithinWidth(t *testing.T) {
	got := shorten("a   long\nmessage "+strings.Repeat("x", 200), 40)
	if strings.Contains(got, "\n") || len([]rune(got)) > 40 || !strings.HasSuffix(got, "…") {
		t.Errorf("shorten: %q", got)
	}
	if got := shorten("short", 40); got != "short" {
		t.Errorf("a short message changed: %q", got)
	}
}
