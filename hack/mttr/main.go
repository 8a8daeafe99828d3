// Command mttr measures recovery time on a real node: SIGKILL the vending container, then time
// until the pod is Ready again (Ready means its log is replayed: state restored). It measures
// (a) a VendingMachine, restarted by this operator, and (b) the same image in a plain
// StatefulSet, restarted by the kubelet, on the same cluster in the same run.
//
// Kills come in rounds of consecutive crashes (the next kill as soon as the pod is Ready
// again), each round on a fresh pod: the kubelet's CrashLoopBackOff grows with every crash of a
// pod, the operator's backoff with every restart inside its window; a fresh pod (StatefulSet)
// and a reset (VendingMachine) start both from zero.
//
//	make local-up && KUBECONFIG=.local-cluster/admin.kubeconfig go run ./hack/mttr -rounds 7 -crashes 3
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/customer"
)

const ns = "mttr"

type subject struct {
	name    string
	podName func(ctx context.Context) (string, error)
	fresh   func(ctx context.Context) error // start the next round from zero
}

func main() {
	rounds := flag.Int("rounds", 7, "rounds of consecutive crashes")
	crashes := flag.Int("crashes", 3, "consecutive crashes per round")
	image := flag.String("image", "vendingfleet/vendingpod:dev", "vending pod image")
	ctr := flag.String("ctr", "ctr -a .local-cluster/run/containerd.sock", "how to reach the node's containerd")
	flag.Parse()
	if err := run(*rounds, *crashes, *image, strings.Fields(*ctr)); err != nil {
		fmt.Fprintln(os.Stderr, "mttr:", err)
		os.Exit(1)
	}
}

func run(rounds, crashes int, image string, ctr []string) error {
	ctx := context.Background()
	c, _, err := customer.Connect()
	if err != nil {
		return err
	}
	_ = c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})

	vm := &vendingv1alpha1.VendingMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "op"}}
	vm.Spec.Image = image
	vm.Spec.Storage.WhenDeleted = vendingv1alpha1.DeletePVC
	if err := c.Create(ctx, vm); err != nil {
		return fmt.Errorf("creating the machine: %w", err)
	}
	sts := statefulSet(image)
	if err := c.Create(ctx, sts); err != nil {
		return fmt.Errorf("creating the StatefulSet: %w", err)
	}
	defer func() {
		_ = c.Delete(ctx, vm)
		_ = c.Delete(ctx, sts)
	}()

	op := subject{name: "operator (VendingMachine)",
		podName: func(ctx context.Context) (string, error) {
			got := &vendingv1alpha1.VendingMachine{}
			err := c.Get(ctx, client.ObjectKeyFromObject(vm), got)
			return got.Status.PodName, err
		},
		fresh: func(ctx context.Context) error { // the reset a fleet or a human does: a fresh window
			got := &vendingv1alpha1.VendingMachine{}
			if err := c.Get(ctx, client.ObjectKeyFromObject(vm), got); err != nil {
				return err
			}
			patch := client.MergeFrom(got.DeepCopy())
			got.Annotations = map[string]string{"vending.resilience.dev/reset": time.Now().Format(time.RFC3339Nano)}
			return c.Patch(ctx, got, patch)
		}}
	kubelet := subject{name: "kubelet (StatefulSet)",
		podName: func(context.Context) (string, error) { return "sts-0", nil },
		fresh: func(ctx context.Context) error { // a new pod: the kubelet's backoff starts over
			return c.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "sts-0"}})
		}}

	results := map[string][][]time.Duration{}
	for _, s := range []subject{op, kubelet} {
		for r := range rounds {
			if err := s.fresh(ctx); err != nil {
				return err
			}
			time.Sleep(time.Second) // let the reset or the deletion be seen before waiting on it
			for k := range crashes {
				pod, err := waitReady(ctx, c, s, 3*time.Minute)
				if err != nil {
					return err
				}
				start := time.Now()
				if err := kill(ctx, ctr, pod); err != nil {
					return err
				}
				if _, err := waitRecovered(ctx, c, s, pod, 10*time.Minute); err != nil {
					return err
				}
				d := time.Since(start)
				for len(results[s.name]) <= k {
					results[s.name] = append(results[s.name], nil)
				}
				results[s.name][k] = append(results[s.name][k], d)
				fmt.Printf("%s round %d crash %d: ready again after %v\n", s.name, r+1, k+1, d.Round(time.Millisecond))
			}
		}
	}

	fmt.Printf("\nMTTR, SIGKILL → Ready with the log replayed (%d rounds of %d consecutive crashes):\n", rounds, crashes)
	fmt.Printf("| %-26s | %-22s | %-30s |\n", "restarted by", "all kills p50 / p99", "by crash in a round (p50)")
	for _, s := range []subject{op, kubelet} {
		var all []time.Duration
		var byCrash []string
		for k, ds := range results[s.name] {
			all = append(all, ds...)
			byCrash = append(byCrash, fmt.Sprintf("#%d %v", k+1, pct(ds, 50).Round(10*time.Millisecond)))
		}
		fmt.Printf("| %-26s | %v / %v (n=%d) | %s |\n", s.name, pct(all, 50).Round(10*time.Millisecond),
			pct(all, 99).Round(10*time.Millisecond), len(all), strings.Join(byCrash, ", "))
	}
	return nil
}

