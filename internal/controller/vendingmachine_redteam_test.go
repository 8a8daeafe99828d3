package controller

// Red team of issue 10, the reconciler's side: the memory is written (conditionally on the
// version read) before any action, a failed or interrupted action is finished by the next pass
// without a second step or a second announcement, observedGeneration advances only after a pass
// that did its work, and no pass acts on an old memory.
//
// Each test drives a VendingMachineReconciler by hand, pass by pass, through an interceptor
// client, on a real API server. The suite's operator must keep out of the way: the machine is
// created paused and then deleted while a finalizer holds it, so the operator (which leaves a
// machine being deleted alone) does nothing with it, while the hand-driven reconciler reads it
// without its deletionTimestamp and without spec.paused. No Eventually: every pass is explicit.
//
// A test that breaks a promise on main is a defect: skipped unless REDTEAM=1, naming it.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
)

const redteamFinalizer = "test.vending.resilience.dev/redteam"

// redteamDefect skips a test that shows a defect, unless REDTEAM=1.
func redteamDefect(t *testing.T, what string) {
	t.Helper()
	if os.Getenv("REDTEAM") == "" {
		t.Skip("defect: " + what + " (issue 10 red team; REDTEAM=1 runs it)")
	}
}

// rig is one machine and a reconciler driven by hand, with faults to inject.
type rig struct {
	g   *WithT
	ns  string
	key client.ObjectKey
	rec *events.FakeRecorder
	r   *VendingMachineReconciler
	// stale, when set, is what the reconciler's Get of the machine returns (a cache behind).
	stale *vendingv1alpha1.VendingMachine
	// failCreate / failDelete / conflictStatus fail the next n calls of that kind.
	failCreate, failDelete, conflictStatus int
	// loseStatusResponse applies the next n status patches and then reports a timeout, as a
	// client whose connection dropped after the API server committed the write.
	loseStatusResponse int
	// created lists the pods the reconciler created, in order.
	created []string
	// announced lists the reasons of the events the reconciler emitted, in order.
	announced []string
}

func newRig(t *testing.T, mutate func(*vendingv1alpha1.VendingMachine)) *rig {
	t.Helper()
	ctx := context.Background()
	g := NewWithT(t)
	ns := newNamespace(t)
	suspendManager(t) // the suite's operator would act on the machine and its pods too
	vm := newMachine(ns, "coffee", func(vm *vendingv1alpha1.VendingMachine) {
		fastBackoff(0)(vm)
		if mutate != nil {
			mutate(vm)
		}
		vm.Spec.Paused = true // the suite's operator never acts on it...
		vm.Finalizers = []string{redteamFinalizer}
	})
	g.Expect(k8sClient.Create(ctx, vm)).To(Succeed())
	g.Expect(k8sClient.Delete(ctx, vm)).To(Succeed()) // ...and leaves a machine being deleted alone
	t.Cleanup(func() {
		got := &vendingv1alpha1.VendingMachine{}
		if k8sClient.Get(ctx, client.ObjectKeyFromObject(vm), got) == nil {
			controllerutil.RemoveFinalizer(got, redteamFinalizer)
			_ = k8sClient.Update(ctx, got)
		}
	})
	rg := &rig{g: g, ns: ns, key: client.ObjectKeyFromObject(vm),
		rec: events.NewFakeRecorder(1000)}
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	g.Expect(err).NotTo(HaveOccurred())
	injected := func(what string) error {
		return apierrors.NewInternalError(fmt.Errorf("injected: %s", what))
	}
	cl := interceptor.NewClient(c, interceptor.Funcs{
		Get: func(ctx context.Context, cl client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			m, ok := obj.(*vendingv1alpha1.VendingMachine)
			if !ok || key != rg.key {
				return cl.Get(ctx, key, obj, opts...)
			}
			if rg.stale != nil {
				rg.stale.DeepCopyInto(m)
			} else if err := cl.Get(ctx, key, m, opts...); err != nil {
				return err
			}
			m.DeletionTimestamp, m.Spec.Paused = nil, false // the machine as a live one
			return nil
		},
		Create: func(ctx context.Context, cl client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			if p, ok := obj.(*corev1.Pod); ok {
				if rg.failCreate > 0 {
					rg.failCreate--
					return injected("create " + p.Name)
				}
				if err := cl.Create(ctx, obj, opts...); err != nil {
					return err
				}
				rg.created = append(rg.created, p.Name)
				return nil
			}
			return cl.Create(ctx, obj, opts...)
		},
		Delete: func(ctx context.Context, cl client.WithWatch, obj client.Object, opts ...client.DeleteOption) error {
			if _, ok := obj.(*corev1.Pod); ok && rg.failDelete > 0 {
				rg.failDelete--
				return injected("delete " + obj.GetName())
			}
			return cl.Delete(ctx, obj, opts...)
		},
		SubResourcePatch: func(ctx context.Context, cl client.Client, sub string, obj client.Object, patch client.Patch,
			opts ...client.SubResourcePatchOption) error {
			if _, ok := obj.(*vendingv1alpha1.VendingMachine); ok && sub == "status" && rg.conflictStatus > 0 {
				rg.conflictStatus--
				return apierrors.NewConflict(schema.GroupResource{Group: vendingv1alpha1.GroupVersion.Group, Resource: "vendingmachines"},
					obj.GetName(), errors.New("injected"))
			}
			if err := cl.SubResource(sub).Patch(ctx, obj, patch, opts...); err != nil || rg.loseStatusResponse == 0 {
				return err
			}
			rg.loseStatusResponse--
			return apierrors.NewTimeoutError("injected: the response was lost", 1)
		},
	})
	rg.r = &VendingMachineReconciler{Client: cl, Scheme: scheme, Recorder: rg.rec, VendingImage: DefaultVendingImage, Clock: testClock}
	return rg
}

