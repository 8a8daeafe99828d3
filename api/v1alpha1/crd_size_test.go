package v1alpha1

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"sigs.k8s.io/yaml"
)

// Client-side `kubectl apply` (and tools that still use it) stores the whole object in the
// kubectl.kubernetes.io/last-applied-configuration annotation, and all of an object's
// annotations together may hold 256 KiB. A CRD past that can be installed only server-side.
// Keep ours under half of it, so both ways of applying dist/install.yaml work and a schema can
// grow.
func TestCRDsFitTheClientSideApplyAnnotation(t *testing.T) {
	const limit = 256 << 10
	files, err := filepath.Glob("../../config/crd/bases/*.yaml")
	if err != nil || len(files) != 2 {
		t.Fatalf("want the 2 CRDs in config/crd/bases, got %v (%v)", files, err)
	}
	for _, f := range files {
		y, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var obj map[string]any
		if err := yaml.Unmarshal(y, &obj); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		j, _ := json.Marshal(obj)
		t.Logf("%s: %d bytes as the last-applied annotation would store it (limit %d)", filepath.Base(f), len(j), limit)
		if len(j) > limit/2 {
			t.Errorf("%s is %d bytes: over half the %d bytes client-side apply can annotate", f, len(j), limit)
		}
	}
}