func statefulSet(image string) *appsv1.StatefulSet {
	labels := map[string]string{"app": "mttr-sts"}
	return &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "sts"},
		Spec: appsv1.StatefulSetSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			PersistentVolumeClaimRetentionPolicy: &appsv1.StatefulSetPersistentVolumeClaimRetentionPolicy{
				WhenDeleted: appsv1.DeletePersistentVolumeClaimRetentionPolicyType,
			},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](65532)},
					Containers: []corev1.Container{{
						Name: "vending", Image: image, ImagePullPolicy: corev1.PullIfNotPresent,
						Args:  []string{"--data-dir=/data", "--listen=:8080"},
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
							Path: "/readyz", Port: intstr.FromString("http")}}, PeriodSeconds: 1, FailureThreshold: 1},
						VolumeMounts: []corev1.VolumeMount{{Name: "log", MountPath: "/data"}},
					}},
				},
			},
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{{
				ObjectMeta: metav1.ObjectMeta{Name: "log"},
				Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
					Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("64Mi")}}},
			}},
		},
	}
}

// waitReady waits until the subject's current pod is Ready, and returns it.
func waitReady(ctx context.Context, c client.Client, s subject, limit time.Duration) (*corev1.Pod, error) {
	return waitRecovered(ctx, c, s, nil, limit)
}

// waitRecovered waits until the subject runs a Ready pod that is not the one killed: another
// pod (the operator's restart), or the same pod with its container restarted (the kubelet's).
func waitRecovered(ctx context.Context, c client.Client, s subject, killed *corev1.Pod, limit time.Duration) (*corev1.Pod, error) {
	deadline := time.Now().Add(limit)
	for ; time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		name, err := s.podName(ctx)
		if err != nil || name == "" {
			continue
		}
		pod := &corev1.Pod{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, pod); err != nil || pod.DeletionTimestamp != nil {
			continue
		}
		if !ready(pod) || len(pod.Status.ContainerStatuses) == 0 {
			continue
		}
		if killed == nil || pod.UID != killed.UID ||
			pod.Status.ContainerStatuses[0].RestartCount > killed.Status.ContainerStatuses[0].RestartCount {
			return pod, nil
		}
	}
	return nil, fmt.Errorf("%s: not Ready within %v", s.name, limit)
}

func ready(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func kill(ctx context.Context, ctr []string, pod *corev1.Pod) error {
	_, id, _ := strings.Cut(pod.Status.ContainerStatuses[0].ContainerID, "://")
	args := append(slices.Clone(ctr), "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id)
	if out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %v: %s", args, err, out)
	}
	return nil
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}
