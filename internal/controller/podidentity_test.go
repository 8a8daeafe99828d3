package controller

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	. "github.com/onsi/gomega"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
)

// What a vending pod's credentials allow, asked of the API server as the pod would ask it: as
// its ServiceAccount, with the pod's name in the extra info as a bound token carries it. The
// RBAC and the admission policy are the files `make deploy` applies.

const podNameExtra = "authentication.kubernetes.io/pod-name"

// The policy's messages, one per check (config/policy/vending_pod_policy.yaml).
const (
	deniedOtherPod     = "a vending pod may write only its own pod"
	deniedSpec         = "may not change its pod's spec"
	deniedLabels       = "may not change its pod's labels"
	deniedAnnotations  = "may change no annotation of its pod but " + contract.AnnotationInPlace
	deniedFinalizers   = "may not change its pod's finalizers"
	deniedOwners       = "may not change its pod's owner references"
	deniedGenerateName = "may not change its pod's generateName"
)

func TestVendingPodMayWriteOnlyItsOwnReport(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	installPodPolicy(t)
	ns := newNamespace(t)
	g.Expect(EnsurePodIdentity(ctx, k8sClient, ns, DefaultPodClusterRole)).To(Succeed())
	g.Expect(EnsurePodIdentity(ctx, k8sClient, ns, DefaultPodClusterRole)).To(Succeed(), "a second call finds both")

	owner := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "owner", Namespace: ns}}
	g.Expect(k8sClient.Create(ctx, owner)).To(Succeed())
	own := createIdentityPod(t, ns, "coffee-0", owner)
	other := createIdentityPod(t, ns, "coffee-1", owner)
	probe := createIdentityPod(t, ns, "probe", owner)
	asOwn := asVendingPod(t, ns, own.Name)

	// The API server enforces a new RoleBinding and a new policy once its informers have them: wait
	// until a write that RBAC lets through and the policy refuses is refused by the policy. Each
	// try changes the label anew, so a try let through before the policy is in force does not
	// turn the next into a no-op.
	asProbe := asVendingPod(t, ns, probe.Name)
	try := 0
	g.Eventually(func() error {
		try++
		return asProbe.Patch(ctx, podRef(probe), mergePatch(`{"metadata":{"labels":{"try":"%d"}}}`, try))
	}).Should(MatchError(ContainSubstring(deniedLabels)), "the RoleBinding and the policy in force")

	// Its own report: written, and written again (the latest report wins).
	for _, restarts := range []int{1, 2} {
		g.Expect(asOwn.Patch(ctx, podRef(own), reportPatch(restarts))).To(Succeed())
		g.Expect(getPod(g, own).Annotations).To(HaveKeyWithValue(contract.AnnotationInPlace, reportValue(restarts)))
	}

	noPod := asVendingPod(t, ns, "")
	refused := []struct {
		name  string
		as    client.Client
		pod   *corev1.Pod
		patch client.Patch
		want  string
	}{
		{"another pod's report", asOwn, other, reportPatch(3), deniedOtherPod},
		{"a token bound to no pod", noPod, own, reportPatch(3), deniedOtherPod},
		{"the report and a label at once", asOwn, own,
			mergePatch(`{"metadata":{"labels":{"x":"y"},"annotations":{%q:"{}"}}}`, contract.AnnotationInPlace), deniedLabels},
		{"a label removed (out of the supervisor's sight)", asOwn, own,
			mergePatch(`{"metadata":{"labels":{"app.kubernetes.io/name":null}}}`), deniedLabels},
		{"another annotation changed", asOwn, own,
			mergePatch(`{"metadata":{"annotations":{%q:"Reset"}}}`, annotationCause), deniedAnnotations},
		{"another annotation added", asOwn, own,
			mergePatch(`{"metadata":{"annotations":{%q:"again"}}}`, annotationReset), deniedAnnotations},
		{"another annotation removed", asOwn, own,
			mergePatch(`{"metadata":{"annotations":{%q:null}}}`, annotationCause), deniedAnnotations},
		{"the finalizer removed", asOwn, own, jsonPatch(`[{"op":"remove","path":"/metadata/finalizers"}]`), deniedFinalizers},
		{"the owner removed", asOwn, own, jsonPatch(`[{"op":"remove","path":"/metadata/ownerReferences"}]`), deniedOwners},
		{"a deadline set", asOwn, own, mergePatch(`{"spec":{"activeDeadlineSeconds":1}}`), deniedSpec},
		{"the image changed", asOwn, own,
			client.RawPatch(types.StrategicMergePatchType, []byte(`{"spec":{"containers":[{"name":"vending","image":"other"}]}}`)), deniedSpec},
		{"generateName set", asOwn, own, mergePatch(`{"metadata":{"generateName":"coffee-"}}`), deniedGenerateName},
	}
	for _, c := range refused {
		err := c.as.Patch(ctx, podRef(c.pod), c.patch)
		g.Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%s: %v", c.name, err)
		g.Expect(err).To(MatchError(ContainSubstring(c.want)), c.name)
	}

	// RBAC: patch of pods, nothing else.
	otherNS := newNamespace(t)
	g.Expect(EnsurePodIdentity(ctx, k8sClient, otherNS, DefaultPodClusterRole)).To(Succeed())
	fromOtherNS := asServiceAccount(t, otherNS, PodServiceAccount, own.Name)
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "coffee", Namespace: ns}}
	g.Expect(k8sClient.Create(ctx, secret)).To(Succeed())
	for name, call := range map[string]func() error{
		"create a pod": func() error {
			return asOwn.Create(ctx, identityPod(ns, "coffee-2", owner))
		},
		"read its pod": func() error { return asOwn.Get(ctx, client.ObjectKeyFromObject(own), &corev1.Pod{}) },
		"read another pod": func() error {
			return asOwn.Get(ctx, client.ObjectKeyFromObject(other), &corev1.Pod{})
		},
		"delete its pod": func() error { return asOwn.Delete(ctx, podRef(own)) },
		"list pods":      func() error { return asOwn.List(ctx, &corev1.PodList{}, client.InNamespace(ns)) },
		"update its pod": func() error { return asOwn.Update(ctx, getPod(g, own)) },
		"patch its status": func() error {
			return asOwn.Status().Patch(ctx, podRef(own), mergePatch(`{"status":{"message":"x"}}`))
		},
		"evict its pod": func() error {
			return asOwn.SubResource("eviction").Create(ctx, podRef(own), &policyv1.Eviction{})
		},
		"get its machine": func() error {
			return asOwn.Get(ctx, client.ObjectKey{Namespace: ns, Name: "coffee"}, &vendingv1alpha1.VendingMachine{})
		},
		"patch its machine": func() error {
			return asOwn.Patch(ctx, newMachine(ns, "coffee", nil), mergePatch(`{"spec":{"paused":true}}`))
		},
		"list secrets": func() error { return asOwn.List(ctx, &corev1.SecretList{}, client.InNamespace(ns)) },
		"get a secret": func() error {
			return asOwn.Get(ctx, client.ObjectKeyFromObject(secret), &corev1.Secret{})
		},
		"patch a pod of another namespace": func() error {
			return fromOtherNS.Patch(ctx, podRef(own), reportPatch(3))
		},
	} {
		err := call()
		g.Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%s: %v", name, err)
		g.Expect(err).To(MatchError(ContainSubstring("cannot ")), "%s: refused by RBAC", name)
	}

	// Nothing refused changed anything: the pods are as created, but for the own pod's report.
	after := getPod(g, own)
	g.Expect(after.Annotations).To(HaveKeyWithValue(contract.AnnotationInPlace, reportValue(2)))
	delete(after.Annotations, contract.AnnotationInPlace)
	g.Expect(after.Labels).To(Equal(own.Labels))
	g.Expect(after.Annotations).To(Equal(own.Annotations))
	g.Expect(after.Finalizers).To(Equal(own.Finalizers))
	g.Expect(after.OwnerReferences).To(Equal(own.OwnerReferences))
	g.Expect(after.GenerateName).To(Equal(own.GenerateName))
	g.Expect(after.Spec).To(Equal(own.Spec))
	g.Expect(getPod(g, other).Annotations).NotTo(HaveKey(contract.AnnotationInPlace))

	// The policy holds a vending pod's credentials, nobody else's: the operator (here the suite's
	// admin) still writes what it likes.
	g.Expect(k8sClient.Patch(ctx, podRef(own), mergePatch(`{"metadata":{"labels":{"x":"y"}}}`))).To(Succeed())
}

