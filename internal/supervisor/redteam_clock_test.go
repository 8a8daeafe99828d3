package supervisor

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
)

// Red team of issue 10, the clocks of successive leaders. A restart recorded by a leader whose
// clock runs ahead must still count for the next leader (TestRedTeamClockSkewKeepsTheWindow),
// but not for longer than a window: a leader whose clock was hours ahead (a bad NTP step, an RTC
// reset) must not use up the machine's restart budget for hours after it is gone.
//
// It passes on main at 8eccd2f (future restarts were dropped, which broke the skew case); it
// fails with a fix that keeps every future restart (now.Sub(t) < window alone).
func TestRedTeamRestartFromAFarFutureClockExpires(t *testing.T) {
	// A leader 2 h ahead recorded one restart; this leader's clock is right. maxRestarts 1.
	vm := rtMachine(all(at(1, "m-1"), restartTimes(t0.Add(2*time.Hour))))
	vm.Spec.Supervision.MaxRestarts = ptr.To[int32](1)
	// Two windows later, by this leader's clock, the machine fails again.
	now := t0.Add(2 * time.Minute)
	s := Next(Input{Machine: vm, Pods: []corev1.Pod{pod("m-1", killedAt(now))}, TemplateHash: hash, Now: now})
	if s.Memory.Escalated() || len(s.Memory.RestartTimes) != 0 {
		t.Errorf("a restart stamped 2 h ahead still fills the window two windows later: escalated=%v window=%v (%s)",
			s.Memory.Escalated(), s.Memory.RestartTimes, s)
	}
}
