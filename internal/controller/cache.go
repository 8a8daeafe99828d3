package controller

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Field indexes of the manager's cache. The cache answers a List with a label selector by
// scanning the whole namespace, so at 10,000 machines in a namespace every pass would read
// 10,000 pods to find its one or two: these indexes make it a map lookup.
const (
	// podsByMachine indexes pods by the machine they belong to (their machine label).
	podsByMachine = "vending.resilience.dev/pods-by-machine"
	// machinesByFleet indexes machines by the fleet they belong to (their fleet label).
	machinesByFleet = "vending.resilience.dev/machines-by-fleet"
)

// CacheOptions is what the manager's cache keeps: only the children this operator made (a
// cluster's other pods, claims and services would cost memory for nothing), without the
// managedFields of anything (a third of a small object, and no reconciler reads them), and of
// each pod only the fields the supervisor reads (TrimPod).
func CacheOptions() cache.Options {
	owned := labels.SelectorFromSet(nil).Add(MachineLabelRequirement())
	return cache.Options{
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}:                   {Label: owned, Transform: TrimPod},
			&corev1.PersistentVolumeClaim{}: {Label: owned},
			&corev1.Service{}:               {Label: owned},
			&corev1.Node{}:                  {Transform: TrimNode},
		},
	}
}

// TrimPod is the cache's transform of a pod: what the supervisor and the status read (metadata,
// the node, the claim, the phase, conditions and container states, the IP) and nothing else. The
// operator never writes a pod from the cache (it deletes with a UID precondition and patches
// finalizers with a JSON patch), so a trimmed copy can never be sent back to the API server.
func TrimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a tombstone
	}
	pod.ManagedFields = nil
	spec := corev1.PodSpec{NodeName: pod.Spec.NodeName}
	for _, v := range pod.Spec.Volumes {
		if v.PersistentVolumeClaim != nil {
			spec.Volumes = append(spec.Volumes, corev1.Volume{Name: v.Name, VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: v.PersistentVolumeClaim}})
		}
	}
	for _, c := range pod.Spec.Containers {
		spec.Containers = append(spec.Containers, corev1.Container{Name: c.Name, Image: c.Image})
	}
	pod.Spec = spec
	st := corev1.PodStatus{Phase: pod.Status.Phase, Reason: pod.Status.Reason, Message: pod.Status.Message,
		Conditions: pod.Status.Conditions, PodIP: pod.Status.PodIP, StartTime: pod.Status.StartTime}
	for _, c := range pod.Status.ContainerStatuses {
		st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{Name: c.Name, State: c.State,
			LastTerminationState: c.LastTerminationState, Ready: c.Ready, RestartCount: c.RestartCount,
			Image: c.Image, ContainerID: c.ContainerID, Started: c.Started})
	}
	pod.Status = st
	return pod, nil
}

// indexByLabel registers a field index of obj's kind by the value of one of its labels.
func indexByLabel(ctx context.Context, mgr ctrl.Manager, obj client.Object, index, label string) error {
	return mgr.GetFieldIndexer().IndexField(ctx, obj, index, func(o client.Object) []string {
		if v := o.GetLabels()[label]; v != "" {
			return []string{v}
		}
		return nil
	})
}

// The manager's defaults for its workers and its client's rate, chosen from hack/scalebench
// (BENCHMARKS.md, "10,000 machines on one operator"): settling is bound by the API server
// whatever the workers (4, 8 and 16 took the same time), while a restart is several round trips
// in sequence, so many failures at once recover sooner with more workers; and the client's rate
// must not be what holds 1,000 restarts back (about 250 requests a second here), which the API
// server's priority and fairness protects itself against anyway.
const (
	DefaultMaxConcurrentReconciles = 16
	DefaultKubeAPIQPS              = 300
	DefaultKubeAPIBurst            = 600
)
