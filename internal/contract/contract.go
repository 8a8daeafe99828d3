// Package contract is the small contract between the operator and the vending pod, the two
// separate programs of this project: the port and paths the pod serves, the exit codes it
// dies with, the reasons it names in its termination message, and the JSON shapes of the
// replies the operator reads. Everything here is documented in docs/vendingpod-api.md; the
// operator's decider keys on the reasons.
package contract

import (
	"fmt"
	"strings"
	"time"
)

// Port is the vending pod's HTTP port (API, probes and metrics).
const Port = 8080

// Probe and state paths.
const (
	PathHealthz = "/healthz"
	PathReadyz  = "/readyz"
	PathState   = "/v1/state"
)

// DefaultTerminationMessagePath is where Kubernetes reads a container's termination message.
const DefaultTerminationMessagePath = "/dev/termination-log"

// Failure reasons. The pod names one of the first group in its termination message; the
// operator derives the second group from a container's exit when there is no message.
const (
	// ReasonOutOfCoffeeBeans: a brew found the bean hopper empty. The order is persisted; the
	// restart refills the beans and completes it (the talk's OutOfCoffeeBeansFailure).
	ReasonOutOfCoffeeBeans = "OutOfCoffeeBeans"
	// ReasonCorruptLog: the event log failed its checksum before its tail. The pod refuses to
	// serve and keeps the bytes; restarting cannot help.
	ReasonCorruptLog = "CorruptLog"
	// ReasonStorageFailure: a write or fsync of the log failed (ENOSPC, I/O error). The process
	// dies rather than pretend: what was not synced was never acknowledged.
	ReasonStorageFailure = "StorageFailure"
	// ReasonLogLocked: another process holds the log; two writers would fork the history.
	ReasonLogLocked = "LogLocked"
	// ReasonConfigError: bad flags or environment.
	ReasonConfigError = "ConfigError"

	// ReasonKilled: the container died of SIGKILL (exit 137) without a message: an external
	// kill, a crash test. Crash-only software treats it as an ordinary stop.
	ReasonKilled = "Killed"
	// ReasonOOMKilled: the kernel's OOM killer ended the container.
	ReasonOOMKilled = "OOMKilled"
	// ReasonTerminated: SIGTERM (exit 143). The vending pod names it in its termination
	// message (ExitTerminated); the operator derives it from exit 143 without one.
	ReasonTerminated = "Terminated"
	// ReasonExited: the container exited 0. The vending pod never does that on purpose.
	ReasonExited = "Exited"
	// ReasonError: any other non-zero exit without a message (a Go panic exits 2).
	ReasonError = "Error"
)

// Exit codes of the vending pod, one per reason it names.
const (
	ExitConfigError      = 1
	ExitOutOfCoffeeBeans = 10
	ExitCorruptLog       = 11
	ExitStorageFailure   = 12
	ExitLogLocked        = 13
	// ExitTerminated: the pod got SIGTERM (the kubelet stopping it) and ended at once, as a
	// process killed by SIGTERM reports itself (128+15). There is nothing to flush: everything
	// acknowledged is durable already. Its message names ReasonTerminated.
	ExitTerminated = 143
)

// TerminationMessage is the JSON the pod writes to its termination-message path before it
// exits on a failure: the failure reified, for the supervisor to read from the pod status.
type TerminationMessage struct {
	Reason       string    `json:"reason"`
	Message      string    `json:"message"`
	ExitCode     int       `json:"exitCode"`
	PendingOrder string    `json:"pendingOrder,omitempty"`
	Sequence     uint64    `json:"sequence,omitempty"`
	File         string    `json:"file,omitempty"`
	Offset       int64     `json:"offset,omitempty"`
	Time         time.Time `json:"time"`
	// InPlace is the in-pod supervisor's record of the restarts it made inside this pod before
	// it gave up (set by the supervisor, PID 1, when it exits carrying its child's failure).
	InPlace *InPlace `json:"inPlace,omitempty"`
}

// AnnotationInPlace is the annotation on its own pod in which the in-pod supervisor reports
// its in-place restarts as they happen (an InPlace as JSON), so that the operator folds them
// into the machine's status and events without waiting for the pod to end.
const AnnotationInPlace = "vending.resilience.dev/in-place-restarts"

// MaxInPlaceTimes bounds InPlace.Times: the newest restarts are enough to fold what the
// operator has not seen yet (it folds on every report) and to count a window's intensity
// (maxRestarts restarts at most fit before the supervisor gives up).
const MaxInPlaceTimes = 32

// InPlace is what the in-pod supervisor reports about the restarts it made in one pod.
type InPlace struct {
	// Restarts made in this pod so far (the n-th restart has number n).
	Restarts int32 `json:"restarts"`
	// Times of the newest restarts (at most MaxInPlaceTimes), oldest first: the last one is
	// restart number Restarts.
	Times []time.Time `json:"times,omitempty"`
	// Last is the failure that caused the newest restart and what was decided about it.
	Last *InPlaceFailure `json:"last,omitempty"`
}

// InPlaceFailure is one failure of the vending process and the in-pod supervisor's decision.
type InPlaceFailure struct {
	TerminationMessage
	// Decision, as supervision.Decide made it (Action is Restart for an in-place restart).
	Action          string    `json:"action"`
	DecisionReason  string    `json:"decisionReason"`
	DecisionMessage string    `json:"decisionMessage"`
	RestartAt       time.Time `json:"restartAt"`
}

// State is the reply of GET /v1/state.
type State struct {
	Inserted   int64          `json:"inserted"`
	TotalCoins int64          `json:"totalCoins"`
	Beans      int64          `json:"beans"`
	Milk       int64          `json:"milk"`
	Degraded   bool           `json:"degraded"`
	Sequence   uint64         `json:"sequence"`
	Menu       map[string]int `json:"menu"`
	Dispensed  map[string]int `json:"dispensed"`
	Pending    []string       `json:"pending"`
}

// Event is one entry of the audit trail: GET /v1/events answers them, `vendinglog dump --json`
// prints them. Fields a kind of event does not use are left out.
type Event struct {
	Sequence uint64 `json:"sequence"`
	Type     string `json:"type"`
	Count    int64  `json:"count,omitempty"`
	OrderID  string `json:"orderId,omitempty"`
	Beverage string `json:"beverage,omitempty"`
	Price    int64  `json:"price,omitempty"`
	Change   int64  `json:"change,omitempty"`
	Beans    int64  `json:"beans,omitempty"`
	Milk     int64  `json:"milk,omitempty"`
	Key      string `json:"idempotencyKey,omitempty"`
	Reason   string `json:"reason,omitempty"`
	Message  string `json:"message,omitempty"`
}

// Details are the fields the event's type uses, as key=value in a fixed order (the message
// left out: callers that show it add it), for one-line renderings of the audit trail.
func (e Event) Details() string {
	var parts []string
	add := func(k string, v any, set bool) {
		if set {
			parts = append(parts, fmt.Sprintf("%s=%v", k, v))
		}
	}
	add("count", e.Count, e.Count != 0)
	add("order", e.OrderID, e.OrderID != "")
	add("beverage", e.Beverage, e.Beverage != "")
	add("price", e.Price, e.Price != 0)
	add("change", e.Change, e.Change != 0)
	add("beans", e.Beans, e.Type == "Refilled")
	add("milk", e.Milk, e.Type == "Refilled")
	add("key", fmt.Sprintf("%q", e.Key), e.Key != "")
	add("reason", e.Reason, e.Reason != "")
	return strings.Join(parts, " ")
}
