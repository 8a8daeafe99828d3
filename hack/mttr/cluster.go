package main

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/contract"
)

const (
	ns = "mttr"
	// reasonInPlace is the event the operator emits for each in-place restart it folds.
	reasonInPlace = "RestartedInPlace"
	// annotationReset clears a machine's window and replaces its pod (supervisor.AnnotationReset).
	annotationReset = "vending.resilience.dev/reset"
)

// cluster reads the namespace through a watch-fed cache (what the customer follows, and when the
// operator's reports appear) and writes through a direct client.
type cluster struct {
	c     client.Client
	cache cache.Cache
	seen  *observer
}

func connect(ctx context.Context) (*cluster, error) {
	ctrl.SetLogger(zap.New(zap.WriteTo(io.Discard))) // the informers' chatter is not the tool's output
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(vendingv1alpha1.AddToScheme(scheme))
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return nil, err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, err
	}
	ca, err := cache.New(cfg, cache.Options{Scheme: scheme, DefaultNamespaces: map[string]cache.Config{ns: {}}})
	if err != nil {
		return nil, err
	}
	cl := &cluster{c: c, cache: ca, seen: newObserver()}
	for _, obj := range []client.Object{&vendingv1alpha1.VendingMachine{}, &corev1.Pod{}, &eventsv1.Event{}} {
		inf, err := ca.GetInformer(ctx, obj)
		if err != nil {
			return nil, err
		}
		if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
			AddFunc:    cl.seen.observe,
			UpdateFunc: func(_, obj any) { cl.seen.observe(obj) },
			DeleteFunc: cl.seen.observe,
		}); err != nil {
			return nil, err
		}
	}
	go func() { _ = ca.Start(ctx) }()
	if !ca.WaitForCacheSync(ctx) {
		return nil, fmt.Errorf("the cache of namespace %s did not sync", ns)
	}
	return cl, nil
}

// cleanNamespace deletes what an earlier run left and waits until it is gone, then makes the
// namespace (kept between runs: deleting it would wait on the operator's finalizers anyway).
func (cl *cluster) cleanNamespace(ctx context.Context) error {
	if err := cl.c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	for _, obj := range []client.Object{&vendingv1alpha1.VendingMachine{}, &appsv1.StatefulSet{}} {
		if err := cl.c.DeleteAllOf(ctx, obj, client.InNamespace(ns)); err != nil {
			return err
		}
	}
	for _, obj := range []client.Object{&corev1.Pod{}, &corev1.PersistentVolumeClaim{}} {
		if err := cl.c.DeleteAllOf(ctx, obj, client.InNamespace(ns)); err != nil {
			return err
		}
	}
	return poll(ctx, 3*time.Minute, "namespace "+ns+" to empty", func() bool {
		var n int
		for _, list := range []client.ObjectList{&vendingv1alpha1.VendingMachineList{}, &appsv1.StatefulSetList{},
			&corev1.PodList{}, &corev1.PersistentVolumeClaimList{}} {
			if err := cl.c.List(ctx, list, client.InNamespace(ns)); err != nil {
				return false
			}
			n += apimeta.LenList(list)
		}
		return n == 0
	})
}

// machine is one vending machine under test: a VendingMachine or the StatefulSet's pod.
type machine struct {
	name    string
	cl      *cluster
	obj     client.Object
	podName func() string                   // its current pod, as the cache shows it
	fresh   func(ctx context.Context) error // a new pod and, for a VendingMachine, a new window
}