// The operator's own RBAC (config/rbac/role.yaml, as `make manifests` generates it from the
// markers) is enough to give a namespace the pods' identity, and not enough to bind any other
// role with it.
func TestOperatorMayGivePodsTheirIdentityOnly(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	installPodPolicy(t)
	ns := newNamespace(t)

	role := &rbacv1.ClusterRole{}
	decodeConfig(t, "config/rbac/role.yaml", role)
	role.Name = "vending-operator-manager-role"
	g.Expect(client.IgnoreAlreadyExists(k8sClient.Create(ctx, role))).To(Succeed())
	operatorNS := "vending-operator-system"
	g.Expect(client.IgnoreAlreadyExists(k8sClient.Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "vending-operator-manager-rolebinding"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "controller-manager", Namespace: operatorNS}},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
	}))).To(Succeed())
	asOperator := asServiceAccount(t, operatorNS, "controller-manager", "")
	// The RBAC authorizer sees a new binding through its informers: wait for it.
	g.Eventually(func() error {
		return asOperator.List(ctx, &corev1.PodList{}, client.InNamespace(ns))
	}).Should(Succeed(), "the operator's ClusterRoleBinding in force")

	g.Expect(EnsurePodIdentity(ctx, asOperator, ns, DefaultPodClusterRole)).To(Succeed())
	g.Expect(EnsurePodIdentity(ctx, asOperator, ns, DefaultPodClusterRole)).To(Succeed(), "a second call finds both")
	sa := &corev1.ServiceAccount{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: PodServiceAccount}, sa)).To(Succeed())
	g.Expect(sa.Labels).To(HaveKeyWithValue("app.kubernetes.io/managed-by", "vending-operator"))
	g.Expect(sa.OwnerReferences).To(BeEmpty())
	rb := &rbacv1.RoleBinding{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: PodServiceAccount}, rb)).To(Succeed())
	g.Expect(rb.Labels).To(HaveKeyWithValue("app.kubernetes.io/managed-by", "vending-operator"))
	g.Expect(rb.OwnerReferences).To(BeEmpty())
	g.Expect(rb.Subjects).To(Equal([]rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: PodServiceAccount, Namespace: ns}}))
	g.Expect(rb.RoleRef).To(Equal(rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: DefaultPodClusterRole}))

	// Binding cluster-admin would hand out what the operator does not hold.
	err := EnsurePodIdentity(ctx, asOperator, newNamespace(t), "cluster-admin")
	g.Expect(apierrors.IsForbidden(err)).To(BeTrue(), "binding cluster-admin: %v", err)
}

