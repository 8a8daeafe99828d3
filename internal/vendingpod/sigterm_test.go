package vendingpod

import (
	"encoding/json"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/vendingfleet/vending-operator/internal/contract"
)

// Defect 4: SIGTERM (the kubelet stopping the pod) ends the real binary at once with the
// documented exit code 143 and a Terminated termination message, not Go's default; what was
// acknowledged before is there after the restart.
func TestSIGTERMExitsTerminated(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	p := startPod(t, dir)
	p.must("POST", "/v1/coins", "k1", coinsRequest{Count: 2}, 200, nil)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.waitExit(); code != contract.ExitTerminated {
		t.Fatalf("exit code %d after SIGTERM, want %d; stderr:\n%s", code, contract.ExitTerminated, p.stderr.String())
	}
	var tm contract.TerminationMessage
	raw, err := os.ReadFile(p.termMsg)
	if err != nil || json.Unmarshal(raw, &tm) != nil {
		t.Fatalf("termination message: %v %q", err, raw)
	}
	if tm.Reason != contract.ReasonTerminated || tm.ExitCode != contract.ExitTerminated {
		t.Fatalf("termination message %+v, want reason %s", tm, contract.ReasonTerminated)
	}
	p = startPod(t, dir)
	if st := p.state(); st.TotalCoins != 2 {
		t.Fatalf("after SIGTERM and a restart: %d coins, want 2", st.TotalCoins)
	}
}
