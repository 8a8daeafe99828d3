package controller

// Scale red team: the changes that made the operator cheap at 10,000 machines (a first pod
// created before any status write, a deferred first status, state reads only on change, a
// trimmed cache) against the guarantees they must keep: one pod on a claim, every decision
// once, a status that is never stuck blank, state that is never another pod's or another
// process life's.
//
// Rig tests (newRig) drive a reconciler by hand with a clock and a state reader of their own;
// suite tests run the suite's operator. The defects they found (F1-F6) are fixed; each test now
// guards its fix.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/supervisor"
)

// srtReader is a pod's /v1/state as a rig's reconciler reads it: an answer or an error, counted.
type srtReader struct {
	mu    sync.Mutex
	state contract.State
	err   error
	reads int
}

func (f *srtReader) ReadState(context.Context, *corev1.Pod) (*contract.State, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	if f.err != nil {
		return nil, f.err
	}
	st := f.state
	return &st, nil
}

func (f *srtReader) set(st contract.State, err error) {
	f.mu.Lock()
	f.state, f.err = st, err
	f.mu.Unlock()
}

func (f *srtReader) count() int { f.mu.Lock(); defer f.mu.Unlock(); return f.reads }

// srtStateRig is a rig whose reconciler reads pod state from rd, on a clock of its own.
func srtStateRig(t *testing.T, st contract.State) (*rig, *srtReader, *steppedClock) {
	rg := newRig(t, nil)
	rd := &srtReader{state: st}
	clk := &steppedClock{}
	rg.r.StateReader, rg.r.StateRefresh, rg.r.Clock = rd, time.Minute, clk
	return rg, rd, clk
}

// srtReady reports the pod running with its Ready condition ready (or not) since at.
func srtReady(g Gomega, pod *corev1.Pod, ready bool, at time.Time) {
	g.Expect(k8sClient.Get(context.Background(), client.ObjectKeyFromObject(pod), pod)).To(Succeed())
	s := corev1.ConditionFalse
	if ready {
		s = corev1.ConditionTrue
	}
	t := metav1.NewTime(at)
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "127.0.0.1",
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: s, LastTransitionTime: t}},
		ContainerStatuses: []corev1.ContainerStatus{{Name: "vending", Ready: ready, Image: pod.Spec.Containers[0].Image,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: t}}}}}
	g.Expect(k8sClient.Status().Update(context.Background(), pod)).To(Succeed())
}

// --- C: the status is never stuck blank -------------------------------------------------------

// A new machine whose first pod cannot be created yet (a predecessor's pod still runs on its
// claim: the machine was deleted and created again, the old pod orphaned or in its grace
// period) decides nothing it can carry out, and so writes nothing: deferFirstStatus counts
// from "now" while the pod does not exist, so the deferral never ends. The machine shows no
// status at all (no Ready, no Progressing, no observedGeneration) for as long as the
// predecessor runs, and is requeued every FirstStatusDelay meanwhile.
func TestScaleRedTeamBlockedFirstPodStillGetsAStatus(t *testing.T) {
	ctx := context.Background()
	rg := newRig(t, nil)
	clk := &steppedClock{}
	rg.r.Clock = clk
	old := rg.machine().DeepCopy()
	old.UID = "uid-of-the-deleted-machine"
	rg.g.Expect(k8sClient.Create(ctx, buildPod(old, DefaultVendingImage, "coffee-3", vendingv1alpha1.PodRestarted, nil))).To(Succeed())
	kubeletRun(rg.g, rg.podNamed("coffee-3"))
	for range 3 {
		_, err := rg.pass()
		rg.g.Expect(err).NotTo(HaveOccurred())
		clk.Step(FirstStatusDelay)
	}
	rg.g.Expect(rg.created).To(BeEmpty(), "single writer: the predecessor's pod runs on the claim")
	got := rg.machine()
	rg.g.Expect(got.Status.Conditions).NotTo(BeEmpty(), "no status %v after the machine was first seen", 3*FirstStatusDelay)
	rg.g.Expect(condition(got, vendingv1alpha1.ConditionReady)).To(HaveField("Status", metav1.ConditionFalse))
}