// installPodPolicy creates what `make deploy` installs for vending pods: their ClusterRole (under
// its deployed name, as EnsurePodIdentity binds it), the admission policy and its binding. They
// are cluster-wide and constrain only vending pods' ServiceAccounts, so they stay for the suite.
func installPodPolicy(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	role := &rbacv1.ClusterRole{}
	decodeConfig(t, "config/rbac/vending_pod_role.yaml", role)
	role.Name = DefaultPodClusterRole
	policy := &admissionregistrationv1.ValidatingAdmissionPolicy{}
	decodeConfig(t, "config/policy/vending_pod_policy.yaml", policy)
	binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{}
	decodeConfig(t, "config/policy/vending_pod_policy_binding.yaml", binding)
	for _, obj := range []client.Object{role, policy, binding} {
		if err := k8sClient.Create(ctx, obj); client.IgnoreAlreadyExists(err) != nil {
			t.Fatalf("creating %T %s: %v", obj, obj.GetName(), err)
		}
	}
}

// decodeConfig reads one object from a YAML file of config/, strictly (a misspelt field fails).
func decodeConfig(t *testing.T, path string, into any) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", path))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(data, into); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// asVendingPod is a client with the credentials of a vending pod of the namespace: its
// ServiceAccount, with the token bound to the named pod ("": a token bound to no pod).
func asVendingPod(t *testing.T, ns, pod string) client.Client {
	return asServiceAccount(t, ns, PodServiceAccount, pod)
}

// asServiceAccount impersonates a ServiceAccount as the API server authenticates its token: the
// user, its groups, and, for a token bound to a pod, the pod's name in the extra info.
func asServiceAccount(t *testing.T, ns, name, pod string) client.Client {
	t.Helper()
	impersonate := rest.ImpersonationConfig{
		UserName: fmt.Sprintf("system:serviceaccount:%s:%s", ns, name),
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
	}
	if pod != "" {
		impersonate.Extra = map[string][]string{podNameExtra: {pod}}
	}
	c := rest.CopyConfig(cfg)
	c.Impersonate = impersonate
	cl, err := client.New(c, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// identityPod is a pod carrying what a vending pod must not change: labels, an annotation, the
// supervisor's finalizer, an owner. It has no machine label, so the suite's operator ignores it.
func identityPod(ns, name string, owner *corev1.ConfigMap) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: ns,
			Labels:      map[string]string{"app.kubernetes.io/name": "vendingmachine"},
			Annotations: map[string]string{annotationCause: "Created"},
			Finalizers:  []string{"vending.resilience.dev/supervised"},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "ConfigMap", Name: owner.Name, UID: owner.UID,
			}},
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: PodServiceAccount,
			Containers:         []corev1.Container{{Name: "vending", Image: DefaultVendingImage}},
		},
	}
}

func createIdentityPod(t *testing.T, ns, name string, owner *corev1.ConfigMap) *corev1.Pod {
	t.Helper()
	pod := identityPod(ns, name, owner)
	if err := k8sClient.Create(context.Background(), pod); err != nil {
		t.Fatalf("creating pod %s: %v", name, err)
	}
	return pod
}

func getPod(g Gomega, pod *corev1.Pod) *corev1.Pod {
	out := &corev1.Pod{}
	g.Expect(k8sClient.Get(context.Background(), client.ObjectKeyFromObject(pod), out)).To(Succeed())
	return out
}

// podRef names a pod for a write, so that what a refused write sends is only its patch.
func podRef(pod *corev1.Pod) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name}}
}

func mergePatch(format string, args ...any) client.Patch {
	return client.RawPatch(types.MergePatchType, fmt.Appendf(nil, format, args...))
}

func jsonPatch(patch string) client.Patch {
	return client.RawPatch(types.JSONPatchType, []byte(patch))
}

func reportValue(restarts int) string { return fmt.Sprintf(`{"restarts":%d}`, restarts) }

// reportPatch is what a vending pod sends: its report annotation, nothing else.
func reportPatch(restarts int) client.Patch {
	return mergePatch(`{"metadata":{"annotations":{%q:%q}}}`, contract.AnnotationInPlace, reportValue(restarts))
}
