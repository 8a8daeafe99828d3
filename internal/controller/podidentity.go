package controller

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// PodServiceAccount is the ServiceAccount a vending pod runs as, one per namespace with
// machines: its token, bound to the pod, lets the pod's supervisor report its in-place restarts
// on its own pod. The admission policy in config/policy names it.
const PodServiceAccount = "vending-pod"

// DefaultPodClusterRole is the ClusterRole of config/rbac/vending_pod_role.yaml as `make deploy`
// names it (kustomize's namePrefix): patch on pods, narrowed by the admission policy to the
// report annotation of the pod's own pod.
const DefaultPodClusterRole = "vending-operator-vending-pod"

// The operator creates, and never reads, lists, updates or deletes, the pods' ServiceAccount and
// RoleBinding: AlreadyExists is done, so it needs no cache of every ServiceAccount and
// RoleBinding in the cluster. It has no `bind` on ClusterRoles: the API server lets it bind a
// role only if it holds every permission of the role in that namespace (it does: it gets and
// patches pods), so it can never hand the pods more than it has itself.
// +kubebuilder:rbac:groups="",resources=serviceaccounts,verbs=create
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=rolebindings,verbs=create

// EnsurePodIdentity creates, unless they exist, the ServiceAccount PodServiceAccount in the
// namespace and the RoleBinding that grants it clusterRole there. They have no owner: they serve
// every machine of the namespace, and are left behind with the namespace's last machine (as a
// namespace's default ServiceAccount is). An existing object of the name is taken as it is.
func EnsurePodIdentity(ctx context.Context, c client.Client, namespace, clusterRole string) error {
	labels := map[string]string{"app.kubernetes.io/managed-by": "vending-operator"}
	sa := &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Name: PodServiceAccount, Namespace: namespace, Labels: labels},
	}
	if err := c.Create(ctx, sa); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating ServiceAccount %s/%s: %w", namespace, PodServiceAccount, err)
	}
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: PodServiceAccount, Namespace: namespace, Labels: labels},
		Subjects: []rbacv1.Subject{{
			Kind: rbacv1.ServiceAccountKind, Name: PodServiceAccount, Namespace: namespace,
		}},
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: clusterRole},
	}
	if err := c.Create(ctx, rb); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating RoleBinding %s/%s: %w", namespace, PodServiceAccount, err)
	}
	return nil
}