// A new machine whose first pod's name is taken by a pod that is not its own (a predecessor's
// terminal pod orphaned with --cascade=orphan, which the pod GC keeps up to 12,500 terminated
// pods; or another workload's pod, a StatefulSet "coffee" has a pod "coffee-0") gets
// AlreadyExists on the create, which act takes for "a stale cache, the next pass sees it". But
// the live reads never see it as the machine's own, the memory was never written, and so every
// pass creates coffee-0 again, defers the status (from now) and requeues: no pod, no status,
// forever. Before the change the memory said coffee-0 was requested and the next pass moved on to
// coffee-1.
func TestScaleRedTeamFirstPodNameTakenDoesNotStallTheMachine(t *testing.T) {
	for _, tc := range []struct {
		name  string
		taker func(rg *rig) *corev1.Pod
	}{
		{"orphaned terminal predecessor", func(rg *rig) *corev1.Pod {
			old := rg.machine().DeepCopy()
			old.UID = "uid-of-the-deleted-machine"
			p := buildPod(old, DefaultVendingImage, "coffee-0", vendingv1alpha1.PodCreated, nil)
			p.OwnerReferences = nil // kubectl delete --cascade=orphan
			return p
		}},
		{"another workload's pod", func(rg *rig) *corev1.Pod {
			return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "coffee-0", Namespace: rg.ns, Labels: map[string]string{"app": "coffee"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "nginx"}}}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			rg := newRig(t, nil)
			clk := &steppedClock{}
			rg.r.Clock = clk
			taker := tc.taker(rg)
			rg.g.Expect(k8sClient.Create(ctx, taker)).To(Succeed())
			if taker.Labels[labelMachine] != "" {
				kubeletFail(rg.g, taker, 1, failureMessage("Panic"))
			}
			for range 4 {
				_, _ = rg.pass()
				clk.Step(FirstStatusDelay)
			}
			got := rg.machine()
			rg.g.Expect(got.Status.Conditions).NotTo(BeEmpty(), "no status %v after the machine was first seen", 4*FirstStatusDelay)
			rg.g.Expect(rg.created).NotTo(BeEmpty(), "the machine never got a pod of its own (status.podName %q)", got.Status.PodName)
		})
	}
}

// The deferral's remaining time is the first status delay minus the age of the pod, its
// creationTimestamp set by the API server's clock and its age measured on the operator's: an
// operator whose clock is behind the API server's by an hour defers the first status by an hour
// and five seconds (by any skew, plus five seconds).
func TestScaleRedTeamFirstStatusDelayIsBoundedUnderClockSkew(t *testing.T) {
	rg := newRig(t, nil)
	clk := &steppedClock{}
	clk.Step(-time.Hour) // the operator's node is an hour behind the API server's
	rg.r.Clock = clk
	res, err := rg.pass()
	rg.g.Expect(err).NotTo(HaveOccurred())
	rg.g.Expect(res.RequeueAfter).To(BeNumerically("<=", FirstStatusDelay))
	rg.g.Expect(rg.created).To(Equal([]string{"coffee-0"}))
	res, err = rg.pass() // sees coffee-0, not ready
	rg.g.Expect(err).NotTo(HaveOccurred())
	rg.g.Expect(res.RequeueAfter).To(BeNumerically("<=", FirstStatusDelay), "the first status waits %v", res.RequeueAfter)
}

// --- D: the remembered state ----------------------------------------------------------------

// A ready pod whose state read fails once the refresh is due (a NetworkPolicy that blocks the
// operator, a pod's HTTP server wedged) keeps its last answer, as it should, but the pass asks
// to be run again after due(): the remembered answer's next, which is in the past, so 1 ms. The
// machine spins: a pass and a request to its pod every millisecond (or every HTTP timeout, 1 s,
// holding a worker, for a pod that does not answer). Four such machines take all four workers.
func TestScaleRedTeamFailedRefreshDoesNotSpin(t *testing.T) {
	rg, rd, clk := srtStateRig(t, contract.State{TotalCoins: 7, Sequence: 3})
	rg.ok()
	kubeletRun(rg.g, rg.pod(0))
	rg.ok()
	rg.g.Expect(rd.count()).To(Equal(1))
	rg.g.Expect(rg.machine().Status.TotalCoins).To(HaveValue(BeEquivalentTo(7)))

	clk.Step(2 * time.Minute) // the refresh (1 min here) is due
	rd.set(contract.State{}, errors.New("dial tcp 127.0.0.1:8080: connect: connection refused"))
	res, err := rg.pass()
	rg.g.Expect(err).NotTo(HaveOccurred())
	rg.g.Expect(rd.count()).To(Equal(2), "the refresh asks the pod")
	got := rg.machine()
	rg.g.Expect(condition(got, vendingv1alpha1.ConditionDegraded)).To(HaveField("Status", metav1.ConditionFalse),
		"a failed read keeps the last answer (no flip to Unknown)")
	rg.g.Expect(res.RequeueAfter).To(BeNumerically(">=", time.Second), "a failed refresh is retried after %v: a spin", res.RequeueAfter)
}

