package vendcli

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
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

func TestParseStatusArgs(t *testing.T) {
	for args, want := range map[string]*Target{
		"":                    nil,
		"fleet":               {Kind: KindFleet},
		"VendingFleets":       {Kind: KindFleet},
		"machines":            {Kind: KindMachine},
		"coffee":              {KindMachine, "coffee"},
		"fleet lobby":         {KindFleet, "lobby"},
		"fleet/lobby":         {KindFleet, "lobby"},
		"machine fleet":       {KindMachine, "fleet"},
		"vendingmachine/mach": {KindMachine, "mach"},
	} {
		got, err := ParseStatusArgs(strings.Fields(args))
		if err != nil || (got == nil) != (want == nil) || got != nil && *got != *want {
			t.Errorf("%q: got %v, %v; want %v", args, got, err, want)
		}
	}
	if _, err := ParseStatusArgs([]string{"pod", "coffee-1"}); err == nil {
		t.Error("pod coffee-1 must be refused")
	}
}

// A fleet whose rollout stalled is Stalled (kstatus's condition) though nothing escalated and
// every machine is Ready: only a human moves it on.
func TestATreeShowsAStalledRollout(t *testing.T) {
	f := vendingv1alpha1.VendingFleet{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "atrium"}}
	msg := "atrium-2 has not become Ready within the progress deadline 10m0s"
	f.Status.Conditions = []metav1.Condition{
		{Type: vendingv1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: "AllMachinesReady", LastTransitionTime: at(time.Hour)},
		{Type: vendingv1alpha1.ConditionProgressing, Status: metav1.ConditionFalse, Reason: "RolloutStalled", Message: msg, LastTransitionTime: at(time.Minute)},
		{Type: vendingv1alpha1.ConditionEscalated, Status: metav1.ConditionFalse, Reason: "WithinIntensity", LastTransitionTime: at(time.Hour)},
		{Type: vendingv1alpha1.ConditionStalled, Status: metav1.ConditionTrue, Reason: "RolloutStalled", Message: msg, LastTransitionTime: at(time.Minute)},
	}
	out := RenderTree(Snapshot{Fleets: []vendingv1alpha1.VendingFleet{f}}, TreeOptions{Now: now})
	if !regexp.MustCompile(`VendingFleet/atrium +Stalled .*RolloutStalled: atrium-2 has not become Ready`).MatchString(out) {
		t.Errorf("the stalled rollout must show as Stalled, with why:\n%s", out)
	}
}