// vendingMachine is the spec of subjects a and b: fault injection on (a1), and the supervision
// spelled out (the API's defaults, but for backoff.initial when given): the decider restarts on
// OutOfCoffeeBeans and Killed, and 10 restarts a minute allow the rounds, since each round
// starts with a reset, which empties the window.
func (cl *cluster) vendingMachine(name, image string, initial *time.Duration) *machine {
	vm := &vendingv1alpha1.VendingMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	vm.Spec.Image = image
	vm.Spec.EnableFaultInjection = true
	vm.Spec.Storage.WhenDeleted = vendingv1alpha1.DeletePVC
	vm.Spec.Supervision = vendingv1alpha1.Supervision{
		MaxRestarts: ptr.To[int32](10),
		Window:      &metav1.Duration{Duration: time.Minute},
		Decider: []vendingv1alpha1.DeciderRule{
			{Reason: contract.ReasonOutOfCoffeeBeans, Action: vendingv1alpha1.ActionRestart},
			{Reason: contract.ReasonKilled, Action: vendingv1alpha1.ActionRestart},
			{Reason: contract.ReasonTerminated, Action: vendingv1alpha1.ActionRestart},
		},
	}
	if initial != nil {
		vm.Spec.Supervision.Backoff.Initial = &metav1.Duration{Duration: *initial}
	}
	m := &machine{name: name, cl: cl, obj: vm}
	m.podName = func() string {
		got, ok := cl.vm(name)
		if !ok {
			return ""
		}
		return got.Status.PodName
	}
	m.fresh = func(ctx context.Context) error { // the reset a fleet or a human does
		got := &vendingv1alpha1.VendingMachine{}
		if err := cl.c.Get(ctx, client.ObjectKeyFromObject(vm), got); err != nil {
			return err
		}
		old := got.Status.PodName
		value := time.Now().Format(time.RFC3339Nano)
		patch := client.MergeFrom(got.DeepCopy())
		if got.Annotations == nil {
			got.Annotations = map[string]string{}
		}
		got.Annotations[annotationReset] = value
		if err := cl.c.Patch(ctx, got, patch); err != nil {
			return err
		}
		return poll(ctx, 3*time.Minute, name+" to take the reset", func() bool {
			got, ok := cl.vm(name)
			return ok && got.Status.ObservedReset == value && got.Status.PodName != old
		})
	}
	return m
}

func (cl *cluster) statefulSet(name, image string) *machine {
	labels := map[string]string{"app": "mttr-" + name}
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
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
						// The vending process itself is PID 1 (no --supervise): what a
						// StatefulSet of this image runs without the operator.
						Args:  []string{"--data-dir=/data", "--listen=:8080"},
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: contract.Port}},
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
							Path: contract.PathReadyz, Port: intstr.FromString("http")}}, PeriodSeconds: 1, FailureThreshold: 1},
						VolumeMounts: []corev1.VolumeMount{{Name: "log", MountPath: "/data"}},
					}},
				},
			},
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{{
				ObjectMeta: metav1.ObjectMeta{Name: "log"},
				Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
					Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}},
			}},
		},
	}
	pod := name + "-0"
	m := &machine{name: name, cl: cl, obj: sts, podName: func() string { return pod }}
	m.fresh = func(ctx context.Context) error { // a new pod: the kubelet's backoff starts over
		old, _ := cl.pod(pod)
		if err := cl.c.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: pod}}); err != nil {
			return err
		}
		return poll(ctx, 3*time.Minute, pod+" to be replaced", func() bool {
			got, ok := cl.pod(pod)
			return ok && (old == nil || got.UID != old.UID)
		})
	}
	return m
}

func (m *machine) create(ctx context.Context) error {
	if err := m.cl.c.Create(ctx, m.obj); err != nil {
		return fmt.Errorf("creating %s: %w", m.name, err)
	}
	return nil
}

// current is the machine's pod as the cache shows it, nil while it has none.
func (m *machine) current() *corev1.Pod {
	name := m.podName()
	if name == "" {
		return nil
	}
	pod, _ := m.cl.pod(name)
	return pod
}

// ip is where the customer finds the machine now: its current pod's IP ("" while unknown).
func (m *machine) ip() string {
	if pod := m.current(); pod != nil && pod.DeletionTimestamp == nil {
		return pod.Status.PodIP
	}
	return ""
}

// waitServing waits until the machine's current pod is Ready and has answered a durable reply.
func (m *machine) waitServing(ctx context.Context, cu *customer) error {
	if err := poll(ctx, 3*time.Minute, m.name+" to be Ready", func() bool {
		pod := m.current()
		return pod != nil && pod.DeletionTimestamp == nil && ready(pod)
	}); err != nil {
		return err
	}
	_, err := cu.untilDurable(ctx, m, time.Now())
	return err
}

