package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/fleet"
)

// The fleet's reset plans, tested with reconcilers built by hand and driven one pass at a
// time, so that a conflict, an operator stopping between two writes, or a stale cache falls
// exactly where the test puts it. They need an API server of their own: the suite's manager
// reconciles every fleet of its API server and would carry out (or race) the plans here.
// There is no machine controller either: the test plays each machine's supervisor through
// the contract the fleet relies on (the Escalated condition, status.observedReset, the reset
// annotation).
func TestFleetResetPlans(t *testing.T) {
	env := &envtest.Environment{
		CRDDirectoryPaths:     testEnv.CRDDirectoryPaths,
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: testEnv.BinaryAssetsDirectory,
	}
	started := time.Now()
	pcfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting a control plane for the plan tests: %v", err)
	}
	t.Logf("control plane of the plan tests started in %v", time.Since(started).Round(time.Millisecond))
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stopping the plan tests' control plane: %v", err)
		}
	})
	t.Run("interrupted by a conflict", func(t *testing.T) { testPlanCompletesAfterAConflict(t, pcfg) })
	t.Run("interrupted by an operator restart", func(t *testing.T) { testPlanCompletesAfterARestart(t, pcfg) })
	t.Run("stale views answer no escalation twice", func(t *testing.T) { testPlanNeverTwice(t, pcfg) })
	t.Run("a stale view of a finished plan keeps the next one", func(t *testing.T) { testStalePlanKeepsTheNext(t, pcfg) })
}

// planWorld is one test's namespace in the plan tests' API server, and the machines' reset
// values as a watch saw them change.
type planWorld struct {
	t      *testing.T
	g      Gomega
	cfg    *rest.Config
	c      client.WithWatch
	ns     string
	fleet  *vendingv1alpha1.VendingFleet
	events *events.FakeRecorder

	mu     sync.Mutex
	seen   map[string][]string // machine -> its reset values in the order the API server stored them
	lastRV map[string]string
}

func newPlanWorld(t *testing.T, cfg *rest.Config, replicas int32, mutate func(*vendingv1alpha1.VendingFleet)) *planWorld {
	t.Helper()
	g := NewWithT(t)
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	g.Expect(err).NotTo(HaveOccurred())
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "plan-"}}
	g.Expect(c.Create(ctx, ns)).To(Succeed())
	f := &vendingv1alpha1.VendingFleet{ObjectMeta: metav1.ObjectMeta{Name: "f", Namespace: ns.Name}}
	f.Spec.Replicas = ptr.To(replicas)
	if mutate != nil {
		mutate(f)
	}
	g.Expect(c.Create(ctx, f)).To(Succeed())
	w := &planWorld{t: t, g: g, cfg: cfg, c: c, ns: ns.Name, fleet: f, events: events.NewFakeRecorder(100),
		seen: map[string][]string{}, lastRV: map[string]string{}}
	g.Expect(w.pass(w.reconciler(c))).To(Succeed(), "the first pass creates the machines")
	w.watchResets()
	for n := range int(replicas) {
		w.observeReset(fmt.Sprintf("f-%d", n)) // each machine runs: its status reflects its reset value
	}
	return w
}

// reconciler is an operator of its own, with nothing in memory but what it reads.
func (w *planWorld) reconciler(c client.Client) *VendingFleetReconciler {
	return &VendingFleetReconciler{Client: c, Scheme: scheme, Recorder: w.events}
}

// pass runs one pass and says how it ended: a conflict is an error here (Reconcile makes it a
// routine retry), as these tests are about what a refused write leaves behind.
func (w *planWorld) pass(r *VendingFleetReconciler) error {
	_, err := r.reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(w.fleet)})
	return err
}

// watchResets records every value each machine's reset annotation takes, as the API server
// stores it: a reset is a change of that value, so the test counts resets, not calls.
func (w *planWorld) watchResets() {
	ctx, cancel := context.WithCancel(context.Background())
	wi, err := w.c.Watch(ctx, &vendingv1alpha1.VendingMachineList{}, client.InNamespace(w.ns))
	w.g.Expect(err).NotTo(HaveOccurred())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range wi.ResultChan() {
			vm, ok := ev.Object.(*vendingv1alpha1.VendingMachine)
			if !ok || ev.Type == watch.Deleted {
				continue
			}
			w.mu.Lock()
			v := vm.Annotations[annotationReset]
			if s := w.seen[vm.Name]; len(s) == 0 || s[len(s)-1] != v {
				w.seen[vm.Name] = append(s, v)
			}
			w.lastRV[vm.Name] = vm.ResourceVersion
			w.mu.Unlock()
		}
	}()
	w.t.Cleanup(func() { wi.Stop(); cancel(); <-done })
}

