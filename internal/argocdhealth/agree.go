package argocdhealth

import (
	"fmt"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

// ConfigMapKey is the argocd-cm key Argo CD reads the health check of group/kind from.
func ConfigMapKey(group, kind string) string {
	return "resource.customizations.health." + group + "_" + kind
}

// Agree says whether kstatus (what Flux and every kstatus-based tool read) and an Argo CD health
// agree where it matters: Failed exactly when Degraded, so both tools stop on the same objects;
// and Current only when Healthy or Suspended, so neither calls done what the other still waits
// for. An object without any condition (no status, or a status without conditions) is the one
// exception, and only in the second rule: kstatus reads it as Current (it has nothing to read),
// while the health check waits for the operator, which always writes Ready.
func Agree(ks status.Status, health string, obj map[string]any) error {
	if (ks == status.FailedStatus) != (health == Degraded) {
		return fmt.Errorf("kstatus %s but Argo CD %s: Failed and Degraded go together", ks, health)
	}
	if ks == status.CurrentStatus && health != Healthy && health != Suspended {
		if conditions, _, _ := unstructured.NestedFieldNoCopy(obj, "status", "conditions"); isEmptyList(conditions) {
			return nil
		}
		return fmt.Errorf("kstatus %s but Argo CD %s: Current is Healthy or Suspended", ks, health)
	}
	return nil
}

// isEmptyList: a value that is no list, or an empty one.
func isEmptyList(v any) bool {
	list, _ := v.([]any)
	return len(list) == 0
}
