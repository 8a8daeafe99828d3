package history

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// op builds an operation from call to ret (ret < 0: no answer).
func op(client int, call, ret int64, in Input, out Output) porcupine.Operation {
	if ret < 0 {
		ret = math.MaxInt64
	}
	return porcupine.Operation{ClientId: client, Input: in, Output: out, Call: call, Return: ret}
}

func coins(key string, n int64) Input { return Input{Kind: Coins, Key: key, Count: n} }
func order(key string) Input          { return Input{Kind: Order, Key: key, Beverage: "Espresso", Price: 2} }
func state() Input                    { return Input{Kind: State} }

func inserted(n int64, seq uint64) Output { return Output{Outcome: OK, Inserted: n, Seq: seq} }
func placed(id string, change int64, seq uint64) Output {
	return Output{Outcome: OK, OrderID: id, Change: change, Seq: seq}
}
func need(n int64) Output { return Output{Outcome: NotEnoughCoins, Need: n} }
func total(ins, tot, disp int64, seq uint64) Output {
	return Output{Outcome: OK, Inserted: ins, Total: tot, Dispensed: disp, Seq: seq}
}

var unknown = Output{Outcome: Unknown}

// sequential is a correct history of one customer, one request after the other.
func sequential() []porcupine.Operation {
	ops := []porcupine.Operation{
		op(0, 0, 0, coins("a", 1), inserted(1, 1)),
		op(0, 0, 0, coins("b", 2), inserted(3, 2)),
		op(0, 0, 0, order("c"), placed("o-3", 1, 3)), // the dispense is event 4
		op(0, 0, 0, order("d"), need(2)),             // the keyed refusal is event 5
		op(0, 0, 0, coins("g", 1), inserted(1, 6)),
		op(0, 0, 0, order("h"), need(1)), // event 7
		op(0, 0, 0, coins("i", 1), inserted(2, 8)),
		op(0, 0, 0, order("j"), placed("o-9", 0, 9)), // the dispense is event 10
		op(0, 0, 0, coins("e", 1), inserted(1, 11)),
		op(0, 0, 0, coins("a", 1), inserted(1, 1)),   // a retry: the first answer
		op(0, 0, 0, order("d"), need(2)),             // a refusal stays a refusal...
		op(0, 0, 0, coins("f", 1), inserted(2, 12)),  // ...even once there are enough coins
		op(0, 0, 0, order("d"), need(2)),             // (still)
		op(0, 0, 0, state(), total(2, 6, 2, 12)),     // 1+2-1+1+1+1+1 coins, two Espressos
		op(0, 0, 0, order("c"), placed("o-3", 1, 3)), // a retry of the order
	}
	for i := range ops {
		ops[i].Call, ops[i].Return = int64(2*i), int64(2*i+1)
	}
	return ops
}