// resets is how many times each machine's reset value changed, once the watch has caught up
// with the API server.
func (w *planWorld) resets() map[string]int {
	list := &vendingv1alpha1.VendingMachineList{}
	w.g.Expect(w.c.List(context.Background(), list, client.InNamespace(w.ns))).To(Succeed())
	w.g.Eventually(func(g Gomega) {
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, vm := range list.Items {
			g.Expect(w.lastRV[vm.Name]).To(Equal(vm.ResourceVersion), "the watch has seen machine %s as it is", vm.Name)
		}
	}).Should(Succeed())
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]int{}
	for name, values := range w.seen {
		out[name] = len(values) - 1
	}
	return out
}

func (w *planWorld) machine(name string) *vendingv1alpha1.VendingMachine {
	vm := &vendingv1alpha1.VendingMachine{}
	w.g.Expect(w.c.Get(context.Background(), client.ObjectKey{Namespace: w.ns, Name: name}, vm)).To(Succeed())
	return vm
}

func (w *planWorld) getFleet() *vendingv1alpha1.VendingFleet {
	f := &vendingv1alpha1.VendingFleet{}
	w.g.Expect(w.c.Get(context.Background(), client.ObjectKeyFromObject(w.fleet), f)).To(Succeed())
	return f
}

// escalate plays the machine's supervisor giving up on pod <machine>-<n>: Escalated=True under
// the reset value it runs with.
func (w *planWorld) escalate(name, reason string) {
	vm := w.machine(name)
	vm.Status.ObservedReset = vm.Annotations[annotationReset]
	vm.Status.LastFailure = &vendingv1alpha1.Failure{Time: metav1.Now(), Reason: reason, PodName: name + "-0"}
	meta.SetStatusCondition(&vm.Status.Conditions, metav1.Condition{Type: vendingv1alpha1.ConditionEscalated,
		Status: metav1.ConditionTrue, Reason: "RestartIntensityExceeded", Message: "escalated to VendingFleet f"})
	w.g.Expect(w.c.Status().Update(context.Background(), vm)).To(Succeed())
}

// observeReset plays the machine's supervisor carrying out its reset value: a fresh pod,
// Escalated=False.
func (w *planWorld) observeReset(name string) {
	vm := w.machine(name)
	vm.Status.ObservedReset = vm.Annotations[annotationReset]
	meta.SetStatusCondition(&vm.Status.Conditions, metav1.Condition{Type: vendingv1alpha1.ConditionEscalated,
		Status: metav1.ConditionFalse, Reason: "WithinIntensity", Message: "running"})
	w.g.Expect(w.c.Status().Update(context.Background(), vm)).To(Succeed())
}

// tokens is each machine's reset value now.
func (w *planWorld) tokens(names ...string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = w.machine(n).Annotations[annotationReset]
	}
	return out
}

func (w *planWorld) resetEvents() int {
	n := 0
	for {
		select {
		case e := <-w.events.Events:
			if strings.Contains(e, " Reset ") {
				n++
			}
		default:
			return n
		}
	}
}

// conflictOnce fails the first update of the named machine with a conflict, as if another
// writer had changed it since it was read.
func conflictOnce(c client.WithWatch, machine string) client.WithWatch {
	done := false
	return interceptor.NewClient(c, interceptor.Funcs{
		Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
			if _, ok := obj.(*vendingv1alpha1.VendingMachine); ok && obj.GetName() == machine && !done {
				done = true
				return apierrors.NewConflict(schema.GroupResource{Group: vendingv1alpha1.GroupVersion.Group, Resource: "vendingmachines"},
					obj.GetName(), errors.New("injected: the object has been modified"))
			}
			return c.Update(ctx, obj, opts...)
		},
	})
}

