package history

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// Model is the porcupine model of one vending machine as its customers see it.
func Model() porcupine.Model {
	m := &porcupine.NondeterministicModel{
		Init: func() []any { return []any{machine{}} },
		Step: func(state, input, output any) []any {
			next := step(state.(machine), input.(Input), output.(Output))
			out := make([]any, len(next))
			for i, m := range next {
				out[i] = m
			}
			return out
		},
		Equal:             func(a, b any) bool { return equal(a.(machine), b.(machine)) },
		Hash:              func(s any) uint64 { return hash(s.(machine)) },
		DescribeOperation: func(in, out any) string { return Describe(in.(Input), out.(Output)) },
		DescribeState:     func(s any) string { return describeState(s.(machine)) },
	}
	return m.ToModel()
}

// Recorder collects the operations of concurrent customers. It is safe for concurrent use.
type Recorder struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
}

// NewRecorder starts a history now.
func NewRecorder() *Recorder { return &Recorder{start: time.Now()} }

// Pending is an operation that was called and has not returned.
type Pending struct {
	r      *Recorder
	client int
	in     Input
	call   int64
}

// Call records that customer client sends in, now. Call it before the first attempt.
func (r *Recorder) Call(client int, in Input) *Pending {
	return &Pending{r: r, client: client, in: in, call: r.now()}
}

// Return records the answer, now. An Unknown outcome is recorded as never returning: the
// request may take effect at any time after its call.
func (p *Pending) Return(out Output) {
	ret := p.r.now()
	if out.Outcome == Unknown {
		ret = math.MaxInt64
	}
	p.r.mu.Lock()
	defer p.r.mu.Unlock()
	p.r.ops = append(p.r.ops, porcupine.Operation{ClientId: p.client, Input: p.in, Call: p.call, Output: out, Return: ret})
}

func (r *Recorder) now() int64 { return int64(time.Since(r.start)) }

// Operations returns the history so far.
func (r *Recorder) Operations() []porcupine.Operation {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]porcupine.Operation(nil), r.ops...)
}

// Verdict is the result of a check.
type Verdict struct {
	Ops, Acknowledged, Unknown, Refused int
	Result                              porcupine.CheckResult // Ok, Illegal, or Unknown (timed out)
	Visualization                       string                // the HTML file written, if any
}

// Linearizable says the model accepted the history.
func (v Verdict) Linearizable() bool { return v.Result == porcupine.Ok }

func (v Verdict) String() string {
	s := fmt.Sprintf("ops=%d answered=%d unknown=%d refused=%d linearizable=%s",
		v.Ops, v.Acknowledged, v.Unknown, v.Refused, map[porcupine.CheckResult]string{
			porcupine.Ok: "yes", porcupine.Illegal: "no", porcupine.Unknown: "undecided (timeout)"}[v.Result])
	if v.Visualization != "" {
		s += " visualization=" + v.Visualization
	}
	return s
}

// Check checks ops against the model, for at most timeout (twice that to also visualize). Unless the history is linearizable,
// it writes porcupine's HTML visualization to visualize (if not "").
func Check(ops []porcupine.Operation, timeout time.Duration, visualize string) (Verdict, error) {
	ops = markRepeated(ops)
	v := Verdict{Ops: len(ops)}
	for _, op := range ops {
		switch op.Output.(Output).Outcome {
		case Unknown:
			v.Unknown++
		case Refused:
			v.Refused++
		default:
			v.Acknowledged++
		}
	}
	model := Model()
	// The verdict comes from the plain check, which stops at the first dead end. The verbose
	// one (for the visualization) keeps searching for the longest partial linearizations, which
	// takes far longer on a rejected history: it runs only then, for at most the same timeout.
	v.Result = porcupine.CheckOperationsTimeout(model, ops, timeout)
	if v.Result == porcupine.Ok || visualize == "" {
		return v, nil
	}
	_, info := porcupine.CheckOperationsVerbose(model, ops, timeout)
	if err := os.MkdirAll(filepath.Dir(visualize), 0o755); err != nil {
		return v, fmt.Errorf("history: writing the visualization: %w", err)
	}
	if err := porcupine.VisualizePath(model, info, visualize); err != nil {
		return v, fmt.Errorf("history: writing the visualization %s: %w", visualize, err)
	}
	v.Visualization = visualize
	return v, nil
}

// VisualizationPath is where a failed check of the named test writes its HTML: under
// $ARTIFACTS if set, else under the test's working directory (t.TempDir would be deleted).
func VisualizationPath(name string) string {
	dir := os.Getenv("ARTIFACTS")
	if dir == "" {
		dir = "porcupine"
	}
	abs, err := filepath.Abs(filepath.Join(dir, fmt.Sprintf("%s-%s.html", name, time.Now().UTC().Format("20060102T150405"))))
	if err != nil {
		return filepath.Join(dir, name+".html")
	}
	return abs
}

// markRepeated sets Input.Repeated on the operations whose key occurs more than once.
func markRepeated(ops []porcupine.Operation) []porcupine.Operation {
	n := map[string]int{}
	for _, op := range ops {
		if k := op.Input.(Input).Key; k != "" {
			n[k]++
		}
	}
	out := make([]porcupine.Operation, len(ops))
	for i, op := range ops {
		in := op.Input.(Input)
		in.Repeated = in.Key != "" && n[in.Key] > 1
		op.Input = in
		out[i] = op
	}
	return out
}

// FromHTTP turns an HTTP answer to in into an Output. err is the transport's error; a missing
// answer, a 5xx or an answer that does not parse is Unknown: the request may have been done.
func FromHTTP(in Input, code int, body []byte, err error) Output {
	if err != nil || code == 0 || code >= 500 {
		return Output{Outcome: Unknown}
	}
	if code == http.StatusPaymentRequired {
		var e struct{ Error, Message string }
		var need int64
		if json.Unmarshal(body, &e) == nil && e.Error == "NotEnoughCoins" {
			if _, err := fmt.Sscanf(e.Message, "Please insert [%d] coins", &need); err == nil {
				return Output{Outcome: NotEnoughCoins, Need: need}
			}
		}
		return Output{Outcome: Refused, Detail: string(body)}
	}
	if code != http.StatusOK {
		return Output{Outcome: Refused, Detail: fmt.Sprintf("%d %s", code, body)}
	}
	var a struct {
		Inserted   int64            `json:"inserted"`
		Sequence   uint64           `json:"sequence"`
		OrderID    string           `json:"orderId"`
		Change     int64            `json:"change"`
		Status     string           `json:"status"`
		TotalCoins int64            `json:"totalCoins"`
		Dispensed  map[string]int64 `json:"dispensed"`
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return Output{Outcome: Unknown}
	}
	out := Output{Outcome: OK, Seq: a.Sequence}
	switch in.Kind {
	case Coins:
		out.Inserted = a.Inserted
	case Order:
		out.OrderID, out.Change = a.OrderID, a.Change
		if a.Status != "dispensed" {
			return Output{Outcome: Refused, Detail: "order not dispensed: " + string(body)}
		}
	case State:
		out.Inserted, out.Total = a.Inserted, a.TotalCoins
		for _, n := range a.Dispensed {
			out.Dispensed += n
		}
	}
	return out
}