// pass runs one reconcile pass and collects the events it emitted.
func (rg *rig) pass() (ctrl.Result, error) {
	res, err := rg.r.Reconcile(context.Background(), ctrl.Request{NamespacedName: rg.key})
	for {
		select {
		case e := <-rg.rec.Events:
			// FakeRecorder: "<type> <reason> <note>"
			if f := strings.Fields(e); len(f) > 1 {
				rg.announced = append(rg.announced, f[1])
			}
			continue
		default:
		}
		break
	}
	return res, err
}

// ok runs a pass that must succeed without a conflict.
func (rg *rig) ok() {
	res, err := rg.pass()
	rg.g.ExpectWithOffset(1, err).NotTo(HaveOccurred())
	rg.g.ExpectWithOffset(1, res.RequeueAfter).NotTo(Equal(conflictRetry), "an unexpected conflict")
}

// machine is the machine as the API server has it.
func (rg *rig) machine() *vendingv1alpha1.VendingMachine {
	vm := &vendingv1alpha1.VendingMachine{}
	rg.g.ExpectWithOffset(1, k8sClient.Get(context.Background(), rg.key, vm)).To(Succeed())
	return vm
}

func (rg *rig) pod(n int) *corev1.Pod {
	p := &corev1.Pod{}
	rg.g.ExpectWithOffset(1, k8sClient.Get(context.Background(), client.ObjectKey{Namespace: rg.ns, Name: fmt.Sprintf("coffee-%d", n)}, p)).To(Succeed())
	return p
}

func (rg *rig) count(reason string) int {
	n := 0
	for _, r := range rg.announced {
		if r == reason {
			n++
		}
	}
	return n
}

// changeSpec bumps the machine's generation with a change the pod template sees.
func (rg *rig) changeSpec() {
	vm := rg.machine()
	patch := client.MergeFrom(vm.DeepCopy())
	vm.Spec.Inventory.Beans++
	rg.g.ExpectWithOffset(1, k8sClient.Patch(context.Background(), vm, patch)).To(Succeed())
}