// A conflict on a healthy machine stops the pass after the escalated machine was reset; the
// next pass finishes the recorded plan (before plans, the escalated machine no longer counted
// as escalated and the rest were never reset). The corrupt log is quarantined once: its new
// log generation is written in the same update as the token, and never again.
func testPlanCompletesAfterAConflict(t *testing.T, cfg *rest.Config) {
	w := newPlanWorld(t, cfg, 3, func(f *vendingv1alpha1.VendingFleet) {
		f.Spec.Strategy = vendingv1alpha1.AllForOne
		f.Spec.CorruptLog.Policy = vendingv1alpha1.CorruptLogStartNewLog
	})
	g := w.g
	w.escalate("f-1", fleet.ReasonCorruptLog)

	r := w.reconciler(conflictOnce(w.c, "f-0"))
	err := w.pass(r)
	g.Expect(apierrors.IsConflict(err)).To(BeTrue(), "the pass stops at the injected conflict: %v", err)

	plan := w.getFleet().Status.ResetPlan
	g.Expect(plan).NotTo(BeNil(), "the plan was recorded before any machine was written")
	g.Expect(plan.Strategy).To(Equal(vendingv1alpha1.AllForOne))
	g.Expect(plan.Machines).To(Equal([]vendingv1alpha1.PlannedReset{{Name: "f-1", Quarantine: true}, {Name: "f-0"}, {Name: "f-2"}}))
	g.Expect(plan.Escalations).To(HaveLen(1))
	g.Expect(plan.Escalations[0].Machine).To(Equal("f-1"))
	g.Expect(plan.Escalations[0].Pod).To(Equal("f-1-0"))
	g.Expect(plan.Escalations[0].Reason).To(Equal(fleet.ReasonCorruptLog))
	g.Expect(plan.Escalations[0].FailedAt).NotTo(BeNil())
	g.Expect(w.tokens("f-0", "f-1", "f-2")).To(Equal([]string{"", plan.Token, ""}), "the escalated machine first, then the conflict")
	w.observeReset("f-1") // its supervisor restarts it: f-1 is no longer escalated

	g.Expect(w.pass(r)).To(Succeed())
	g.Expect(w.tokens("f-0", "f-1", "f-2")).To(Equal([]string{plan.Token, plan.Token, plan.Token}), "the plan completed")
	g.Expect(w.pass(r)).To(Succeed(), "a pass with nothing to do")

	g.Expect(w.resets()).To(Equal(map[string]int{"f-0": 1, "f-1": 1, "f-2": 1}), "every machine reset exactly once")
	g.Expect(w.machine("f-1").Annotations[annotationLogGeneration]).To(Equal("1"), "the corrupt log's claim replaced once")
	_, quarantined := w.machine("f-0").Annotations[annotationLogGeneration]
	g.Expect(quarantined).To(BeFalse(), "only the corrupt machine moves to a new log")
	f := w.getFleet()
	g.Expect(f.Status.ResetPlan).To(BeNil(), "a completed plan is retired")
	g.Expect(f.Status.Escalations).To(HaveLen(1), "its escalation is remembered, once")
	g.Expect(f.Status.Escalations[0].Plan).To(Equal(plan.Token))
	g.Expect(fleetCondition(f, vendingv1alpha1.ConditionEscalated).Status).To(Equal(metav1.ConditionFalse))
	g.Expect(w.resetEvents()).To(Equal(1), "one Reset event, when the plan completed")
	for _, name := range []string{"f-0", "f-1", "f-2"} {
		g.Expect(w.machine(name).Annotations[annotationFleetEscalations]).To(ContainSubstring(plan.Token),
			"machine %s records the escalation the plan answered", name)
	}
}

// The operator stops after the plan is recorded and one machine written (every later write
// fails, as they would for a process that is gone); a new operator, with nothing in memory,
// finishes the same plan. RestForOne: the machine before the escalated one is never touched.
func testPlanCompletesAfterARestart(t *testing.T, cfg *rest.Config) {
	w := newPlanWorld(t, cfg, 4, func(f *vendingv1alpha1.VendingFleet) { f.Spec.Strategy = vendingv1alpha1.RestForOne })
	g := w.g
	w.escalate("f-1", "Panic")

	stopped := false
	gone := errors.New("injected: the operator has stopped")
	c := interceptor.NewClient(w.c, interceptor.Funcs{
		Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
			if stopped {
				return gone
			}
			if _, ok := obj.(*vendingv1alpha1.VendingMachine); ok {
				stopped = true // this write lands, and it is the last one
			}
			return c.Update(ctx, obj, opts...)
		},
		Patch: func(ctx context.Context, c client.WithWatch, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
			if stopped {
				return gone
			}
			return c.Patch(ctx, obj, patch, opts...)
		},
		SubResourcePatch: func(ctx context.Context, c client.Client, sub string, obj client.Object, patch client.Patch,
			opts ...client.SubResourcePatchOption) error {
			if stopped {
				return gone
			}
			return c.SubResource(sub).Patch(ctx, obj, patch, opts...)
		},
	})
	g.Expect(w.pass(w.reconciler(c))).To(MatchError(gone))
	plan := w.getFleet().Status.ResetPlan
	g.Expect(plan).NotTo(BeNil(), "the plan was recorded before the first machine was written")
	g.Expect(w.tokens("f-0", "f-1", "f-2", "f-3")).To(Equal([]string{"", plan.Token, "", ""}))
	w.observeReset("f-1")

	g.Expect(w.pass(w.reconciler(w.c))).To(Succeed(), "a new operator")
	g.Expect(w.tokens("f-0", "f-1", "f-2", "f-3")).To(Equal([]string{"", plan.Token, plan.Token, plan.Token}),
		"the new operator finished the recorded plan, with its token")
	g.Expect(w.resets()).To(Equal(map[string]int{"f-0": 0, "f-1": 1, "f-2": 1, "f-3": 1}))
	f := w.getFleet()
	g.Expect(f.Status.ResetPlan).To(BeNil())
	g.Expect(f.Status.Escalations).To(HaveLen(1))
	g.Expect(f.Status.Escalations[0].Machine).To(Equal("f-1"))
	g.Expect(w.resetEvents()).To(Equal(1))
}

