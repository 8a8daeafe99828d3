package controller

import (
	"context"
	"testing"

	. "github.com/onsi/gomega"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
)

// A machine whose claim or pod the API server refuses to create (here an admission policy; as
// well RBAC or a quota) says so where people and tools look: Ready=False and Stalled=True with
// the API server's words (kstatus Failed, not InProgress until a pipeline's timeout), and one
// Warning event. It said nothing: the refusal was only in the operator's log.
func TestARefusedChildIsSaid(t *testing.T) {
	for _, kind := range []string{"persistentvolumeclaims", "pods"} {
		t.Run(kind, func(t *testing.T) {
			g := NewWithT(t)
			ns := newNamespace(t)
			undo := refuse(g, ns, kind)
			vm := createMachine(t, ns, "coffee", nil)
			g.Eventually(func(g Gomega) {
				got := getMachine(g, vm)
				for _, ty := range []string{vendingv1alpha1.ConditionReady, vendingv1alpha1.ConditionStalled} {
					c := condition(got, ty)
					g.Expect(c).NotTo(BeNil(), ty)
					g.Expect(c.Reason).To(Equal(ReasonCreateRefused), ty)
					g.Expect(c.Message).To(ContainSubstring("not allowed here"), ty)
				}
				g.Expect(kstatusOf(g, vm).Status).To(Equal(status.FailedStatus))
				g.Expect(eventReasons(g, vm)).To(ContainElement(ReasonCreateRefused))
			}).Should(Succeed())

			// Allowed again: the machine comes up and Stalled goes.
			undo()
			g.Eventually(func(g Gomega) {
				pods := &corev1.PodList{}
				g.Expect(k8sClient.List(context.Background(), pods, client.InNamespace(ns))).To(Succeed())
				g.Expect(pods.Items).NotTo(BeEmpty())
				kubeletRun(g, &pods.Items[len(pods.Items)-1])
			}).Should(Succeed())
			g.Eventually(func(g Gomega) {
				got := getMachine(g, vm)
				g.Expect(condition(got, vendingv1alpha1.ConditionStalled)).To(BeNil())
				g.Expect(condition(got, vendingv1alpha1.ConditionReady).Status).To(Equal(metav1.ConditionTrue))
			}).Should(Succeed())
			refusals := 0
			for _, r := range eventReasons(g, vm) {
				if r == ReasonCreateRefused {
					refusals++
				}
			}
			g.Expect(refusals).To(Equal(1), "one event for the refusal, not one per retry")
		})
	}
}

// refuse makes the API server refuse to create resource in ns (a ValidatingAdmissionPolicy,
// as a cluster's policy engine would), and returns how to undo it.
func refuse(g Gomega, ns, res string) func() {
	ctx := context.Background()
	name := "refuse-" + res + "-" + ns
	fail := admissionv1.Fail
	policy := &admissionv1.ValidatingAdmissionPolicy{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionv1.ValidatingAdmissionPolicySpec{FailurePolicy: &fail,
			MatchConstraints: &admissionv1.MatchResources{ResourceRules: []admissionv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionv1.RuleWithOperations{Operations: []admissionv1.OperationType{admissionv1.Create},
					Rule: admissionv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{res}}}}}},
			Validations: []admissionv1.Validation{{Expression: "false", Message: res + " are not allowed here"}}}}
	binding := &admissionv1.ValidatingAdmissionPolicyBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{PolicyName: name,
			ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
			MatchResources: &admissionv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{
				MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}}}}}
	g.Expect(k8sClient.Create(ctx, policy)).To(Succeed())
	g.Expect(k8sClient.Create(ctx, binding)).To(Succeed())
	probe := func() client.Object {
		if res == "pods" {
			return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "probe"},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "i"}}}}
		}
		return &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "probe"},
			Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}}}
	}
	// The policy takes a moment to load: wait until it refuses.
	g.Eventually(func() error { return k8sClient.Create(ctx, probe(), client.DryRunAll) }).ShouldNot(Succeed())
	return func() {
		g.Expect(k8sClient.Delete(ctx, binding)).To(Succeed())
		g.Expect(k8sClient.Delete(ctx, policy)).To(Succeed())
		g.Eventually(func() error { return k8sClient.Create(ctx, probe(), client.DryRunAll) }).Should(Succeed())
	}
}