func check(t *testing.T, ops []porcupine.Operation) bool {
	t.Helper()
	v, err := Check(ops, 10*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	if v.Result == porcupine.Unknown {
		t.Fatalf("the check timed out: %v", v)
	}
	return v.Linearizable()
}

func TestModelAcceptsCorrectHistories(t *testing.T) {
	if !check(t, sequential()) {
		t.Fatal("a correct sequential history was rejected")
	}
	concurrent := []porcupine.Operation{
		// Two customers insert at once; the log ordered b before a.
		op(0, 0, 10, coins("a", 1), inserted(3, 2)),
		op(1, 1, 9, coins("b", 2), inserted(2, 1)),
		// A request with no answer may have happened...
		op(0, 11, -1, coins("lost?", 5), unknown),
		// ...and did: its retry (after a restart) is told the answer it would have had.
		op(1, 12, 13, coins("lost?", 5), inserted(8, 4)),
		op(1, 14, 15, state(), total(8, 8, 0, 4)),
	}
	if !check(t, concurrent) {
		t.Fatal("a correct concurrent history was rejected")
	}
	notDone := []porcupine.Operation{
		op(0, 0, 1, coins("a", 1), inserted(1, 1)),
		op(0, 2, -1, coins("b", 5), unknown), // never happened
		op(1, 3, 4, state(), total(1, 1, 0, 1)),
	}
	if !check(t, notDone) {
		t.Fatal("an unknown request that did not happen was rejected")
	}
}

// Each history breaks one promise; the model must reject every one.
func TestModelRejectsBrokenPromises(t *testing.T) {
	for _, tc := range []struct {
		name string
		ops  []porcupine.Operation
	}{
		{"an acknowledged coin disappears from the total", append(sequential()[:13],
			op(0, 100, 101, state(), total(2, 5, 2, 12)))},
		{"an acknowledged coin is lost and its sequence given again (a power cut ate it)", []porcupine.Operation{
			op(0, 0, 1, coins("a", 1), inserted(1, 1)),
			op(0, 2, 3, coins("b", 1), inserted(1, 1)),
		}},
		{"a paid order is lost with its coins and its sequences given again", []porcupine.Operation{
			// The totals alone cannot tell: only the sequence shows the machine forgot events.
			op(0, 0, 1, coins("a", 2), inserted(2, 1)),
			op(0, 2, 3, order("b"), placed("o-2", 0, 2)),
			op(0, 4, 5, coins("c", 2), inserted(2, 1)),
		}},
		{"a refusal asks for the wrong number of coins", []porcupine.Operation{
			op(0, 0, 1, coins("a", 1), inserted(1, 1)),
			op(0, 2, 3, order("b"), need(2)),
		}},
		{"a retry applies the key twice", []porcupine.Operation{
			op(0, 0, 1, coins("a", 2), inserted(2, 1)),
			op(0, 2, 3, coins("a", 2), inserted(4, 2)),
		}},
		{"a retry is told the first answer but the coins count twice", []porcupine.Operation{
			op(0, 0, 1, coins("a", 2), inserted(2, 1)),
			op(0, 2, 3, coins("a", 2), inserted(2, 1)),
			op(0, 4, 5, state(), total(4, 4, 0, 2)),
		}},
		{"an unknown request counted twice", []porcupine.Operation{
			op(0, 0, -1, coins("a", 2), unknown),
			op(0, 1, 2, coins("a", 2), inserted(2, 1)),
			op(0, 3, 4, state(), total(4, 4, 0, 1)),
		}},
		{"an order dispensed twice", []porcupine.Operation{
			op(0, 0, 1, coins("a", 4), inserted(4, 1)),
			op(0, 2, 3, order("b"), placed("o-2", 2, 2)),
			op(0, 4, 5, order("b"), placed("o-4", 0, 4)),
		}},
		{"wrong change", []porcupine.Operation{
			op(0, 0, 1, coins("a", 3), inserted(3, 1)),
			op(0, 2, 3, order("b"), placed("o-2", 0, 2)),
		}},
		{"a refusal with enough coins", []porcupine.Operation{
			op(0, 0, 1, coins("a", 2), inserted(2, 1)),
			op(0, 2, 3, order("b"), need(1)),
		}},
		{"a refused order's retry is served once coins are in", []porcupine.Operation{
			op(0, 0, 1, order("b"), need(2)),
			op(0, 2, 3, coins("a", 2), inserted(2, 2)),
			op(0, 4, 5, order("b"), placed("o-3", 0, 3)),
		}},
		{"a read sees a coin that a later read does not (a lost acknowledgement)", []porcupine.Operation{
			op(0, 0, -1, coins("a", 2), unknown),
			op(1, 1, 2, state(), total(2, 2, 0, 1)),
			op(1, 3, 4, state(), total(0, 0, 0, 1)),
		}},
		{"a request refused for no reason", []porcupine.Operation{
			op(0, 0, 1, coins("a", 2), Output{Outcome: Refused, Detail: "409 Conflict"}),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if check(t, tc.ops) {
				t.Fatal("the model accepted a broken history")
			}
		})
	}
}

// A rejected history leaves porcupine's visualization where the test said.
func TestCheckWritesTheVisualization(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "history.html")
	ops := []porcupine.Operation{
		op(0, 0, 1, coins("a", 1), inserted(1, 1)),
		op(1, 2, 3, state(), total(0, 0, 0, 1)),
	}
	v, err := Check(ops, 10*time.Second, path)
	if err != nil {
		t.Fatal(err)
	}
	if v.Linearizable() || v.Visualization != path {
		t.Fatalf("verdict %v", v)
	}
	html, err := os.ReadFile(path)
	if err != nil || !strings.Contains(string(html), "Coins(1)") {
		t.Fatalf("visualization: %v, %d bytes", err, len(html))
	}
	if !strings.Contains(v.String(), "linearizable=no") || v.Acknowledged != 2 {
		t.Fatalf("verdict line %q", v)
	}
}

func TestFromHTTP(t *testing.T) {
	for _, tc := range []struct {
		in   Input
		code int
		body string
		err  error
		want Output
	}{
		{coins("a", 2), 200, `{"inserted":5,"sequence":9}`, nil, inserted(5, 9)},
		{order("b"), 200, `{"orderId":"o-4","beverage":"Espresso","change":1,"price":2,"status":"dispensed","sequence":4}`, nil,
			placed("o-4", 1, 4)},
		{order("b"), 402, `{"error":"NotEnoughCoins","message":"Please insert [2] coins"}`, nil, need(2)},
		{state(), 200, `{"inserted":1,"totalCoins":7,"sequence":12,"dispensed":{"Espresso":2,"Latte":1}}`, nil, total(1, 7, 3, 12)},
		{coins("a", 2), 503, `{"error":"Busy"}`, nil, unknown},
		{coins("a", 2), 0, ``, os.ErrDeadlineExceeded, unknown},
		{coins("a", 2), 200, `{"inser`, nil, unknown},
		{coins("a", 2), 422, `{"error":"IdempotencyKeyReused"}`, nil,
			Output{Outcome: Refused, Detail: `422 {"error":"IdempotencyKeyReused"}`}},
	} {
		if got := FromHTTP(tc.in, tc.code, []byte(tc.body), tc.err); got != tc.want {
			t.Errorf("%d %s: got %+v, want %+v", tc.code, tc.body, got, tc.want)
		}
	}
}
