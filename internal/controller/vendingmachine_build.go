package controller

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/podsupervisor"
	"github.com/vendingfleet/vending-operator/internal/supervisor"
)

// Pure builders: names derive from the machine, so a stale cache yields AlreadyExists, never a
// duplicate.

// pvcName is the claim of the machine's event log: <machine>-log, or <machine>-log-<n> once a
// fleet has quarantined n corrupt logs of the machine (annotationLogGeneration).
func pvcName(vm *vendingv1alpha1.VendingMachine) string {
	if n, err := strconv.Atoi(vm.Annotations[annotationLogGeneration]); err == nil && n > 0 {
		return fmt.Sprintf("%s-log-%d", vm.Name, n)
	}
	return vm.Name + "-log"
}

func serviceName(vm *vendingv1alpha1.VendingMachine) string { return vm.Name }

func selectorLabels(vm *vendingv1alpha1.VendingMachine) map[string]string {
	return map[string]string{labelMachine: vm.Name}
}

// commonLabels are the labels of every child. A fleet's machines pass their fleet label on, so
// the fleet's spread constraints and disruption budget can select their pods.
func commonLabels(vm *vendingv1alpha1.VendingMachine) map[string]string {
	labels := map[string]string{
		"app.kubernetes.io/name":       "vendingmachine",
		"app.kubernetes.io/instance":   vm.Name,
		"app.kubernetes.io/managed-by": "vending-operator",
		labelMachine:                   vm.Name,
	}
	if fleet, ok := vm.Labels[LabelFleet]; ok {
		labels[LabelFleet] = fleet
	}
	return labels
}

func ownerRef(vm *vendingv1alpha1.VendingMachine) metav1.OwnerReference {
	return *metav1.NewControllerRef(vm, vendingv1alpha1.GroupVersion.WithKind("VendingMachine"))
}

// buildPVC is the claim that holds the machine's event log. With whenDeleted=Retain it has no
// owner, so the garbage collector leaves it (and the log, the machine's truth) when the machine
// goes; a machine created again with the same name resumes that log.
func buildPVC(vm *vendingv1alpha1.VendingMachine) *corev1.PersistentVolumeClaim {
	size := resource.MustParse("1Gi")
	if vm.Spec.Storage.Size != nil {
		size = *vm.Spec.Storage.Size
	}
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: pvcName(vm), Namespace: vm.Namespace, Labels: commonLabels(vm)},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: vm.Spec.Storage.StorageClassName,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: size}},
		},
	}
	if vm.Spec.Storage.WhenDeleted == vendingv1alpha1.DeletePVC {
		pvc.OwnerReferences = []metav1.OwnerReference{ownerRef(vm)}
	}
	return pvc
}

func buildService(vm *vendingv1alpha1.VendingMachine) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: serviceName(vm), Namespace: vm.Namespace, Labels: commonLabels(vm),
			OwnerReferences: []metav1.OwnerReference{ownerRef(vm)}},
		Spec: corev1.ServiceSpec{
			// Headless: the name resolves to the machine's one pod, as a StatefulSet's pods are
			// named. A cluster IP would cost the API server an allocation that grows with the
			// Services it holds (half its time at 10,000 machines) and every node's proxy a rule
			// per machine, to balance over a single pod. The API server's service proxy and
			// kubectl port-forward reach a headless Service as any other.
			ClusterIP: corev1.ClusterIPNone,
			Selector:  selectorLabels(vm),
			Ports: []corev1.ServicePort{{Name: "http", Port: contract.Port, Protocol: corev1.ProtocolTCP,
				TargetPort: intstr.FromString("http")}},
		},
	}
}

func fieldEnv(name, path string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
}

func endpoint(vm *vendingv1alpha1.VendingMachine) string {
	return fmt.Sprintf("http://%s.%s.svc:%d", serviceName(vm), vm.Namespace, contract.Port)
}