// The same on the suite's operator: how many requests a machine whose pod stops answering sends
// once its refresh is due. The pod has an address of its own (127.0.0.3, on the port of the
// suite's fake) that answers 500 once told to.
func TestScaleRedTeamFailedRefreshDoesNotSpinTheOperator(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	var reads atomic.Int64
	var fail atomic.Bool
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.3", strconv.Itoa(podAPI.(*HTTPStateReader).Port)))
	g.Expect(err).NotTo(HaveOccurred())
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		reads.Add(1)
		if fail.Load() {
			http.Error(w, "wedged", http.StatusInternalServerError)
			return
		}
		_ = json.NewEncoder(w).Encode(contract.State{TotalCoins: 7, Sequence: 3})
	})}
	go func() { _ = srv.Serve(ln) }()
	defer func() { _ = srv.Close() }()

	vm := createMachine(t, ns, "wedged", nil)
	pod := waitPod(g, vm, 0)
	kubeletRunAt(g, pod, "127.0.0.3")
	g.Eventually(func(g Gomega) {
		g.Expect(getMachine(g, vm).Status.TotalCoins).To(HaveValue(BeEquivalentTo(7)))
	}).Should(Succeed())
	g.Expect(reads.Load()).To(BeEquivalentTo(1))

	fail.Store(true)
	// A spinning leftover would eat the suite's CPU: deleted (before the clock is put back).
	step := DefaultStateRefresh * 12 / 10 // past the refresh and its jitter
	testClock.Step(step)
	t.Cleanup(func() { testClock.Step(-step) }) // later tests' first status deferral compares with the API server's clock
	t.Cleanup(func() { _ = k8sClient.Delete(ctx, vm) })
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(pod), pod)).To(Succeed())
	pod.Labels["touched"] = "1" // a pass
	g.Expect(k8sClient.Update(ctx, pod)).To(Succeed())
	g.Eventually(reads.Load).Should(BeNumerically(">=", 2))
	time.Sleep(2 * time.Second)
	n := reads.Load() - 1
	t.Logf("requests to the wedged pod in the 2 s after its refresh was due: %d", n)
	g.Expect(n).To(BeNumerically("<=", 3), "a wedged pod is asked %d times in 2 s", n)
	g.Expect(condition(getMachine(g, vm), vendingv1alpha1.ConditionDegraded)).To(HaveField("Status", metav1.ConditionFalse),
		"a failed read keeps the last answer")
}

// After the pod's process starts a new life (an in-place restart: its report changes; or its
// readiness flips), its last answer is a previous life's. When the pod does not answer then,
// stateReads.last hands that answer back as "stale" and the status keeps showing it: out of milk
// (Degraded True) and its coins, from before the restart. The guarantee: the remembered state is
// never the answer of a previous process life.
func TestScaleRedTeamFailedReadAfterANewLifeShowsNoOldState(t *testing.T) {
	outOfMilk := contract.State{TotalCoins: 7, Sequence: 3, Degraded: true}
	refused := errors.New("connection refused")
	t.Run("in-place restart", func(t *testing.T) {
		rg, rd, _ := srtStateRig(t, outOfMilk)
		rg.ok()
		kubeletRun(rg.g, rg.pod(0))
		rg.ok()
		rg.g.Expect(rg.machine().Status.Phase).To(Equal(vendingv1alpha1.PhaseDegraded))
		rd.set(contract.State{}, refused)
		reportInPlace(rg.g, rg.pod(0), inPlaceReport(1))
		rg.ok()
		rg.g.Expect(rd.count()).To(Equal(2), "the new life is asked")
		got := rg.machine()
		rg.g.Expect(got.Status.InPlaceRestarts).To(BeEquivalentTo(1))
		rg.g.Expect(condition(got, vendingv1alpha1.ConditionDegraded)).To(HaveField("Status", metav1.ConditionUnknown),
			"the previous life's out-of-milk is shown after an in-place restart")
		rg.g.Expect(got.Status.TotalCoins).To(BeNil(), "the previous life's coins are shown")
	})
	t.Run("readiness flip", func(t *testing.T) {
		rg, rd, clk := srtStateRig(t, outOfMilk)
		rg.ok()
		t0 := clk.Now().Add(-time.Minute).Truncate(time.Second)
		srtReady(rg.g, rg.pod(0), true, t0)
		rg.ok()
		rg.g.Expect(rg.machine().Status.Phase).To(Equal(vendingv1alpha1.PhaseDegraded))
		srtReady(rg.g, rg.pod(0), false, t0.Add(10*time.Second))
		rg.ok()
		rd.set(contract.State{}, refused)
		srtReady(rg.g, rg.pod(0), true, t0.Add(20*time.Second))
		rg.ok()
		rg.g.Expect(rd.count()).To(Equal(2), "ready again: asked")
		got := rg.machine()
		rg.g.Expect(condition(got, vendingv1alpha1.ConditionDegraded)).To(HaveField("Status", metav1.ConditionUnknown),
			"the answer from before the readiness flip is shown")
	})
}