// TestRedTeamCrashBetweenMemoryAndAction: a pass writes the memory (a restart decided and
// carried out: the next incarnation reserved) and then fails to create the pod (a crash, an API
// error). The next pass finishes the step: the pod is created once, the restart counted once and
// announced once, and observedGeneration does not advance on the pass that failed.
func TestRedTeamCrashBetweenMemoryAndAction(t *testing.T) {
	rg := newRig(t, nil)
	rg.ok()
	kubeletRun(rg.g, rg.pod(0))
	rg.ok()
	gen := rg.machine().Status.ObservedGeneration
	rg.changeSpec() // generation+1 must not be reported observed by a pass that failed
	kubeletFail(rg.g, rg.pod(0), 137, "")
	rg.failCreate = 1
	_, err := rg.pass()
	rg.g.Expect(err).To(HaveOccurred(), "the injected failure of the create")
	got := rg.machine()
	rg.g.Expect(got.Status.PodName).To(Equal("coffee-1"), "the memory was written before the action")
	rg.g.Expect(got.Status.Restarts).To(BeEquivalentTo(1))
	rg.g.Expect(got.Status.ObservedGeneration).To(Equal(gen), "a pass whose action failed does not report the new generation")
	rg.g.Expect(rg.created).To(Equal([]string{"coffee-0"}))

	rg.ok() // finishes the step
	rg.ok() // and nothing more
	got = rg.machine()
	// The next pass may create coffee-1 or, since it cannot tell a pod never created from one
	// deleted before it was seen, take the next name: one pod either way, the one remembered.
	rg.g.Expect(rg.created).To(HaveLen(2), "one pod for the restart: %v", rg.created)
	rg.g.Expect(rg.created[1]).To(Equal(got.Status.PodName))
	rg.g.Expect(got.Status.Restarts).To(BeEquivalentTo(1), "the restart is counted once")
	rg.g.Expect(got.Status.RestartTimes).To(HaveLen(1))
	rg.g.Expect(got.Status.Recreations).To(BeEquivalentTo(0), "no pod was lost from outside")
	rg.g.Expect(rg.count("Recreated")).To(Equal(0), "%v", rg.announced)
	rg.g.Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
	rg.g.Expect(rg.count("Restarted")).To(Equal(1), "announced once: %v", rg.announced)
	rg.g.Expect(rg.count("Failed")).To(Equal(1), "the failure announced once: %v", rg.announced)
}

// TestRedTeamConflictActsOnNothing: the memory write meets a conflict (another writer got
// there first): the pass creates and deletes nothing and announces nothing; the next pass does
// the step once.
func TestRedTeamConflictActsOnNothing(t *testing.T) {
	rg := newRig(t, nil)
	rg.ok()
	kubeletRun(rg.g, rg.pod(0))
	rg.ok()
	kubeletFail(rg.g, rg.pod(0), 137, "")
	before := len(rg.announced)
	rg.conflictStatus = 1
	res, err := rg.pass()
	rg.g.Expect(err).NotTo(HaveOccurred())
	rg.g.Expect(res.RequeueAfter).To(Equal(conflictRetry))
	rg.g.Expect(rg.created).To(Equal([]string{"coffee-0"}), "a pass that met a conflict creates nothing")
	rg.g.Expect(rg.pod(0).DeletionTimestamp).To(BeNil(), "nor deletes")
	rg.g.Expect(rg.announced[before:]).To(BeEmpty(), "nor announces")
	rg.g.Expect(rg.machine().Status.LastFailure).To(BeNil(), "nor remembers")
	rg.ok()
	rg.g.Expect(rg.created).To(Equal([]string{"coffee-0", "coffee-1"}))
	rg.g.Expect(rg.count("Failed")).To(Equal(1))
	rg.g.Expect(rg.count("Restarted")).To(Equal(1))
}

// TestRedTeamObservedGenerationWaitsForTheRoll: a spec change whose roll cannot delete the old
// pod (an API error) is not reported observed; the pass that deletes it is.
func TestRedTeamObservedGenerationWaitsForTheRoll(t *testing.T) {
	rg := newRig(t, nil)
	rg.ok()
	kubeletRun(rg.g, rg.pod(0))
	rg.ok()
	gen := rg.machine().Status.ObservedGeneration
	rg.g.Expect(gen).To(Equal(rg.machine().Generation))
	rg.changeSpec()
	rg.failDelete = 1
	_, err := rg.pass()
	rg.g.Expect(err).To(HaveOccurred())
	got := rg.machine()
	rg.g.Expect(got.Status.PodName).To(Equal("coffee-1"), "the roll is remembered")
	rg.g.Expect(got.Status.ObservedGeneration).To(Equal(gen), "but not reported done")
	rg.ok()
	got = rg.machine()
	rg.g.Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
	rg.g.Expect(got.Status.Rolls).To(BeEquivalentTo(1), "rolled once")
	rg.g.Expect(rg.count("Rolling")).To(Equal(1))
}