func menuArg(menu []vendingv1alpha1.Beverage) string {
	parts := make([]string, 0, len(menu))
	for _, b := range menu {
		p := fmt.Sprintf("%s=%d", b.Name, b.Price)
		if b.UsesMilk {
			p += ":milk"
		}
		parts = append(parts, p)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

// templateHash hashes what the pod is built from, so a spec change is seen on a running pod.
func templateHash(vm *vendingv1alpha1.VendingMachine, image string) string {
	b, _ := json.Marshal(struct {
		Image     string
		Menu      string
		Inventory vendingv1alpha1.Inventory
		Faults    bool
		Resources *corev1.ResourceRequirements
		Spread    []corev1.TopologySpreadConstraint `json:",omitempty"`
		// The in-pod supervisor applies the policy it was started with: a new policy needs a
		// new pod for both levels to mean the same thing.
		Supervision []string
	}{image, menuArg(vm.Spec.Menu), vm.Spec.Inventory, vm.Spec.EnableFaultInjection, vm.Spec.Resources,
		vm.Spec.TopologySpreadConstraints, supervisionSettings(vm, nil).Args()})
	h := fnv.New64a()
	_, _ = h.Write(b)
	return strconv.FormatUint(h.Sum64(), 36)
}

// supervisionSettings are the in-pod supervisor's flags: the machine's policy, its identity (the
// backoff's jitter, as the operator seeds it) and the restarts in the window so far, so that
// the pod and the operator spend one restart budget.
func supervisionSettings(vm *vendingv1alpha1.VendingMachine, earlier []metav1.Time) podsupervisor.Settings {
	s := podsupervisor.Settings{Policy: supervisor.PolicyOf(vm), Seed: vm.Namespace + "/" + vm.Name}
	for _, t := range earlier {
		// As the status keeps it (to the second): the pod counts the window as the operator does.
		s.Earlier = append(s.Earlier, t.Rfc3339Copy().Time)
	}
	return s
}

// buildPod is the machine's pod named name (an incarnation the supervisor reserved in status).
// restartPolicy is Never: every restart of the pod is the operator's decision, recorded in
// status, not the kubelet's. Inside it, PID 1 is the in-pod supervisor (vendingpod
// --supervise), which restarts the vending process in place by the same policy, counting
// earlier, the machine's restarts in the window.
func buildPod(vm *vendingv1alpha1.VendingMachine, image, name string, cause vendingv1alpha1.PodCause,
	earlier []metav1.Time) *corev1.Pod {
	labels := commonLabels(vm)
	labels[labelIncarnation] = strings.TrimPrefix(name, vm.Name+"-")
	annotations := map[string]string{annotationTemplateHash: templateHash(vm, image), annotationCause: string(cause)}
	if v, ok := vm.Annotations[annotationReset]; ok {
		annotations[annotationReset] = v
	}
	args := []string{
		"--supervise",
		"--data-dir=/data",
		"--menu=" + menuArg(vm.Spec.Menu),
		fmt.Sprintf("--beans=%d", max(vm.Spec.Inventory.Beans, 1)),
		fmt.Sprintf("--milk=%d", ptr.Deref(vm.Spec.Inventory.Milk, 50)),
	}
	if vm.Spec.EnableFaultInjection {
		args = append(args, "--enable-faults")
	}
	args = append(args, supervisionSettings(vm, earlier).Args()...)
	resources := corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("32Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
	}
	if vm.Spec.Resources != nil {
		resources = *vm.Spec.Resources
	}
	httpGet := func(path string) corev1.ProbeHandler {
		return corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromString("http")}}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: vm.Namespace, Labels: labels, Annotations: annotations,
			Finalizers:      []string{supervisor.Finalizer},
			OwnerReferences: []metav1.OwnerReference{ownerRef(vm)},
		},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TopologySpreadConstraints:     vm.Spec.TopologySpreadConstraints,
			TerminationGracePeriodSeconds: ptr.To[int64](5), // crash-only: SIGTERM ends it at once
			EnableServiceLinks:            ptr.To(false),
			// The token (bound to this pod) lets the in-pod supervisor report its restarts on
			// this pod's annotation, and nothing else: see config/policy and docs/design.md.
			ServiceAccountName:           PodServiceAccount,
			AutomountServiceAccountToken: ptr.To(true),
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   ptr.To(true),
				RunAsUser:      ptr.To[int64](65532),
				RunAsGroup:     ptr.To[int64](65532),
				FSGroup:        ptr.To[int64](65532),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name:            "vending",
				Image:           image,
				ImagePullPolicy: corev1.PullIfNotPresent,
				Args:            args,
				Env: []corev1.EnvVar{fieldEnv("POD_NAME", "metadata.name"),
					fieldEnv("POD_NAMESPACE", "metadata.namespace")},
				Ports:     []corev1.ContainerPort{{Name: "http", ContainerPort: contract.Port, Protocol: corev1.ProtocolTCP}},
				Resources: resources,
				// The supervised process accepts connections once its log is replayed (they wait
				// in the backlog meanwhile), so a long replay at start is the startup probe's
				// to wait for, not the liveness probe's to kill: up to 10 minutes.
				StartupProbe: &corev1.Probe{ProbeHandler: httpGet(contract.PathHealthz),
					PeriodSeconds: 1, FailureThreshold: 600, TimeoutSeconds: 1},
				// A probe that meets an in-place restart waits in the backlog: a restart shorter
				// than the timeout is a slow answer, not a flap of readiness.
				ReadinessProbe: &corev1.Probe{ProbeHandler: httpGet(contract.PathReadyz),
					PeriodSeconds: 1, FailureThreshold: 1, TimeoutSeconds: 1},
				LivenessProbe: &corev1.Probe{ProbeHandler: httpGet(contract.PathHealthz),
					PeriodSeconds: 10, FailureThreshold: 3, TimeoutSeconds: 2},
				VolumeMounts:             []corev1.VolumeMount{{Name: "log", MountPath: "/data"}},
				TerminationMessagePath:   contract.DefaultTerminationMessagePath,
				TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr.To(false),
					ReadOnlyRootFilesystem:   ptr.To(true),
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
			Volumes: []corev1.Volume{{Name: "log", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: pvcName(vm)}}}},
		},
	}
}