// The pod is asked again on each change stateReads follows, and on nothing else; a machine
// deleted is forgotten. Each step fails if the comparison that provides it is removed: a new pod
// (whose Ready transition time equals the old pod's, so that only its UID tells it), a readiness
// flip, an in-place report, the read-state annotation, the refresh.
func TestScaleRedTeamStateIsAskedOnEveryChangeAndOnlyThen(t *testing.T) {
	rg, rd, clk := srtStateRig(t, contract.State{TotalCoins: 7, Sequence: 3})
	asked := func(n int, why string) {
		rg.g.ExpectWithOffset(1, rd.count()).To(Equal(n), why)
	}
	rg.ok() // coffee-0
	t0 := clk.Now().Add(-time.Minute).Truncate(time.Second)
	srtReady(rg.g, rg.pod(0), true, t0)
	rg.ok()
	asked(1, "ready: asked")
	rg.g.Expect(rg.machine().Status.TotalCoins).To(HaveValue(BeEquivalentTo(7)))
	rg.ok()
	rg.ok()
	asked(1, "a pass is no reason to ask")

	srtReady(rg.g, rg.pod(0), false, t0.Add(10*time.Second))
	rg.ok()
	asked(1, "not ready: not asked")
	srtReady(rg.g, rg.pod(0), true, t0.Add(20*time.Second))
	rg.ok()
	asked(2, "ready again (readySince): asked")

	// A restart: coffee-1 turns Ready at the very second coffee-0 last did (Ready transition
	// times have a second's resolution): only its UID tells it from coffee-0.
	rd.set(contract.State{TotalCoins: 11, Sequence: 4}, nil)
	kubeletFail(rg.g, rg.pod(0), 137, "")
	rg.ok()
	rg.ok()
	srtReady(rg.g, rg.pod(1), true, t0.Add(20*time.Second))
	rg.ok()
	asked(3, "a new pod (UID): asked")
	got := rg.machine()
	rg.g.Expect(got.Status.PodName).To(Equal("coffee-1"))
	rg.g.Expect(got.Status.TotalCoins).To(HaveValue(BeEquivalentTo(11)), "coffee-0's coins shown for coffee-1")

	reportInPlace(rg.g, rg.pod(1), inPlaceReport(1))
	rg.ok()
	asked(4, "an in-place restart (report): asked")

	annotate(rg.g, rg.machine(), AnnotationReadState, "1")
	rg.ok()
	asked(5, "the read-state annotation (asked): asked")
	rg.ok()
	asked(5, "once")

	clk.Step(2 * time.Minute)
	rg.ok()
	asked(6, "the refresh is due: asked")
	rg.ok()
	asked(6, "once")

	// Deleted: forgotten.
	rg.g.Expect(rg.r.stateReads().due(rg.key, clk.Now())).To(BeNumerically(">", 0), "remembered")
	vm := rg.machine()
	controllerutil.RemoveFinalizer(vm, redteamFinalizer)
	rg.g.Expect(k8sClient.Update(context.Background(), vm)).To(Succeed())
	rg.g.Eventually(func() bool {
		return k8sClient.Get(context.Background(), rg.key, &vendingv1alpha1.VendingMachine{}) != nil
	}).Should(BeTrue())
	_, _ = rg.pass()
	rg.g.Expect(rg.r.stateReads().due(rg.key, clk.Now())).To(BeZero(), "a deleted machine is forgotten")
}

// --- A/B: the first pod without a memory write ------------------------------------------------

// A reset annotated after the first pod was created but before the first status write (a
// human's `kubectl annotate vend coffee reset=...` within FirstStatusDelay) is swallowed: the
// pass that adopts coffee-0 takes the machine's current reset value as carried out. Before the
// change the memory recorded the reset value coffee-0 was created under, and the reset replaced
// it. (internal/supervisor TestScaleRedTeamResetBeforeTheFirstStatusIsNotSwallowed is the same
// at the supervisor's level.)
func TestScaleRedTeamResetBeforeTheFirstStatusIsHonored(t *testing.T) {
	rg := newRig(t, nil)
	rg.ok()
	rg.g.Expect(rg.created).To(Equal([]string{"coffee-0"}))
	rg.g.Expect(rg.machine().Status.PodName).To(BeEmpty(), "the first status is deferred")
	annotate(rg.g, rg.machine(), annotationReset, "r1")
	for range 3 {
		rg.ok()
	}
	got := rg.machine()
	rg.g.Expect(got.Status.Resets).To(BeEquivalentTo(1), "the reset was taken as carried out (pod %q, observedReset %q)",
		got.Status.PodName, got.Status.ObservedReset)
	rg.g.Expect(got.Status.ObservedReset).To(Equal("r1"))
	rg.g.Expect(rg.created).To(ContainElement("coffee-1"))
}