// staleClient reads the fleet and its machines as they were (a cache that lags), and writes
// through to the API server.
func staleClient(c client.WithWatch, f *vendingv1alpha1.VendingFleet, machines *vendingv1alpha1.VendingMachineList) client.WithWatch {
	return interceptor.NewClient(c, interceptor.Funcs{
		Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			if out, ok := obj.(*vendingv1alpha1.VendingFleet); ok && f != nil {
				f.DeepCopyInto(out)
				return nil
			}
			return c.Get(ctx, key, obj, opts...)
		},
		List: func(ctx context.Context, c client.WithWatch, list client.ObjectList, opts ...client.ListOption) error {
			if out, ok := list.(*vendingv1alpha1.VendingMachineList); ok && machines != nil {
				machines.DeepCopyInto(out)
				return nil
			}
			return c.List(ctx, list, opts...)
		},
	})
}

// One escalation resets each machine once, whatever a lagging cache shows after the plan
// completed: a view of the fleet from before the plan (no plan, no escalation remembered)
// cannot record a second one, and a view of the machine from before its reset (still
// escalated) does not count as a new escalation.
func testPlanNeverTwice(t *testing.T, cfg *rest.Config) {
	w := newPlanWorld(t, cfg, 3, func(f *vendingv1alpha1.VendingFleet) { f.Spec.Strategy = vendingv1alpha1.AllForOne })
	g := w.g
	ctx := context.Background()
	w.escalate("f-2", "Panic")
	staleFleet := w.getFleet()
	staleMachines := &vendingv1alpha1.VendingMachineList{}
	g.Expect(w.c.List(ctx, staleMachines, client.InNamespace(w.ns))).To(Succeed())

	r := w.reconciler(w.c)
	g.Expect(w.pass(r)).To(Succeed())
	token := w.machine("f-2").Annotations[annotationReset]
	g.Expect(token).NotTo(BeEmpty())
	g.Expect(w.getFleet().Status.ResetPlan).To(BeNil(), "nothing interrupted the plan: retired in the same pass")
	w.observeReset("f-2")

	err := w.pass(w.reconciler(staleClient(w.c, staleFleet, staleMachines)))
	g.Expect(apierrors.IsConflict(err)).To(BeTrue(), "a stale fleet cannot record a plan: %v", err)
	err = w.pass(w.reconciler(staleClient(w.c, nil, staleMachines)))
	g.Expect(err).To(Or(Succeed(), Satisfy(apierrors.IsConflict)), "a stale machine is not a new escalation")
	for range 2 {
		g.Expect(w.pass(r)).To(Succeed(), "fresh passes find nothing to do")
	}
	g.Expect(w.resets()).To(Equal(map[string]int{"f-0": 1, "f-1": 1, "f-2": 1}), "one escalation, one reset per machine")
	g.Expect(w.tokens("f-0", "f-1", "f-2")).To(Equal([]string{token, token, token}))
	f := w.getFleet()
	g.Expect(f.Status.ResetPlan).To(BeNil())
	g.Expect(f.Status.Escalations).To(HaveLen(1))
	g.Expect(fleetCondition(f, vendingv1alpha1.ConditionEscalated).Status).To(Equal(metav1.ConditionFalse))
	g.Expect(w.resetEvents()).To(Equal(1))

	// The same machine escalating again (under the plan's token) is a new escalation: one more
	// reset of each machine, with a new token.
	w.escalate("f-2", "Panic")
	g.Expect(w.pass(r)).To(Succeed())
	g.Expect(w.resets()).To(Equal(map[string]int{"f-0": 2, "f-1": 2, "f-2": 2}))
	again := w.tokens("f-0", "f-1", "f-2")
	g.Expect(slices.Compact(again)).To(HaveLen(1))
	g.Expect(again[0]).NotTo(Equal(token))
	g.Expect(w.getFleet().Status.Escalations).To(HaveLen(2))
}