// TestRedTeamStalePassWithUnchangedMemoryActs: the reconciler's own last write (a roll: the
// memory moved from coffee-0 to coffee-1, and coffee-0 was deleted) is not in its machine cache
// yet, while its pod cache has seen the deletion. On that stale machine Next changes nothing in
// the memory (coffee-0 was reserved and never seen: create it by name), so the pass writes
// nothing, meets no conflict, and creates coffee-0 again: a name used for a second pod, an
// incarnation the memory has left started on the claim. The conditional write is the guard,
// and a pass that acts without writing skips it.
func TestRedTeamStalePassWithUnchangedMemoryActs(t *testing.T) {
	redteamDefect(t, "a pass on a stale machine whose memory Next leaves unchanged acts without the conditional write (re-creates coffee-0 after the memory moved to coffee-1)")
	rg := newRig(t, nil)
	rg.ok() // coffee-0 reserved and created
	kubeletRun(rg.g, rg.pod(0))
	rg.changeSpec()
	stale := rg.machine() // what the cache still holds during the next two passes
	rg.ok()               // sees coffee-0 (old spec): remembers it and rolls to coffee-1, deleting coffee-0
	rg.g.Expect(rg.machine().Status.PodName).To(Equal("coffee-1"))
	rg.g.Expect(apierrors.IsNotFound(k8sClient.Get(context.Background(), client.ObjectKey{Namespace: rg.ns, Name: "coffee-0"}, &corev1.Pod{}))).
		To(BeTrue(), "envtest deletes an unscheduled pod at once")
	rg.stale = stale
	_, _ = rg.pass()
	rg.stale = nil
	rg.g.Expect(rg.created).To(Equal([]string{"coffee-0"}), "a pass on a stale memory created a pod")
}

// TestRedTeamGracefulDeletionFromOutsideIsNotAFailure: kubectl delete (30 s grace) of a running
// pod; the kubelet sends SIGTERM, the vending pod exits 143 at once, and the kubelet reports the
// pod Failed before removing it. The pod was deleted before it failed: not the machine's failure
// (docs/design.md, "What counts against the window"), so a machine with maxRestarts 0 must not
// escalate.
func TestRedTeamGracefulDeletionFromOutsideIsNotAFailure(t *testing.T) {
	redteamDefect(t, "a running pod deleted gracefully from outside and reported Failed (exit 143) before it is gone is the machine's own failure")
	ctx := context.Background()
	rg := newRig(t, func(vm *vendingv1alpha1.VendingMachine) { vm.Spec.Supervision.MaxRestarts = ptr.To[int32](0) })
	rg.ok()
	pod := rg.pod(0)
	// Bound to a node, so a graceful deletion waits for a kubelet (there is none: the test is it).
	rg.g.Expect(k8sClient.SubResource("binding").Create(ctx, pod, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace},
		Target:     corev1.ObjectReference{Kind: "Node", Name: "node-1"}})).To(Succeed())
	kubeletRun(rg.g, rg.pod(0))
	rg.ok()
	rg.g.Expect(k8sClient.Delete(ctx, rg.pod(0), client.GracePeriodSeconds(30))).To(Succeed())
	rg.g.Expect(rg.pod(0).DeletionTimestamp).NotTo(BeNil())
	rg.ok()
	kubeletFail(rg.g, rg.pod(0), contract.ExitTerminated, failureMessage(contract.ReasonTerminated))
	rg.ok()
	got := rg.machine()
	rg.g.Expect(got.Status.Phase).NotTo(Equal(vendingv1alpha1.PhaseEscalated), "a kubectl delete escalated a healthy machine: %+v", got.Status.LastFailure)
	rg.g.Expect(got.Status.Restarts).To(BeEquivalentTo(0))
	if f := got.Status.LastFailure; f != nil {
		rg.g.Expect(f.External).To(BeTrue(), "decided as the machine's own failure: %+v", *f)
	}
	t.Cleanup(func() { _ = k8sClient.Delete(ctx, pod, client.GracePeriodSeconds(0)) })
}

