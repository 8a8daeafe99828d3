package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vendingfleet/vending-operator/internal/eventlog"
	"github.com/vendingfleet/vending-operator/internal/vending"
	"github.com/vendingfleet/vending-operator/internal/vendingpod"
)

type nop struct{}

func (nop) RestoreSnapshot(uint64, []byte) error { return nil }
func (nop) ReplayRecord(eventlog.Record) error   { return nil }

// writeLog writes n keyed inserts and a snapshot after the first half, and returns the offsets
// of the records of the first segment by sequence.
func writeLog(t *testing.T, dir string, n int) map[uint64]int64 {
	t.Helper()
	m := vending.New(vending.DefaultConfig())
	l, _, err := eventlog.Open(dir, eventlog.Options{}, nop{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		e, _, err := m.InsertCoins(1, fmt.Sprintf("key-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		seq, err := l.Append(vendingpod.RecordEvent, vending.AppendEvent(nil, e))
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Apply(seq, e); err != nil {
			t.Fatal(err)
		}
		if i == n/2 {
			if err := l.SaveSnapshot(seq, m.AppendSnapshot(nil)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	offsets := map[uint64]int64{}
	if _, err := eventlog.ScanFile(filepath.Join(dir, "0000000000000001.log"), 0, 0, func(off int64, r eventlog.Record) error {
		offsets[r.Seq] = off
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return offsets
}

// snapshotDir reads every file of dir: the dump must leave them exactly as they were.
func snapshotDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = b
	}
	return out
}

func dump(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(append([]string{"dump"}, args...), &out, &errb)
	if errb.Len() > 0 {
		t.Logf("stderr: %s", errb.String())
	}
	return code, out.String()
}

// A log with a corrupt record in the middle, whose LOCK another process holds: the dump names
// the file and the offset of the bad record, shows what follows, lists the records before and
// after it, exits 3, and changes nothing.
func TestDumpCorruptLockedLog(t *testing.T) {
	dir := t.TempDir()
	offsets := writeLog(t, dir, 40)
	seg := filepath.Join(dir, "0000000000000001.log")
	data, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	bad := offsets[30]
	data[bad+30] ^= 0xff // inside record 30's payload: a CRC mismatch
	if err := os.WriteFile(seg, data, 0o600); err != nil {
		t.Fatal(err)
	}
	// A creation a crash interrupted: recovery would remove it, the dump must not.
	if err := os.WriteFile(filepath.Join(dir, "0000000000000029.log.tmp"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	release, err := eventlog.OSFS{}.Lock(filepath.Join(dir, "LOCK"))
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	before := snapshotDir(t, dir)

	code, out := dump(t, dir)
	t.Logf("dump:\n%s", out)
	if code != exitDamaged {
		t.Fatalf("exit %d, want %d", code, exitDamaged)
	}
	for _, want := range []string{
		fmt.Sprintf("DAMAGE %s at offset %d: eventlog: crc mismatch", seg, bad),
		fmt.Sprintf("readable records resume at offset %d (seq 31)", offsets[31]),
		"seq 29", "CoinsInserted count=1 key=\"key-29\"", "(after damage) seq 31", "seq 40",
		"snapshot snapshot-0000000000000014.snap: seq 20, inserted 20, totalCoins 20, orders 0 (0 pending), keys 20",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the dump does not say %q", want)
		}
	}
	if strings.Contains(out, "seq 30 ") {
		t.Error("the corrupt record 30 was listed as a record")
	}
	after := snapshotDir(t, dir)
	if len(after) != len(before) {
		t.Fatalf("files %d, were %d", len(after), len(before))
	}
	for name, b := range before {
		if !bytes.Equal(after[name], b) {
			t.Fatalf("the dump changed %s", name)
		}
	}

	// --json: one object a line; the damage line names the file and the offset.
	code, out = dump(t, dir, "--json")
	var sawDamage bool
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var v map[string]any
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Fatalf("not JSON: %q", line)
		}
		if v["kind"] == "damage" {
			sawDamage = v["file"] == seg && v["offset"] == float64(bad) && v["nextSeq"] == float64(31)
		}
	}
	if code != exitDamaged || !sawDamage {
		t.Fatalf("--json: exit %d, damage line right: %v\n%s", code, sawDamage, out)
	}
}

// A clean log: exit 0; --after and --limit (before or after DIR) choose the records shown.
func TestDumpPage(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, 10)
	code, out := dump(t, "--after", "3", dir, "--limit", "2")
	if code != exitOK {
		t.Fatalf("exit %d\n%s", code, out)
	}
	for _, want := range []string{"seq 4 ", "seq 5 "} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
	for _, not := range []string{"seq 3 ", "seq 6 ", "DAMAGE"} {
		if strings.Contains(out, not) {
			t.Errorf("unexpected %q in\n%s", not, out)
		}
	}
	if code, _ := dump(t); code != exitUsage {
		t.Fatalf("no directory: exit %d", code)
	}
}