// srtSingleWriter watches the namespace's pods and records every moment at which more than one
// pod that may run (present and not terminal) exists. Started before the machine is created.
func srtSingleWriter(t *testing.T, ns string) func() []string {
	t.Helper()
	wc, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	w, err := wc.Watch(context.Background(), &corev1.PodList{}, client.InNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	var mu sync.Mutex
	running := map[types.UID]string{}
	var bad []string
	go func() {
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			mu.Lock()
			if ev.Type == watch.Deleted || supervisor.Terminal(p) {
				delete(running, p.UID)
			} else {
				running[p.UID] = p.Name + " (owner " + ownerUID(p) + ")"
			}
			if len(running) > 1 {
				names := make([]string, 0, len(running))
				for _, n := range running {
					names = append(names, n)
				}
				slices.Sort(names)
				bad = append(bad, fmt.Sprint(names))
			}
			mu.Unlock()
		}
	}()
	return func() []string { mu.Lock(); defer mu.Unlock(); return slices.Clone(bad) }
}

// srtEvents counts the occurrences of the machine's events of a reason: an event repeated by one
// recorder is one Event object with a series.
func srtEvents(g Gomega, vm *vendingv1alpha1.VendingMachine, reason string) int {
	list := &eventsv1.EventList{}
	g.Expect(k8sClient.List(context.Background(), list, client.InNamespace(vm.Namespace))).To(Succeed())
	n := 0
	for _, e := range list.Items {
		if e.Regarding.Name == vm.Name && e.Regarding.Kind == "VendingMachine" && e.Reason == reason {
			n++
			if e.Series != nil && e.Series.Count > 1 {
				n += int(e.Series.Count) - 1
			}
		}
	}
	return n
}

func ownerUID(p *corev1.Pod) string {
	if ref := metav1.GetControllerOf(p); ref != nil {
		return string(ref.UID)
	}
	return "none"
}

// srtRunCurrent waits for the machine's status to name its pod, plays the kubelet for it and
// waits for Ready with the generation observed.
func srtRunCurrent(g Gomega, vm *vendingv1alpha1.VendingMachine) {
	var name string
	g.Eventually(func(g Gomega) {
		name = getMachine(g, vm).Status.PodName
		g.Expect(name).NotTo(BeEmpty())
	}).Should(Succeed())
	pod := &corev1.Pod{}
	g.Eventually(func() error {
		return k8sClient.Get(context.Background(), client.ObjectKey{Namespace: vm.Namespace, Name: name}, pod)
	}).Should(Succeed())
	kubeletRun(g, pod)
	g.Eventually(func(g Gomega) {
		got := getMachine(g, vm)
		g.Expect(condition(got, vendingv1alpha1.ConditionReady)).To(HaveField("Status", metav1.ConditionTrue))
		g.Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
	}).Should(Succeed())
}

