package vendcli

import (
	"archive/zip"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
)

// readZip returns the zip's files and their contents.
func readZip(t *testing.T, path string) map[string]string {
	t.Helper()
	r, err := zip.OpenReader(path)
	must(t, err)
	defer func() { _ = r.Close() }()
	files := map[string]string{}
	for _, f := range r.File {
		rc, err := f.Open()
		must(t, err)
		b, err := io.ReadAll(rc)
		must(t, err)
		_ = rc.Close()
		files[f.Name] = string(b)
	}
	return files
}

// shop is a namespace with a fleet, an escalated machine, its failed pod, claim and service,
// events about the machine and its pod, and what the report must leave out: a Secret, and an
// unrelated database (pod with a literal password in its env, service, event).
func shop(t *testing.T, ns string) {
	t.Helper()
	must(t, k8s.Create(context.Background(), &vendingv1alpha1.VendingFleet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "lobby"},
		Spec: vendingv1alpha1.VendingFleetSpec{Replicas: ptr.To[int32](0)}}))
	machine(t, ns, "coffee", nil, 0, nil, escalated("coffee", "coffee-11", "humans"))
	pod(t, ns, "coffee", "coffee-11", failedPod(10, "Error", 0))
	claim(t, ns, "coffee")
	must(t, k8s.Create(context.Background(), &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Namespace: ns, Name: "coffee.escalated"},
		InvolvedObject: corev1.ObjectReference{APIVersion: vendingv1alpha1.GroupVersion.String(), Kind: "VendingMachine", Namespace: ns, Name: "coffee"},
		Reason:         "Escalated", Message: "OutOfCoffeeBeans after 10 restarts", Type: corev1.EventTypeWarning,
	}))
	must(t, k8s.Create(context.Background(), &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Namespace: ns, Name: "coffee-11.failed"},
		InvolvedObject: corev1.ObjectReference{APIVersion: "v1", Kind: "Pod", Namespace: ns, Name: "coffee-11"},
		Reason:         "Failed", Message: "the vending container exited 10", Type: corev1.EventTypeWarning,
	}))
	must(t, k8s.Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "coffee", Labels: map[string]string{labelMachine: "coffee"}},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 8080}}}}))
	// Someone else's workload in the same namespace.
	must(t, k8s.Create(context.Background(), &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "till-db"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "db", Image: "db",
			Env: []corev1.EnvVar{{Name: "DB_PASSWORD", Value: "hunter2-literal"}}}}}}))
	must(t, k8s.Create(context.Background(), &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "till-db"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 5432}}}}))
	must(t, k8s.Create(context.Background(), &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Namespace: ns, Name: "till-db.pulled"},
		InvolvedObject: corev1.ObjectReference{APIVersion: "v1", Kind: "Pod", Namespace: ns, Name: "till-db"},
		Reason:         "Pulled", Message: "pulled the till database image", Type: corev1.EventTypeNormal,
	}))
	must(t, k8s.Create(context.Background(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "till-password"},
		StringData: map[string]string{"password": "s3cr3t-till"}}))
}

