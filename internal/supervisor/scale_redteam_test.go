package supervisor

// Scale red team (the first pod without a memory write): the supervisor's side of "the pod is
// its own record". A pass that finds a new machine's first pod with a blank memory adopts it as
// the first start it is, and must not lose anything a human asked for in between.
//
// The defect found (a reset asked for before the first status, swallowed) is fixed; the test
// guards it.

import (
	"testing"

	corev1 "k8s.io/api/core/v1"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
)

// The first pod, found with a blank memory, is adopted as what it is: requested, a first
// start (not a restart, not a recreation), its UID seen; nothing is created or deleted.
func TestScaleRedTeamAdoptsTheFirstPodAsAFirstStart(t *testing.T) {
	p := pod("m-0", func(p *corev1.Pod) { p.Status.Conditions = nil; p.Status.Phase = "Pending" })
	s := Next(Input{Machine: machine(nil), Pods: []corev1.Pod{p}, TemplateHash: hash, Now: t0})
	m := s.Memory
	if m.PodName != "m-0" || m.PodUID != p.UID || !m.PodRequested || m.PodCause != vendingv1alpha1.PodCreated {
		t.Fatalf("adoption: name %q uid %q requested %v cause %q; want m-0, %s, true, Created", m.PodName, m.PodUID,
			m.PodRequested, m.PodCause, p.UID)
	}
	if s.Create || len(s.Delete) > 0 || s.Transition != "" || m.Restarts != 0 || m.Recreations != 0 {
		t.Fatalf("adoption acted: %s restarts %d recreations %d", s, m.Restarts, m.Recreations)
	}
}

// A reset asked for after the first pod was created, before the operator wrote any status
// (FirstStatusDelay: 5 s), is a reset like any other: the pod carries the reset value it was
// created under (empty here), the machine a newer one. Adoption takes the machine's value as
// carried out instead, and the reset is silently lost: no new pod, resets 0.
func TestScaleRedTeamResetBeforeTheFirstStatusIsNotSwallowed(t *testing.T) {
	vm := machine(nil)
	vm.Annotations = map[string]string{AnnotationReset: "r1"}
	p := pod("m-0") // created before the reset: no reset annotation
	s := Next(Input{Machine: vm, Pods: []corev1.Pod{p}, TemplateHash: hash, Now: t0})
	if s.Transition != vendingv1alpha1.PodReset || s.Memory.Resets != 1 || s.Memory.PodName != "m-1" {
		t.Fatalf("reset r1 after m-0 was created: transition %q resets %d pod %q observedReset %q; want Reset, 1, m-1",
			s.Transition, s.Memory.Resets, s.Memory.PodName, s.Memory.ObservedReset)
	}
}

// The same pod, created under the reset value the machine still has, is adopted with no reset.
func TestScaleRedTeamFirstPodUnderTheCurrentResetIsNoReset(t *testing.T) {
	vm := machine(nil)
	vm.Annotations = map[string]string{AnnotationReset: "r1"}
	p := pod("m-0", func(p *corev1.Pod) { p.Annotations[AnnotationReset] = "r1" })
	s := Next(Input{Machine: vm, Pods: []corev1.Pod{p}, TemplateHash: hash, Now: t0})
	if s.Transition != "" || s.Memory.Resets != 0 || s.Memory.PodName != "m-0" || s.Memory.ObservedReset != "r1" {
		t.Fatalf("transition %q resets %d pod %q observedReset %q; want none, 0, m-0, r1", s.Transition, s.Memory.Resets,
			s.Memory.PodName, s.Memory.ObservedReset)
	}
}