// One pod at a time, whatever arrives while a new machine's first status is deferred: a spec
// change (a roll), a reset, a pause, an operator restart, the machine deleted and created again
// under its name while its first pod is there.
func TestScaleRedTeamOnePodAtATimeWhileTheFirstStatusWaits(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		do   func(g Gomega, vm *vendingv1alpha1.VendingMachine) *vendingv1alpha1.VendingMachine
	}{
		{"spec change", func(g Gomega, vm *vendingv1alpha1.VendingMachine) *vendingv1alpha1.VendingMachine {
			patchMachine(g, vm, `{"spec":{"inventory":{"beans":5}}}`)
			waitPod(g, vm, 1)
			return vm
		}},
		{"reset", func(g Gomega, vm *vendingv1alpha1.VendingMachine) *vendingv1alpha1.VendingMachine {
			annotate(g, vm, annotationReset, "r1")
			return vm
		}},
		{"pause", func(g Gomega, vm *vendingv1alpha1.VendingMachine) *vendingv1alpha1.VendingMachine {
			patchMachine(g, vm, `{"spec":{"paused":true}}`)
			g.Eventually(func(g Gomega) {
				g.Expect(getMachine(g, vm).Status.Phase).To(Equal(vendingv1alpha1.PhasePaused))
			}).Should(Succeed())
			patchMachine(g, vm, `{"spec":{"paused":false}}`)
			return vm
		}},
		{"operator restart", func(g Gomega, vm *vendingv1alpha1.VendingMachine) *vendingv1alpha1.VendingMachine {
			g.Expect(restartManager()).To(Succeed())
			return vm
		}},
		{"same name again", func(g Gomega, vm *vendingv1alpha1.VendingMachine) *vendingv1alpha1.VendingMachine {
			pred := waitPod(g, vm, 0)
			g.Expect(k8sClient.Delete(ctx, vm)).To(Succeed()) // envtest has no garbage collector: its pod stays
			g.Eventually(func() bool {
				return k8sClient.Get(ctx, client.ObjectKeyFromObject(vm), &vendingv1alpha1.VendingMachine{}) != nil
			}).Should(BeTrue())
			again := newMachine(vm.Namespace, vm.Name, nil)
			g.Expect(k8sClient.Create(ctx, again)).To(Succeed())
			g.Consistently(func(g Gomega) {
				p := &corev1.Pod{}
				g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(pred), p)).To(Succeed())
				g.Expect(p.UID).To(Equal(pred.UID), "a pod started beside the predecessor's")
			}, 2*time.Second).Should(Succeed())
			// The garbage collector's part: the predecessor's pod goes.
			g.Expect(k8sClient.Delete(ctx, pred)).To(Succeed())
			g.Eventually(func(g Gomega) {
				p := &corev1.Pod{}
				g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(pred), p)).To(Succeed())
				g.Expect(metav1.IsControlledBy(p, again)).To(BeTrue())
			}).Should(Succeed())
			return again
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			ns := newNamespace(t)
			violations := srtSingleWriter(t, ns)
			vm := createMachine(t, ns, "coffee", nil)
			waitPod(g, vm, 0)
			if st := getMachine(g, vm).Status; st.PodName != "" {
				t.Logf("the first status was written already (podName %s): the step did not land in the deferral", st.PodName)
			}
			vm = tc.do(g, vm)
			srtRunCurrent(g, vm)
			g.Consistently(violations, time.Second).Should(BeEmpty(), "two pods that may run at once")
		})
	}
}

// A first pod that fails before any status was written is decided once: one Failed event, one
// restart counted, one new pod; whether the process that created it or a new one (an operator
// restart) sees the failure.
func TestScaleRedTeamFirstPodFailsOnceAcrossARestart(t *testing.T) {
	for _, restartFirst := range []bool{true, false} {
		t.Run(fmt.Sprintf("restart before the failure %v", restartFirst), func(t *testing.T) {
			g := NewWithT(t)
			ns := newNamespace(t)
			vm := createMachine(t, ns, "coffee", fastBackoff(0))
			pod := waitPod(g, vm, 0)
			if restartFirst {
				g.Expect(restartManager()).To(Succeed())
				kubeletFail(g, pod, 137, "")
			} else {
				kubeletFail(g, pod, 137, "")
				g.Expect(restartManager()).To(Succeed())
			}
			waitPod(g, vm, 1)
			count := func(g Gomega, reason string) int { return srtEvents(g, vm, reason) }
			g.Eventually(func(g Gomega) {
				st := getMachine(g, vm).Status
				g.Expect(st.PodName).To(Equal("coffee-1"))
				g.Expect(st.LastFailure).NotTo(BeNil())
				g.Expect(st.LastFailure.PodName).To(Equal("coffee-0"))
				g.Expect(count(g, "Failed")).To(Equal(1))
				g.Expect(count(g, "Restarted")).To(Equal(1))
			}).Should(Succeed())
			g.Consistently(func(g Gomega) {
				st := getMachine(g, vm).Status
				g.Expect(st.Restarts).To(BeEquivalentTo(1))
				g.Expect(st.RestartTimes).To(HaveLen(1))
				g.Expect(st.Recreations).To(BeEquivalentTo(0))
				g.Expect(count(g, "Failed")).To(Equal(1))
				g.Expect(count(g, "Restarted")).To(Equal(1))
				err := k8sClient.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "coffee-2"}, &corev1.Pod{})
				g.Expect(err).To(HaveOccurred(), "a second restart")
			}, 2*time.Second).Should(Succeed())
		})
	}
}

