package vendcli

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/vendingfleet/vending-operator/internal/supervisor"
)

// Kind of object a command acts on.
type Kind string

// Kinds.
const (
	KindMachine Kind = "vendingmachine"
	KindFleet   Kind = "vendingfleet"
)

// Target is MACHINE, machine/NAME or fleet/NAME (and kubectl's names for the kinds: vend,
// vmach, vendingmachine[s], vfleet, vendingfleet[s], with or without the group).
type Target struct {
	Kind Kind
	Name string
}

func (t Target) String() string { return string(t.Kind) + "/" + t.Name }

// ParseTarget reads a command's argument; a bare name is a machine.
func ParseTarget(arg string) (Target, error) {
	kind, name, found := strings.Cut(arg, "/")
	if !found {
		kind, name = "machine", arg
	}
	kind = strings.TrimSuffix(strings.ToLower(kind), ".vending.resilience.dev")
	if name == "" || strings.Contains(name, "/") {
		return Target{}, fmt.Errorf("%q: want MACHINE, machine/NAME or fleet/NAME", arg)
	}
	switch kind {
	case "machine", "machines", "vend", "vmach", "vendingmachine", "vendingmachines":
		return Target{KindMachine, name}, nil
	case "fleet", "fleets", "vfleet", "vendingfleet", "vendingfleets":
		return Target{KindFleet, name}, nil
	}
	return Target{}, fmt.Errorf("%q: unknown kind %q (want machine or fleet)", arg, kind)
}

// ResetValue is the reset annotation's next value: the time of the reset, which tells a reader
// when and differs from the current value (the operator resets only on a change). Two resets
// within one second get the nanoseconds (and a suffix if even those match).
func ResetValue(now time.Time, current string) string {
	v := now.UTC().Format(time.RFC3339)
	if v != current {
		return v
	}
	if v = now.UTC().Format(time.RFC3339Nano); v != current {
		return v
	}
	return v + "-2"
}

// resetPatch is the JSON merge patch that sets only the reset annotation.
func resetPatch(value string) []byte {
	return mustJSON(map[string]any{"metadata": map[string]any{"annotations": map[string]string{supervisor.AnnotationReset: value}}})
}

// pausedPatch is the JSON merge patch that sets only spec.paused.
func pausedPatch(paused bool) []byte {
	return mustJSON(map[string]any{"spec": map[string]any{"paused": paused}})
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
