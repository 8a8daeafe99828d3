package argocdhealth

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
)

// root is Argo CD's resource_customizations layout in this repository.
const root = "../../config/argocd/resource_customizations"

// customizations are the <group>/<Kind> directories under root.
func customizations(t *testing.T) []string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(root, "*", "*"))
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) == 0 {
		t.Fatalf("no customization under %s", root)
	}
	return dirs
}

// Every case of every health_test.yaml, run as Argo CD runs it, shows the health it names.
func TestHealthChecks(t *testing.T) {
	for _, dir := range customizations(t) {
		script, err := ReadScript(dir)
		if err != nil {
			t.Fatal(err)
		}
		tests, err := ReadTests(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range tests.Tests {
			t.Run(filepath.Base(dir)+"/"+tc.InputPath, func(t *testing.T) {
				obj, err := ReadObject(filepath.Join(dir, tc.InputPath))
				if err != nil {
					t.Fatal(err)
				}
				got, err := Run(script, obj)
				if err != nil {
					t.Fatal(err)
				}
				if got != tc.HealthStatus {
					t.Errorf("health %+v, want %+v", got, tc.HealthStatus)
				}
			})
		}
	}
}

// Every kind of the API has a health check, and every health check has tests: a case for each
// health it can show, and no fixture that no case reads.
func TestEveryKindHasATestedHealthCheck(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := vendingv1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	apiPkg := reflect.TypeFor[vendingv1alpha1.VendingMachine]().PkgPath()
	var want []string
	for kind, typ := range scheme.KnownTypes(vendingv1alpha1.GroupVersion) {
		if typ.PkgPath() == apiPkg && !strings.HasSuffix(kind, "List") {
			want = append(want, filepath.Join(root, vendingv1alpha1.GroupVersion.Group, kind))
		}
	}
	got := customizations(t)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("customization directories %v, want one per kind: %v", got, want)
	}
	for _, dir := range got {
		if _, err := ReadScript(dir); err != nil {
			t.Error(err)
		}
		tests, err := ReadTests(dir)
		if err != nil {
			t.Error(err)
			continue
		}
		shown := map[string]bool{}
		read := map[string]bool{}
		for _, tc := range tests.Tests {
			shown[tc.HealthStatus.Status] = true
			read[filepath.Clean(tc.InputPath)] = true
		}
		for _, s := range []string{Healthy, Progressing, Degraded, Suspended} {
			if !shown[s] {
				t.Errorf("%s: no case shows %s", dir, s)
			}
		}
		fixtures, err := filepath.Glob(filepath.Join(dir, "testdata", "*"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fixtures {
			rel, _ := filepath.Rel(dir, f)
			if !read[rel] {
				t.Errorf("%s: no case of %s reads it", f, TestsFile)
			}
		}
	}
}

// The ready-made argocd-cm patch holds each health.lua byte for byte, under the key Argo CD
// reads it from, and no other health check.
func TestArgoCMPatchHoldsTheScripts(t *testing.T) {
	b, err := os.ReadFile("../../config/argocd/argocd-cm-patch.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm corev1.ConfigMap
	if err := yaml.UnmarshalStrict(b, &cm); err != nil {
		t.Fatal(err)
	}
	if cm.Name != "argocd-cm" {
		t.Errorf("the patch is for ConfigMap %q, want argocd-cm", cm.Name)
	}
	want := map[string]string{}
	for _, dir := range customizations(t) {
		script, err := ReadScript(dir)
		if err != nil {
			t.Fatal(err)
		}
		want[ConfigMapKey(filepath.Base(filepath.Dir(dir)), filepath.Base(dir))] = script
	}
	for key, script := range want {
		if cm.Data[key] != script {
			t.Errorf("argocd-cm-patch.yaml %s differs from its health.lua (copy the file into the patch)", key)
		}
	}
	for key := range cm.Data {
		if _, ok := want[key]; !ok && strings.HasPrefix(key, "resource.customizations.health.") {
			t.Errorf("argocd-cm-patch.yaml has %s, with no health.lua for it", key)
		}
	}
}

// kstatus (Flux, kpt, cli-utils) and the Argo CD health agree on every fixture where it matters:
// kstatus Failed exactly when Argo CD shows Degraded, and kstatus Current only where Argo CD
// shows Healthy or Suspended. The one exception is an object the operator has not yet written a
// condition to, which kstatus cannot tell from a current one (it reads no condition as Current):
// no status at all (the CRDs default status.observedGeneration to 0, so the API server never
// serves such a machine or fleet), or a status without conditions (the operator writes Ready
// with its first status).
func TestKstatusAgreesWithArgoCD(t *testing.T) {
	for _, dir := range customizations(t) {
		script, err := ReadScript(dir)
		if err != nil {
			t.Fatal(err)
		}
		tests, err := ReadTests(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range tests.Tests {
			obj, err := ReadObject(filepath.Join(dir, tc.InputPath))
			if err != nil {
				t.Fatal(err)
			}
			argo, err := Run(script, obj)
			if err != nil {
				t.Fatal(err)
			}
			// kstatus reads the object as client-go decodes it (integers as int64).
			u := &unstructured.Unstructured{}
			if err := u.UnmarshalJSON(mustJSON(t, filepath.Join(dir, tc.InputPath))); err != nil {
				t.Fatal(err)
			}
			ks, err := status.Compute(u)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%-15s %-40s kstatus %-10s argocd %s", filepath.Base(dir), tc.InputPath, ks.Status, argo.Status)
			if err := Agree(ks.Status, argo.Status, obj); err != nil {
				t.Errorf("%s/%s: %v", filepath.Base(dir), tc.InputPath, err)
			}
		}
	}
}

func mustJSON(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// The lua state is Argo CD's for argocd-cm scripts: the scripts cannot lean on a library
// Argo CD does not open.
func TestRunOpensWhatArgoCDOpens(t *testing.T) {
	obj := map[string]any{"metadata": map[string]any{"generation": int64(3)}}
	for _, tc := range []struct {
		name, script string
		want         Status
	}{
		{"no string library", `return {status = "Healthy", message = type(string)}`, Status{Healthy, "nil"}},
		{"no math library", `return {status = "Healthy", message = type(math)}`, Status{Healthy, "nil"}},
		{"no io library", `return {status = "Healthy", message = type(io)}`, Status{Healthy, "nil"}},
		{"no os global", `return {status = "Healthy", message = type(os)}`, Status{Healthy, "nil"}},
		{"a safe os through require", `local os = require("os"); return {status = "Healthy", message = type(os.time) .. type(os.date) .. type(os.exit)}`,
			Status{Healthy, "functionfunctionnil"}},
		{"table library", `local t = {"a", "b"}; return {status = "Healthy", message = table.concat(t, ",")}`, Status{Healthy, "a,b"}},
		{"int64 numbers", `return {status = "Healthy", message = "generation " .. obj.metadata.generation}`, Status{Healthy, "generation 3"}},
		{"a status Argo CD does not know", `return {status = "Fine"}`, Status{Unknown, invalidStatus}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Run(tc.script, obj)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	for _, script := range []string{`return "Healthy"`, `local x = 1`, `return {}`, `return {status = 1}`, `error("boom")`} {
		if got, err := Run(script, obj); err == nil {
			t.Errorf("%s: %+v, want an error as Argo CD gives", script, got)
		}
	}
}

// An object being deleted is Progressing, "Pending deletion", whatever its script says, as in
// Argo CD; a sync hook Argo CD holds with its finalizer is the exception.
func TestRunShowsPendingDeletion(t *testing.T) {
	script := `return {status = "Degraded", message = "the script ran"}`
	for _, tc := range []struct {
		name     string
		metadata map[string]any
		want     Status
	}{
		{"not deleted", map[string]any{"finalizers": []any{hookFinalizer}}, Status{Degraded, "the script ran"}},
		{"deleted", map[string]any{"deletionTimestamp": "2026-11-30T00:20:00Z", "finalizers": []any{"foregroundDeletion"}},
			Status{Progressing, "Pending deletion"}},
		{"a deleted hook", map[string]any{"deletionTimestamp": "2026-11-30T00:20:00Z", "finalizers": []any{hookFinalizer}},
			Status{Degraded, "the script ran"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Run(script, map[string]any{"metadata": tc.metadata})
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestMergeKeepsHandWrittenCases(t *testing.T) {
	tests := Tests{Tests: []Test{
		{Status{Progressing, "hand"}, "testdata/no-status.yaml"},
		{Status{Healthy, "old"}, "testdata/ready.yaml"},
	}}
	got := Merge(tests, []Test{{Status{Healthy, "live"}, "testdata/ready.yaml"}, {Status{Degraded, "live"}, "testdata/escalated.yaml"}})
	want := Tests{Tests: []Test{
		{Status{Progressing, "hand"}, "testdata/no-status.yaml"},
		{Status{Healthy, "live"}, "testdata/ready.yaml"},
		{Status{Degraded, "live"}, "testdata/escalated.yaml"},
	}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

// Agree's one exception is an object without any condition, and only for kstatus Current.
func TestAgree(t *testing.T) {
	noStatus := map[string]any{"metadata": map[string]any{}}
	noConditions := map[string]any{"status": map[string]any{"observedGeneration": int64(1), "conditions": []any{}}}
	withStatus := map[string]any{"status": map[string]any{"conditions": []any{map[string]any{"type": "Ready", "status": "False"}}}}
	for _, tc := range []struct {
		ks     status.Status
		health string
		obj    map[string]any
		agree  bool
	}{
		{status.FailedStatus, Degraded, withStatus, true},
		{status.FailedStatus, Progressing, withStatus, false},
		{status.InProgressStatus, Degraded, withStatus, false},
		{status.CurrentStatus, Degraded, noStatus, false},
		{status.CurrentStatus, Healthy, withStatus, true},
		{status.CurrentStatus, Suspended, withStatus, true},
		{status.CurrentStatus, Progressing, withStatus, false},
		{status.CurrentStatus, Progressing, noStatus, true},
		{status.CurrentStatus, Progressing, noConditions, true},
		{status.FailedStatus, Progressing, noConditions, false},
		{status.InProgressStatus, Healthy, withStatus, true},
	} {
		if err := Agree(tc.ks, tc.health, tc.obj); (err == nil) != tc.agree {
			t.Errorf("Agree(%s, %s, %v) = %v, want agreement %v", tc.ks, tc.health, tc.obj, err, tc.agree)
		}
	}
}