// The deferred first status is written within seconds of FirstStatusDelay for a pod that never
// turns Ready, and records the pod as what it is (requested, a first start, its UID); a machine
// created paused is not deferred at all.
func TestScaleRedTeamFirstStatusIsSaidInTime(t *testing.T) {
	t.Run("pod never ready", func(t *testing.T) {
		g := NewWithT(t)
		ns := newNamespace(t)
		vm := createMachine(t, ns, "coffee", nil)
		pod := waitPod(g, vm, 0)
		g.Eventually(func(g Gomega) {
			got := getMachine(g, vm)
			g.Expect(condition(got, vendingv1alpha1.ConditionReady)).To(HaveField("Reason", ReasonPodNotReady))
			g.Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
			g.Expect(got.Status.PodName).To(Equal("coffee-0"))
			g.Expect(got.Status.PodUID).To(Equal(pod.UID))
			g.Expect(got.Status.PodRequested).To(BeTrue())
			g.Expect(got.Status.PodCause).To(Equal(vendingv1alpha1.PodCreated))
			g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhasePending))
		}).WithTimeout(FirstStatusDelay + 3*time.Second).Should(Succeed())
	})
	t.Run("paused at creation", func(t *testing.T) {
		g := NewWithT(t)
		ns := newNamespace(t)
		vm := createMachine(t, ns, "coffee", func(vm *vendingv1alpha1.VendingMachine) { vm.Spec.Paused = true })
		g.Eventually(func(g Gomega) {
			got := getMachine(g, vm)
			g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhasePaused))
			g.Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
		}).WithTimeout(FirstStatusDelay / 2).Should(Succeed())
	})
}

// --- E: the trimmed cache -------------------------------------------------------------------

