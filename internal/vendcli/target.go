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
	if name == "" || strings.Contains(name, "/") {
		return Target{}, fmt.Errorf("%q: want MACHINE, machine/NAME or fleet/NAME", arg)
	}
	k, ok := kindOf(kind)
	if !ok {
		return Target{}, fmt.Errorf("%q: unknown kind %q (want machine or fleet)", arg, kind)
	}
	return Target{k, name}, nil
}

// ParseStatusArgs reads status's arguments as kubectl get reads its own: none is everything
// (nil), a kind alone is every object of that kind (Target.Name empty: `status fleet` lists the
// fleets), KIND NAME or a ParseTarget argument is one object.
func ParseStatusArgs(args []string) (*Target, error) {
	switch len(args) {
	case 0:
		return nil, nil
	case 1:
		if k, ok := kindOf(args[0]); ok {
			return &Target{Kind: k}, nil
		}
		t, err := ParseTarget(args[0])
		return &t, err
	}
	t, err := ParseTarget(args[0] + "/" + args[1])
	return &t, err
}

// kindOf reads kubectl's names for the kinds: vend, vmach, vendingmachine[s], vfleet,
// vendingfleet[s], with or without the group.
func kindOf(word string) (Kind, bool) {
	switch strings.TrimSuffix(strings.ToLower(word), ".vending.resilience.dev") {
	case "machine", "machines", "vend", "vmach", "vendingmachine", "vendingmachines":
		return KindMachine, true
	case "fleet", "fleets", "vfleet", "vendingfleet", "vendingfleets":
		return KindFleet, true
	}
	return "", false
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