// A pass that read the fleet while an earlier plan was in progress finds nothing left of that
// plan (its machines carry its token) and would retire it; meanwhile the earlier plan completed
// and the next one was recorded and interrupted. The stale pass's status write must fail
// rather than clear the plan in progress, which would strand its remaining machines.
func testStalePlanKeepsTheNext(t *testing.T, cfg *rest.Config) {
	w := newPlanWorld(t, cfg, 3, func(f *vendingv1alpha1.VendingFleet) { f.Spec.Strategy = vendingv1alpha1.AllForOne })
	g := w.g
	w.escalate("f-0", "Panic")
	// Reconcile, as the manager calls it, takes the conflict for the routine retry it is: no
	// reconcile error (the alerts count those), a quick requeue.
	res, err := w.reconciler(conflictOnce(w.c, "f-1")).Reconcile(context.Background(),
		ctrl.Request{NamespacedName: client.ObjectKeyFromObject(w.fleet)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.RequeueAfter).To(Equal(conflictRetry))
	stale := w.getFleet()
	g.Expect(stale.Status.ResetPlan).NotTo(BeNil(), "the first plan, in progress")
	first := stale.Status.ResetPlan.Token
	w.observeReset("f-0")
	g.Expect(w.pass(w.reconciler(w.c))).To(Succeed())
	g.Expect(w.getFleet().Status.ResetPlan).To(BeNil(), "the first plan completed")
	for _, n := range []string{"f-0", "f-1", "f-2"} {
		w.observeReset(n)
	}

	w.escalate("f-2", "Panic")
	g.Expect(apierrors.IsConflict(w.pass(w.reconciler(conflictOnce(w.c, "f-0"))))).To(BeTrue())
	next := w.getFleet().Status.ResetPlan
	g.Expect(next).NotTo(BeNil())
	g.Expect(next.Token).NotTo(Equal(first))
	g.Expect(w.tokens("f-0", "f-1", "f-2")).To(Equal([]string{first, first, next.Token}))

	err = w.pass(w.reconciler(staleClient(w.c, stale, nil)))
	g.Expect(apierrors.IsConflict(err)).To(BeTrue(), "the stale pass's status write fails: %v", err)
	g.Expect(w.getFleet().Status.ResetPlan).To(Equal(next), "the plan in progress is kept")

	w.observeReset("f-2")
	g.Expect(w.pass(w.reconciler(w.c))).To(Succeed())
	g.Expect(w.tokens("f-0", "f-1", "f-2")).To(Equal([]string{next.Token, next.Token, next.Token}), "the next plan completed")
	g.Expect(w.resets()).To(Equal(map[string]int{"f-0": 2, "f-1": 2, "f-2": 2}), "two escalations, two resets of each machine")
	g.Expect(w.resetEvents()).To(Equal(2), "one Reset event per plan")
	g.Expect(w.getFleet().Status.Escalations).To(HaveLen(2))
}

// A fleet's scaling event names a few machines and the count: an event's note has room for about
// a kilobyte, and the names of a fleet of 1,000 would not fit (the event would be refused).
func TestScalingEventFitsANote(t *testing.T) {
	list := make([]string, 0, 1000)
	for i := range 1000 {
		list = append(list, fmt.Sprintf("lobby-%d", i))
	}
	got := names(list)
	if len(got) > 200 || !strings.HasPrefix(got, "1000 machines: lobby-0, lobby-1, lobby-2, lobby-3, lobby-4, … lobby-999") {
		t.Errorf("names of 1,000 machines: %q", got)
	}
	if got := names([]string{"lobby-10", "lobby-2"}); got != "2 machines: lobby-2, lobby-10" {
		t.Errorf("names of two: %q", got)
	}
	if got := names([]string{"lobby-0"}); got != "machine lobby-0" {
		t.Errorf("names of one: %q", got)
	}
}