// TestRedTeamLostResponseStillAnnounces: the memory write that records a decision is committed,
// but its response is lost (a timeout, a dropped connection). The pass ends with the error; the
// next pass reads the decision as already made and does not announce it: the machine escalated
// and no Failed or Escalated event ever says so (the condition does). Announced at most once,
// not once.
//
// The lead's call (issue 10): events are at most once by design (they are announced on the
// memory write; Kubernetes events are best-effort news, the status is the record), so this
// stays a documented limit, run with REDTEAM=1. What must hold, the escalation in the status,
// is checked by the test's second assertion.
func TestRedTeamLostResponseStillAnnounces(t *testing.T) {
	redteamDefect(t, "a decision whose memory write was committed but whose response was lost is never announced (documented limit: events are at most once)")
	rg := newRig(t, func(vm *vendingv1alpha1.VendingMachine) { vm.Spec.Supervision.MaxRestarts = ptr.To[int32](0) })
	rg.ok()
	kubeletRun(rg.g, rg.pod(0))
	rg.ok()
	kubeletFail(rg.g, rg.pod(0), 137, "")
	rg.loseStatusResponse = 1
	_, err := rg.pass()
	rg.g.Expect(err).To(HaveOccurred(), "the lost response")
	rg.g.Expect(rg.machine().Status.Phase).To(Equal(vendingv1alpha1.PhaseEscalated), "the write was committed")
	rg.ok()
	rg.ok()
	rg.g.Expect(rg.count("Escalated")).To(Equal(1), "the escalation is announced once: %v", rg.announced)
}

// TestRedTeamRecoveredAnnouncedOnce: the pass that sees the restarted pod ready announces
// Recovered and then writes the status (the Ready condition) that says so; when that write meets
// a conflict, the next pass reads Ready=False again and announces Recovered a second time.
func TestRedTeamRecoveredAnnouncedOnce(t *testing.T) {
	rg := newRig(t, nil)
	rg.ok()
	kubeletRun(rg.g, rg.pod(0))
	rg.ok()
	kubeletFail(rg.g, rg.pod(0), 137, "")
	rg.ok() // restarts as coffee-1
	rg.ok() // sees coffee-1, not ready yet
	kubeletRun(rg.g, rg.pod(1))
	rg.conflictStatus = 1 // the write of Ready=True meets a conflict
	res, err := rg.pass()
	rg.g.Expect(err).NotTo(HaveOccurred())
	rg.g.Expect(res.RequeueAfter).To(Equal(conflictRetry))
	rg.ok()
	rg.ok()
	rg.g.Expect(condition(rg.machine(), vendingv1alpha1.ConditionReady).Status).To(Equal(metav1.ConditionTrue))
	rg.g.Expect(rg.count("Recovered")).To(Equal(1), "the recovery is announced once: %v", rg.announced)
}

// TestRedTeamRecreatedMachineWaitsForItsPredecessorsPod: a machine deleted and created again
// with the same name resumes its retained log (docs/design.md). The old machine's pod (owned by
// the old object, found by the garbage collector only after the old owner is gone, and then
// given its grace period) may still run on that claim when the new machine starts. The
// supervisor looks only at the pods the new object controls, and starts coffee-0 beside it: two
// pods on one log.
func TestRedTeamRecreatedMachineWaitsForItsPredecessorsPod(t *testing.T) {
	ctx := context.Background()
	rg := newRig(t, nil)
	vm := rg.machine()
	old := vm.DeepCopy()
	old.UID = "uid-of-the-deleted-machine"
	pred := buildPod(old, DefaultVendingImage, "coffee-5", vendingv1alpha1.PodRestarted, nil)
	rg.g.Expect(k8sClient.Create(ctx, pred)).To(Succeed())
	kubeletRun(rg.g, rg.podNamed("coffee-5"))
	rg.g.Expect(claimOf(vm, rg.podNamed("coffee-5"))).To(Equal(pvcName(vm)), "the predecessor's pod mounts the same claim")
	_, _ = rg.pass()
	rg.g.Expect(rg.created).To(BeEmpty(), "a pod was started while another may run on claim %s", pvcName(vm))
}

func (rg *rig) podNamed(name string) *corev1.Pod {
	p := &corev1.Pod{}
	rg.g.ExpectWithOffset(1, k8sClient.Get(context.Background(), client.ObjectKey{Namespace: rg.ns, Name: name}, p)).To(Succeed())
	return p
}
