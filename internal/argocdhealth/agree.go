package argocdhealth

import (
	"fmt"

	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

// ConfigMapKey is the argocd-cm key Argo CD reads the health check of group/kind from.
func ConfigMapKey(group, kind string) string {
	return "resource.customizations.health." + group + "_" + kind
}

// Agree says whether kstatus (what Flux and every kstatus-based tool read) and an Argo CD health
// agree where it matters: Failed exactly when Degraded, so both tools stop on the same objects;
// and Current only when Healthy or Suspended, so neither calls done what the other still waits
// for. An object without any status is the one exception, and only in the second rule: kstatus
// reads it as Current (it has nothing to read), while the health check waits for the operator.
func Agree(ks status.Status, health string, obj map[string]any) error {
	if (ks == status.FailedStatus) != (health == Degraded) {
		return fmt.Errorf("kstatus %s but Argo CD %s: Failed and Degraded go together", ks, health)
	}
	if ks == status.CurrentStatus && health != Healthy && health != Suspended {
		if _, hasStatus := obj["status"]; !hasStatus {
			return nil
		}
		return fmt.Errorf("kstatus %s but Argo CD %s: Current is Healthy or Suspended", ks, health)
	}
	return nil
}