// The report holds the namespace's vending objects, the events about them and the machines' and
// the operator's logs (envtest has no kubelet: the API server answers an unscheduled pod's log
// empty); the Secret and the unrelated database are nowhere in it.
func TestReportCollectsTheVendingObjectsOnly(t *testing.T) {
	ns := namespace(t, "report-shop")
	shop(t, ns)
	op := namespace(t, "report-operator")
	pod(t, op, "", "controller-manager-abc", runningPod())
	operator := &corev1.Pod{}
	must(t, k8s.Get(context.Background(), key(op, "controller-manager-abc"), operator))
	operator.Labels = map[string]string{"control-plane": "controller-manager"}
	must(t, k8s.Update(context.Background(), operator))
	// The operator's container restarted once: its previous run's log is collected too.
	operator.Status.ContainerStatuses[0].RestartCount = 1
	must(t, k8s.Status().Update(context.Background(), operator))

	file := filepath.Join(t.TempDir(), "shop.zip")
	out := mustVend(t, "-n", ns, "report", "-f", file, "--operator-namespace", op)
	files := readZip(t, file)
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	slices.Sort(names)
	want := []string{"README.txt", "events.yaml", "logs/report-shop/coffee-11/vending.log",
		"operator/report-operator/controller-manager-abc/vending.log", "operator/report-operator/controller-manager-abc/vending.previous.log",
		"persistentvolumeclaims.yaml", "pods.yaml", "services.yaml", "vendingfleets.yaml", "vendingmachines.yaml"}
	if !slices.Equal(names, want) {
		t.Errorf("the zip holds %v, want %v", names, want)
	}
	if !strings.Contains(out, "wrote "+file+": 10 files, 0 things not collected") {
		t.Errorf("report printed %q", out)
	}
	for name, content := range map[string]string{
		"vendingmachines.yaml":        "kind: VendingMachine\n",
		"vendingfleets.yaml":          "kind: VendingFleet\n",
		"pods.yaml":                   "name: coffee-11\n",
		"persistentvolumeclaims.yaml": "name: coffee-log\n",
		"services.yaml":               "name: coffee\n",
		"events.yaml":                 "OutOfCoffeeBeans after 10 restarts",
	} {
		if !strings.Contains(files[name], content) {
			t.Errorf("%s lacks %q:\n%s", name, content, files[name])
		}
	}
	for name, content := range files {
		if strings.Contains(content, "s3cr3t") || strings.Contains(content, "till-password") || strings.Contains(content, "kind: Secret") {
			t.Errorf("%s holds the secret", name)
		}
		if strings.Contains(content, "hunter2") || strings.Contains(content, "till-db") {
			t.Errorf("%s holds the unrelated database:\n%s", name, content)
		}
		if strings.Contains(content, "managedFields") {
			t.Errorf("%s holds managed fields", name)
		}
	}
	if !strings.Contains(files["events.yaml"], "the vending container exited 10") {
		t.Errorf("events.yaml lacks the event about the machine's pod:\n%s", files["events.yaml"])
	}
	readme := files["README.txt"]
	for _, want := range []string{
		"Collected (10):", "  vendingmachines.yaml\n", "  logs/report-shop/coffee-11/vending.log\n",
		"Not collected (0):",
	} {
		if !strings.Contains(readme, want) {
			t.Errorf("README.txt lacks %q:\n%s", want, readme)
		}
	}
}

// Someone allowed to read only the vending objects still gets a report: the denials are listed,
// not fatal.
func TestReportListsRBACDenials(t *testing.T) {
	ns := namespace(t, "report-denied")
	shop(t, ns)
	must(t, k8s.Create(context.Background(), &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "vending-reader"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{vendingv1alpha1.GroupVersion.Group},
			Resources: []string{"vendingmachines", "vendingfleets"}, Verbs: []string{"get", "list"}}}}))
	must(t, k8s.Create(context.Background(), &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "alice"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "vending-reader"},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "alice"}}}))

	file := filepath.Join(t.TempDir(), "denied.zip")
	out := mustVend(t, "-n", ns, "--as", "alice", "report", "-f", file)
	files := readZip(t, file)
	if _, ok := files["vendingmachines.yaml"]; !ok || !strings.Contains(out, "5 things not collected") {
		t.Errorf("report as alice printed %q and holds %d files", out, len(files))
	}
	for _, want := range []string{
		"pods.yaml: denied by RBAC: ", "persistentvolumeclaims.yaml: denied by RBAC: ", "services.yaml: denied by RBAC: ",
		"events.yaml: denied by RBAC: ", "the operator's pods (namespace vending-operator-system, control-plane=controller-manager): denied by RBAC: ",
	} {
		if !strings.Contains(files["README.txt"], want) {
			t.Errorf("README.txt lacks %q:\n%s", want, files["README.txt"])
		}
	}
}

// A report of a namespace that does not exist (a typo) is an error, and writes no zip.
func TestReportOfAMissingNamespaceFails(t *testing.T) {
	startEnv(t)
	file := filepath.Join(t.TempDir(), "typo.zip")
	_, err := vend(t, "-n", "no-such-shop", "report", "-f", file)
	if err == nil || !strings.Contains(err.Error(), `namespace "no-such-shop" not found`) {
		t.Errorf("report of a missing namespace: %v", err)
	}
	if _, statErr := os.Stat(file); !os.IsNotExist(statErr) {
		t.Errorf("report of a missing namespace wrote %s (%v)", file, statErr)
	}
}
