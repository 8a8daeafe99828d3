package podsupervisor

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/supervision"
)

// runOnce runs the in-pod supervisor in this process on a child given as a shell script, until
// it gives up, and returns its exit code and termination message.
func runOnce(t *testing.T, script string, memoryEvents string) (int, contract.TerminationMessage) {
	t.Helper()
	dir := t.TempDir()
	code := -1
	cfg := Config{
		Settings: Settings{Policy: supervision.Policy{MaxRestarts: 10, Window: 60e9,
			// Even a decider that restarts OOMKilled does not make the container's OOM the process's.
			Decider: map[string]supervision.Action{contract.ReasonKilled: supervision.Restart,
				contract.ReasonOOMKilled: supervision.Restart}}},
		Listen: "127.0.0.1:0", Command: []string{"/bin/sh", "-c", script},
		TerminationMessagePath: filepath.Join(dir, "termination-log"), MemoryEvents: memoryEvents,
		Logger: slog.New(slog.DiscardHandler), Exit: func(c int) { code = c },
	}
	_ = Run(cfg)
	var msg contract.TerminationMessage
	b, _ := os.ReadFile(cfg.TerminationMessagePath)
	if err := json.Unmarshal(b, &msg); err != nil {
		t.Fatalf("termination message %q: %v", b, err)
	}
	return code, msg
}

// The container's OOM kill is the pod's failure, not the process's: the kernel killed the child
// (SIGKILL) while the cgroup counted an OOM kill, so PID 1 does not restart it in the same
// limit (although the decider restarts Killed) but ends the pod as OOMKilled for the operator.
func TestOOMKillIsThePods(t *testing.T) {
	events := filepath.Join(t.TempDir(), "memory.events")
	if err := os.WriteFile(events, []byte("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The child is "OOM-killed": the count rises, then it dies of SIGKILL.
	code, msg := runOnce(t, `printf 'oom 2\noom_kill 2\n' > `+events+`; kill -9 $$`, events)
	if code != 137 || msg.Reason != contract.ReasonOOMKilled {
		t.Fatalf("exit %d, %+v; want 137 OOMKilled", code, msg)
	}
	if msg.InPlace == nil || msg.InPlace.Restarts != 0 {
		t.Fatalf("in place %+v: an OOM kill was restarted in place", msg.InPlace)
	}
}

// A SIGKILL without an OOM kill counted is an ordinary Killed, restarted in place by the decider
// (here until the window is used: 10 restarts, then the operator's).
func TestSIGKILLWithoutOOMIsKilled(t *testing.T) {
	events := filepath.Join(t.TempDir(), "memory.events")
	if err := os.WriteFile(events, []byte("oom_kill 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, msg := runOnce(t, `kill -9 $$`, events)
	if code != 137 || msg.Reason != contract.ReasonKilled || msg.InPlace == nil || msg.InPlace.Restarts != 10 {
		t.Fatalf("exit %d, %+v; want 137 Killed after 10 restarts in place", code, msg)
	}
}

// cgroup v1 counts OOM kills in memory.oom_control, in the same line as v2's memory.events.
func TestOOMKillsOfCgroupV1(t *testing.T) {
	f := filepath.Join(t.TempDir(), "memory.oom_control")
	if err := os.WriteFile(f, []byte("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if n := oomKills(f); n != 3 {
		t.Fatalf("oom_kill = %d, want 3", n)
	}
	if MemoryEventsFile() == "" {
		t.Log("this machine has neither file: an OOM kill of the child would read as Killed here")
	}
}