func ready(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (cl *cluster) vm(name string) (*vendingv1alpha1.VendingMachine, bool) {
	got := &vendingv1alpha1.VendingMachine{}
	err := cl.cache.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, got)
	return got, err == nil
}

func (cl *cluster) pod(name string) (*corev1.Pod, bool) {
	got := &corev1.Pod{}
	err := cl.cache.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, got)
	if err != nil {
		return nil, false
	}
	return got, true
}

// poll checks cond every 10 ms (it reads the cache) until it holds.
func poll(ctx context.Context, limit time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("waited %v for %s", limit, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// observer keeps, from the watch, when each value of a machine's status.restarts and of its
// count of RestartedInPlace events was first seen, and wakes whoever waits for a change.
type observer struct {
	mu       sync.Mutex
	restarts map[string]map[int32]time.Time // machine → status.restarts → first seen
	events   map[string]map[types.UID]int32 // machine → RestartedInPlace event → its count
	counted  map[string]map[int32]time.Time // machine → RestartedInPlace total → first seen
	changed  chan struct{}
}

func newObserver() *observer {
	return &observer{restarts: map[string]map[int32]time.Time{}, events: map[string]map[types.UID]int32{},
		counted: map[string]map[int32]time.Time{}, changed: make(chan struct{})}
}

func (o *observer) observe(obj any) {
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	switch obj := obj.(type) {
	case *vendingv1alpha1.VendingMachine:
		firstSeen(o.restarts, obj.Name, obj.Status.Restarts, now)
	case *eventsv1.Event:
		if obj.Reason == reasonInPlace && obj.Regarding.Kind == "VendingMachine" {
			vm := obj.Regarding.Name
			if o.events[vm] == nil {
				o.events[vm] = map[types.UID]int32{}
			}
			// An event the recorder repeats becomes a series: count it as often as it says. The
			// operator announces restarts it folds together (reports that arrived together)
			// in one event that says how many.
			n := int32(1)
			if m := coalesced.FindStringSubmatch(obj.Note); m != nil {
				if c, err := strconv.ParseInt(m[1], 10, 32); err == nil {
					n = int32(c)
				}
			}
			if obj.DeprecatedCount > n {
				n = obj.DeprecatedCount
			}
			if obj.Series != nil && obj.Series.Count > n {
				n = obj.Series.Count
			}
			o.events[vm][obj.UID] = max(o.events[vm][obj.UID], n)
			var total int32
			for _, n := range o.events[vm] {
				total += n
			}
			firstSeen(o.counted, vm, total, now)
		}
	}
	close(o.changed)
	o.changed = make(chan struct{})
}

// coalesced is how a RestartedInPlace event that announces several restarts begins.
var coalesced = regexp.MustCompile(`^(\d+) restarts in place`)

// firstSeen records now for every value up to v not seen before (a watch may skip values).
func firstSeen(m map[string]map[int32]time.Time, name string, v int32, now time.Time) {
	if m[name] == nil {
		m[name] = map[int32]time.Time{}
	}
	for i := v; i >= 0; i-- {
		if _, ok := m[name][i]; ok {
			return
		}
		m[name][i] = now
	}
}

// next is closed at the next change the watch delivers.
func (o *observer) next() <-chan struct{} {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.changed
}

// restartsAt says when status.restarts of the machine was first seen at v or above.
func (o *observer) restartsAt(name string, v int32) (time.Time, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	t, ok := o.restarts[name][v]
	return t, ok
}

// eventsAt says when the machine's RestartedInPlace events were first seen to count v or more.
func (o *observer) eventsAt(name string, v int32) (time.Time, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	t, ok := o.counted[name][v]
	return t, ok
}

// eventTotal is the machine's count of RestartedInPlace events now.
func (o *observer) eventTotal(name string) int32 {
	o.mu.Lock()
	defer o.mu.Unlock()
	var total int32
	for _, n := range o.events[name] {
		total += n
	}
	return total
}