// Every decision and every status the operator derives from a pod is the same from the cache's
// trimmed copy (TrimPod) as from the pod the API server has: a field the supervisor, the status
// or the release of a finalizer reads and the trim drops would fail here. Pods in the states the
// supervisor tells apart: starting, ready, failed with a report, killed, OOM-killed, evicted, a
// disruption target, deleted gracefully and by force, never scheduled, reporting in-place
// restarts; with and without a memory.
func TestScaleRedTeamTrimmedPodDecidesAsTheFullPod(t *testing.T) {
	now := time.Date(2026, 11, 30, 3, 0, 0, 0, time.UTC)
	vm := newMachine("ns", "coffee", fastBackoff(0))
	vm.UID, vm.Generation = "uid-machine", 1
	hash := templateHash(vm, DefaultVendingImage)
	at := metav1.NewTime(now.Add(-10 * time.Second))
	report, _ := json.Marshal(inPlaceReport(2))
	term := func(code int32, reason, msg string) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			p.Status.Phase = corev1.PodFailed
			p.Status.ContainerStatuses[0].State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: code, Reason: reason, Message: msg, StartedAt: at, FinishedAt: at}}
			p.Status.ContainerStatuses[0].Ready = false
		}
	}
	cases := map[string]func(*corev1.Pod){
		"starting": func(p *corev1.Pod) {
			p.Status.Phase = corev1.PodPending
			p.Status.Conditions[0].Status = corev1.ConditionFalse
			p.Status.ContainerStatuses[0].State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}}
		},
		"ready":       func(*corev1.Pod) {},
		"reports":     func(p *corev1.Pod) { p.Annotations[contract.AnnotationInPlace] = string(report) },
		"failed":      term(contract.ExitOutOfCoffeeBeans, "Error", outOfBeansMessage("o-1")),
		"corrupt log": term(3, "Error", failureMessage(contract.ReasonCorruptLog)),
		"killed":      term(137, "Error", ""),
		"oom":         term(137, "OOMKilled", "some log line\nlast line"),
		"evicted": func(p *corev1.Pod) {
			term(143, "Error", "")(p)
			p.Status.Reason, p.Status.Message = "Evicted", "low on memory"
		},
		"never started": func(p *corev1.Pod) { p.Spec.NodeName = ""; p.Status = corev1.PodStatus{Phase: corev1.PodPending} },
		"disrupted": func(p *corev1.Pod) {
			term(143, "Error", "")(p)
			p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.DisruptionTarget,
				Status: corev1.ConditionTrue, Reason: "PreemptionByScheduler", LastTransitionTime: metav1.NewTime(at.Add(-time.Second))})
		},
		"deleted gracefully": func(p *corev1.Pod) {
			p.DeletionTimestamp, p.DeletionGracePeriodSeconds = &metav1.Time{Time: now.Add(20 * time.Second)}, ptr.To[int64](30)
		},
		"deleted by force": func(p *corev1.Pod) {
			p.DeletionTimestamp, p.DeletionGracePeriodSeconds = &metav1.Time{Time: now}, ptr.To[int64](0)
		},
		"failed after a graceful delete": func(p *corev1.Pod) {
			term(143, "Error", "")(p)
			p.DeletionTimestamp, p.DeletionGracePeriodSeconds = &metav1.Time{Time: now.Add(20 * time.Second)}, ptr.To[int64](30)
		},
	}
	type summary struct {
		Memory                        supervisor.Memory
		Transition                    vendingv1alpha1.PodCause
		Decided, Create               bool
		Delete, Release               []string
		InPlace                       int32
		Progress                      supervisor.Progress
		Status                        vendingv1alpha1.VendingMachineStatus
		Claim                         string
		MayRelease, Ready, Terminal   bool
		Failure                       vendingv1alpha1.Failure
		FailureReason                 string
		FailureExternal, HasFinalizer bool
		Incarnation                   int32
		InPlaceReport                 *contract.InPlace
	}
	summarize := func(machine *vendingv1alpha1.VendingMachine, p *corev1.Pod) summary {
		step := supervisor.Next(supervisor.Input{Machine: machine, Pods: []corev1.Pod{*p}, TemplateHash: hash, Now: now})
		s := summary{Memory: step.Memory, Transition: step.Transition, Decided: step.Decided, Create: step.Create,
			InPlace: step.InPlace, Progress: step.Progress, Claim: claimOf(machine, p), MayRelease: supervisor.MayRelease(p, false),
			Ready: supervisor.Ready(p), Terminal: supervisor.Terminal(p), HasFinalizer: supervisor.HasFinalizer(p),
			Incarnation: supervisor.Incarnation(p), InPlaceReport: supervisor.InPlaceOf(p)}
		for _, d := range step.Delete {
			s.Delete = append(s.Delete, fmt.Sprintf("%s graceful=%v", d.Pod.Name, d.Graceful))
		}
		for _, r := range step.Release {
			s.Release = append(s.Release, r.Name)
		}
		if s.Terminal {
			f, api := supervisor.FailureOf(p)
			s.Failure, s.FailureReason, s.FailureExternal = api, f.Reason, f.External
		}
		o := observation{pods: []corev1.Pod{*p}, escalatedTo: escalationTarget(machine)}
		s.Status = computeStatus(machine, step, o, now)
		for i := range s.Status.Conditions {
			s.Status.Conditions[i].LastTransitionTime = metav1.Time{} // the wall clock's (meta.SetStatusCondition)
		}
		return s
	}
	for name, mutate := range cases {
		for _, remembered := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s remembered=%v", name, remembered), func(t *testing.T) {
				g := NewWithT(t)
				p := buildPod(vm, DefaultVendingImage, "coffee-0", vendingv1alpha1.PodCreated, nil)
				p.UID, p.CreationTimestamp, p.ResourceVersion = "uid-pod", at, "7"
				p.Spec.NodeName = "node-1"
				p.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubelet", Operation: metav1.ManagedFieldsOperationUpdate}}
				p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.7", HostIP: "10.0.0.1", StartTime: &at,
					QOSClass: corev1.PodQOSBurstable, PodIPs: []corev1.PodIP{{IP: "10.0.0.7"}},
					Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: at}},
					ContainerStatuses: []corev1.ContainerStatus{{Name: "vending", Ready: true, Image: DefaultVendingImage,
						ImageID: "sha256:feed", ContainerID: "containerd://c0", Started: ptr.To(true),
						State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: at}}}}}
				mutate(p)
				machine := vm.DeepCopy()
				if remembered {
					machine.Status.PodName, machine.Status.PodUID, machine.Status.PodRequested = "coffee-0", p.UID, true
					machine.Status.PodCause = vendingv1alpha1.PodCreated
				}
				trimmed, err := TrimPod(p.DeepCopy())
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(summarize(machine, trimmed.(*corev1.Pod))).To(Equal(summarize(machine, p)))
			})
		}
	}
}

// Only a new machine's first status waits: a machine whose status was written (here one that
// rolls to a new pod, which is Pending while it starts) records what it sees at once.
func TestScaleRedTeamOnlyTheFirstStatusWaits(t *testing.T) {
	rg := newRig(t, nil)
	rg.ok() // coffee-0
	kubeletRun(rg.g, rg.pod(0))
	rg.ok()
	rg.g.Expect(rg.machine().Status.PodUID).To(Equal(rg.pod(0).UID))
	rg.changeSpec()
	rg.ok() // rolls: coffee-1 reserved, coffee-0 deleted
	rg.ok() // creates coffee-1
	rg.g.Expect(rg.created).To(Equal([]string{"coffee-0", "coffee-1"}))
	res, err := rg.pass() // sees coffee-1 starting
	rg.g.Expect(err).NotTo(HaveOccurred())
	got := rg.machine()
	rg.g.Expect(got.Status.PodUID).To(Equal(rg.pod(1).UID), "the status waits (requeued after %v)", res.RequeueAfter)
	rg.g.Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
	rg.g.Expect(got.Status.Phase).To(Equal(vendingv1alpha1.PhasePending))
}
