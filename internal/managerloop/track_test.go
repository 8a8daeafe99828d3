package managerloop

import (
	"context"
	"errors"
	"testing"

	. "github.com/onsi/gomega"

	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/manager"
)

// blockingRunnable runs until release is closed, like a controller whose reconcile is in flight.
type blockingRunnable struct {
	started chan struct{}
	release chan struct{}
}

func (b blockingRunnable) Start(context.Context) error {
	close(b.started)
	<-b.release
	return nil
}

// The next manager must not campaign while a runnable of the old one still runs: drain waits for
// it, and reports it when the budget ends first.
func TestDrainWaitsForRunningRunnables(t *testing.T) {
	g := NewWithT(t)
	tr := newTracker()
	b := blockingRunnable{started: make(chan struct{}), release: make(chan struct{})}
	returned := make(chan error, 1)
	go func() { returned <- trackedRunnable{r: b, t: tr}.Start(context.Background()) }()
	<-b.started
	g.Expect(tr.Running()).To(Equal(1))

	expired, cancel := context.WithCancel(context.Background())
	cancel() // a budget already spent: drain must say the runnable still runs, not wait
	n, err := tr.drain(expired)
	g.Expect(err).To(MatchError(context.Canceled))
	g.Expect(n).To(Equal(1))

	close(b.release)
	g.Expect(<-returned).To(Succeed())
	n, err = tr.drain(context.Background())
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(n).To(BeZero())
}

// A runnable that the old manager starts only after the loop drained it does not run: the
// loop's decision that the manager is over stands.
func TestDrainedTrackerStartsNothing(t *testing.T) {
	g := NewWithT(t)
	tr := newTracker()
	_, err := tr.drain(context.Background())
	g.Expect(err).NotTo(HaveOccurred())
	ran := false
	g.Expect(trackedRunnable{r: manager.RunnableFunc(func(context.Context) error { ran = true; return nil }), t: tr}.
		Start(context.Background())).To(Succeed())
	g.Expect(ran).To(BeFalse())
	g.Expect(tr.Running()).To(BeZero())
}

// recordingManager records what reaches the real manager's Add.
type recordingManager struct {
	manager.Manager
	added []manager.Runnable
}

func (m *recordingManager) Add(r manager.Runnable) error { m.added = append(m.added, r); return nil }

type controllerLike struct{ needLeader bool }

func (controllerLike) Start(context.Context) error  { return nil }
func (c controllerLike) NeedLeaderElection() bool   { return c.needLeader }
func (controllerLike) Warmup(context.Context) error { return errors.New("warmed up") }

type cacheLike struct{ manager.Runnable }

func (cacheLike) GetCache() cache.Cache { return nil }

// The manager sorts runnables by type: a tracked runnable keeps its leader election and warmup,
// and caches pass through as caches.
func TestTrackingManagerKeepsTheRunnablesKinds(t *testing.T) {
	g := NewWithT(t)
	rec := &recordingManager{}
	m := trackingManager{Manager: rec, t: newTracker()}
	g.Expect(m.Add(controllerLike{needLeader: true})).To(Succeed())
	g.Expect(m.Add(controllerLike{needLeader: false})).To(Succeed())
	g.Expect(m.Add(manager.RunnableFunc(func(context.Context) error { return nil }))).To(Succeed())
	c := cacheLike{}
	g.Expect(m.Add(c)).To(Succeed())
	g.Expect(rec.added).To(HaveLen(4))

	leader, ok := rec.added[0].(trackedWarmupRunnable)
	g.Expect(ok).To(BeTrue(), "a controller is tracked and keeps its Warmup: %T", rec.added[0])
	g.Expect(leader.NeedLeaderElection()).To(BeTrue())
	g.Expect(leader.Warmup(context.Background())).To(MatchError("warmed up"))
	g.Expect(rec.added[1].(manager.LeaderElectionRunnable).NeedLeaderElection()).To(BeFalse())
	g.Expect(rec.added[2].(manager.LeaderElectionRunnable).NeedLeaderElection()).To(BeTrue(),
		"a plain runnable runs under leader election, as the manager would run it")
	g.Expect(rec.added[3]).To(Equal(c))
}

// fakeLock is a resourcelock.Interface that records the updates that reach it.
type fakeLock struct {
	resourcelock.Interface
	updates []resourcelock.LeaderElectionRecord
}

func (f *fakeLock) Update(_ context.Context, r resourcelock.LeaderElectionRecord) error {
	f.updates = append(f.updates, r)
	return nil
}

// client-go releases the lease after a failed renewal too, before the controllers were told to
// stop: the gate lets a release through only when the loop allows it, and renewals always.
func TestGatedLockReleasesOnlyWhenAllowed(t *testing.T) {
	g := NewWithT(t)
	inner := &fakeLock{}
	allowed := false
	l := gatedLock{Interface: inner, mayRelease: func() bool { return allowed }}
	renew := resourcelock.LeaderElectionRecord{HolderIdentity: "me"}
	release := resourcelock.LeaderElectionRecord{LeaseDurationSeconds: 1}

	g.Expect(l.Update(context.Background(), renew)).To(Succeed())
	g.Expect(l.Update(context.Background(), release)).To(MatchError(errReleaseRefused))
	g.Expect(inner.updates).To(Equal([]resourcelock.LeaderElectionRecord{renew}))

	allowed = true
	g.Expect(l.Update(context.Background(), release)).To(Succeed())
	g.Expect(inner.updates).To(Equal([]resourcelock.LeaderElectionRecord{renew, release}))
}
