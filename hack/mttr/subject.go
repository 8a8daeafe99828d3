package main

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
)

// subject is one kind of kill on one machine.
type subject struct {
	key, name string
	backoff   string // the machine's backoff.initial ("default", "10ms"); "" for the StatefulSet
	m         *machine
	kill      func(ctx context.Context, cu *customer, pod *corev1.Pod) (time.Time, error)
	// inPlace: the kill is a worker crash that the pod heals itself; the machine's status and
	// events must show each one, and are waited for up to wait after a round.
	inPlace bool
	wait    time.Duration
}

func newSubject(key, backoff string, m *machine, ctr []string, visibility time.Duration) *subject {
	s := &subject{key: key, backoff: backoff, m: m, wait: visibility}
	container := func(ctx context.Context, _ *customer, pod *corev1.Pod) (time.Time, error) {
		return killContainer(ctx, ctr, pod)
	}
	switch key {
	case "a1":
		s.name, s.inPlace = "a1 OutOfCoffeeBeans, healed in place", true
		s.kill = func(ctx context.Context, cu *customer, pod *corev1.Pod) (time.Time, error) {
			return cu.outOfBeans(ctx, pod.Status.PodIP)
		}
	case "a2":
		s.name, s.inPlace = "a2 SIGKILL of the worker, healed in place", true
		s.kill = func(ctx context.Context, _ *customer, pod *corev1.Pod) (time.Time, error) {
			return killWorker(ctx, ctr, pod)
		}
	case "b":
		s.name, s.kill = "b SIGKILL of the container, operator (new pod)", container
	case "c":
		s.name, s.kill = "c SIGKILL of the container, StatefulSet (kubelet)", container
	}
	if backoff != "" {
		s.name += ", backoff " + backoff
	}
	return s
}

// killRecord is one kill and the recovery that followed.
type killRecord struct {
	Subject string    `json:"subject"`
	Backoff string    `json:"backoff,omitempty"`
	Round   int       `json:"round"`
	Crash   int       `json:"crash"`
	At      time.Time `json:"at"`
	recovery
	Killed   string `json:"killed"`   // the pod killed
	ServedBy string `json:"servedBy"` // the pod that gave the durable reply
	// For in-place kills: from the kill until status.restarts and the machine's
	// RestartedInPlace events counted it (nil: not within the wait after the round).
	StatusAfter *time.Duration `json:"statusAfter,omitempty"`
	EventAfter  *time.Duration `json:"eventAfter,omitempty"`
}

// roundRecord is what the machine's status and events counted over a round of in-place kills:
// each must count every kill once.
type roundRecord struct {
	Subject  string `json:"subject"`
	Backoff  string `json:"backoff,omitempty"`
	Round    int    `json:"round"`
	Kills    int    `json:"kills"`
	Restarts int32  `json:"restarts"` // status.restarts went up by this much
	Events   int32  `json:"events"`   // RestartedInPlace events added
}

// round starts the subject's machine fresh and kills it crashes times in a row, each kill as
// soon as the customer has had its durable reply after the one before.
func (s *subject) round(ctx context.Context, cu *customer, r, crashes int, res *results) error {
	if err := s.m.fresh(ctx); err != nil {
		return err
	}
	if err := s.m.waitServing(ctx, cu); err != nil {
		return err
	}
	baseRestarts, baseEvents := int32(0), s.m.cl.seen.eventTotal(s.m.name)
	if vm, ok := s.m.cl.vm(s.m.name); ok {
		baseRestarts = vm.Status.Restarts
	}
	var out []killRecord
	for k := range crashes {
		pod := s.m.current()
		if pod == nil {
			return fmt.Errorf("%s has no pod", s.m.name)
		}
		at, err := s.kill(ctx, cu, pod)
		if err != nil {
			return err
		}
		rec, err := cu.untilDurable(ctx, s.m, at)
		if err != nil {
			return err
		}
		kr := killRecord{Subject: s.key, Backoff: s.backoff, Round: r + 1, Crash: k + 1, At: at, recovery: rec,
			Killed: pod.Name, ServedBy: s.m.podName()}
		out = append(out, kr)
		fmt.Printf("%s round %d crash %d: durable reply after %v (attempts %d, refused %d, other %d, 5xx %d) from %s\n",
			s.name, r+1, k+1, rec.Took.Round(time.Millisecond), rec.Attempts, rec.Refused, rec.Other, rec.Status5xx, kr.ServedBy)
	}
	if s.inPlace {
		res.Rounds = append(res.Rounds, s.visibility(ctx, out, baseRestarts, baseEvents))
	}
	res.Kills = append(res.Kills, out...)
	return nil
}

// visibility waits for the machine's status and events to count the round's kills, and
// records how long after each kill they did. Every in-place restart must raise status.restarts
// by one and add a RestartedInPlace event; a kill healed by a new pod is no in-place restart.
func (s *subject) visibility(ctx context.Context, kills []killRecord, baseRestarts, baseEvents int32) roundRecord {
	seen := s.m.cl.seen
	n := int32(len(kills))
	_ = poll(ctx, s.wait, "the status and events", func() bool {
		_, status := seen.restartsAt(s.m.name, baseRestarts+n)
		_, event := seen.eventsAt(s.m.name, baseEvents+n)
		return status && event
	})
	for i := range kills {
		k := &kills[i]
		if t, ok := seen.restartsAt(s.m.name, baseRestarts+int32(i)+1); ok {
			k.StatusAfter = ptr.To(t.Sub(k.At))
		}
		if t, ok := seen.eventsAt(s.m.name, baseEvents+int32(i)+1); ok {
			k.EventAfter = ptr.To(t.Sub(k.At))
		}
		if k.ServedBy != k.Killed {
			fmt.Printf("%s round %d crash %d: NOT in place: %s killed, %s served\n", s.name, k.Round, k.Crash, k.Killed, k.ServedBy)
		}
	}
	restarts := baseRestarts
	if vm, ok := s.m.cl.vm(s.m.name); ok {
		restarts = vm.Status.Restarts
	}
	rr := roundRecord{Subject: s.key, Backoff: s.backoff, Round: kills[0].Round, Kills: len(kills),
		Restarts: restarts - baseRestarts, Events: seen.eventTotal(s.m.name) - baseEvents}
	fmt.Printf("%s round %d: %d kills, status.restarts +%d, RestartedInPlace events +%d\n",
		s.name, rr.Round, rr.Kills, rr.Restarts, rr.Events)
	return rr
}
