package vending

import (
	"bytes"
	"testing"
)

// TestRedTeamRetentionReplayFromEverySnapshot attacks issue 9's retention claim (eviction is
// decided by the log alone, so a replay from any snapshot reproduces the live state): with
// tiny retention counts (so nearly every event evicts something), a snapshot at every
// sequence, and chains of snapshots (a machine restored from a snapshot, run on, snapshotted
// and restored again: queues rebuilt twice, stale entries gone), the final state is the live
// machine's byte for byte. It held.
func TestRedTeamRetentionReplayFromEverySnapshot(t *testing.T) {
	cfg := DefaultConfig()
	cfg.BeanCapacity = 5
	cfg.Retention = Retention{Keys: 3, Orders: 2}
	live, log := retentionWorkload(t, cfg, 1_200, func(*Machine) {})
	if live.st.ExpiredThrough == 0 || len(live.st.keys) != cfg.Retention.Keys {
		t.Fatal("the workload never evicted")
	}
	want := live.AppendSnapshot(nil)
	apply := func(m *Machine, from, to int) {
		for i := from; i < to; i++ {
			if err := m.Apply(uint64(i+1), log[i]); err != nil {
				t.Fatal(err)
			}
		}
	}
	restore := func(m *Machine) *Machine {
		r := New(cfg)
		if err := r.RestoreSnapshot(m.AppendSnapshot(nil)); err != nil {
			t.Fatal(err)
		}
		return r
	}
	for k := 0; k <= len(log); k++ {
		// One snapshot at k.
		m := New(cfg)
		apply(m, 0, k)
		m = restore(m)
		apply(m, k, len(log))
		if got := m.AppendSnapshot(nil); !bytes.Equal(got, want) {
			t.Fatalf("replay from the snapshot at %d differs from the live machine", k)
		}
		// A chain: snapshot at k/2, restore, run to k, snapshot, restore, run to the end.
		c := New(cfg)
		apply(c, 0, k/2)
		c = restore(c)
		apply(c, k/2, k)
		c = restore(c)
		apply(c, k, len(log))
		if got := c.AppendSnapshot(nil); !bytes.Equal(got, want) {
			t.Fatalf("replay through snapshots at %d and %d differs from the live machine", k/2, k)
		}
	}
	// Answers depend on the same state: every key the live machine remembers, a restored one
	// remembers, and no other.
	r := restore(live)
	for k := range live.st.keys {
		if !r.KnowsKey(k) {
			t.Fatalf("key %q forgotten by the restore", k)
		}
	}
	if len(r.st.keys) != len(live.st.keys) || r.st.ExpiredThrough != live.st.ExpiredThrough {
		t.Fatal("restored retention state differs")
	}
}
