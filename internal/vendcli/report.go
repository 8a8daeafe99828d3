package vendcli

import (
	"archive/zip"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
)

// logTailLines bounds each log in a report to its newest lines: an operator that ran for weeks
// has more log than a bug report needs.
const logTailLines = 20000

// ReportOptions say what a report collects.
type ReportOptions struct {
	Namespace         string
	OperatorNamespace string
	// OperatorSelector selects the operator's pods (config/manager: control-plane=controller-manager).
	OperatorSelector string
	Now              time.Time
}

// reportLog is one thing collected or not: the README lists both.
type reportLog struct {
	collected []string
	failed    []string
}

func (l *reportLog) fail(what string, err error) {
	why := err.Error()
	if apierrors.IsForbidden(err) {
		why = "denied by RBAC: " + why
	}
	l.failed = append(l.failed, fmt.Sprintf("%s: %s", what, why))
}

// WriteReport writes a zip of the namespace's VendingMachines, VendingFleets, the machines' pods,
// claims and services, the events about any of them, the logs of the machines' pods (current and, after a container restart, previous) and
// the operator's logs, with a README.txt that lists what was collected and what could not be.
// Secrets are never read. A denial (RBAC) or a missing log is listed, not fatal.
func WriteReport(ctx context.Context, c client.Client, cs kubernetes.Interface, o ReportOptions,
	w io.Writer) (collected, failed int, err error) {
	z := zip.NewWriter(w)
	var log reportLog
	put := func(name string, data []byte) error {
		f, err := z.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Deflate, Modified: o.Now.UTC()})
		if err != nil {
			return err
		}
		if _, err := f.Write(data); err != nil {
			return err
		}
		log.collected = append(log.collected, name)
		return nil
	}
	yamlPrinter, err := printer("yaml")
	if err != nil {
		return 0, 0, err
	}
	list := func(name string, l client.ObjectList, opts ...client.ListOption) (bool, error) {
		if err := c.List(ctx, l, append([]client.ListOption{client.InNamespace(o.Namespace)}, opts...)...); err != nil {
			log.fail(name, err)
			return false, nil
		}
		var b bytes.Buffer
		if err := yamlPrinter.PrintObj(withKinds(l), &b); err != nil {
			return false, err
		}
		return true, put(name, b.Bytes())
	}
	// Only the vending objects: the machines' children carry the machine label (and outlive a
	// deleted machine); anything else in the namespace is someone else's workload, whose spec may
	// hold literal credentials.
	children, err := machineChildren()
	if err != nil {
		return 0, 0, err
	}
	pods := &corev1.PodList{}
	claims := &corev1.PersistentVolumeClaimList{}
	services := &corev1.ServiceList{}
	for _, item := range []struct {
		name string
		list client.ObjectList
		opts []client.ListOption
	}{
		{"vendingmachines.yaml", &vendingv1alpha1.VendingMachineList{}, nil},
		{"vendingfleets.yaml", &vendingv1alpha1.VendingFleetList{}, nil},
		{"pods.yaml", pods, []client.ListOption{children}},
		{"persistentvolumeclaims.yaml", claims, []client.ListOption{children}},
		{"services.yaml", services, []client.ListOption{children}},
	} {
		if _, err := list(item.name, item.list, item.opts...); err != nil {
			return 0, 0, err
		}
	}
	events, err := vendingEvents(ctx, c, o.Namespace, pods, claims, services)
	if err != nil {
		log.fail("events.yaml", err)
	} else {
		var b bytes.Buffer
		if err := yamlPrinter.PrintObj(withKinds(events), &b); err != nil {
			return 0, 0, err
		}
		if err := put("events.yaml", b.Bytes()); err != nil {
			return 0, 0, err
		}
	}

	// The machines' pods: those with the machine label (they outlive a deleted machine).
	for _, pod := range pods.Items {
		if err := podLogs(ctx, cs, &pod, "logs/"+pod.Namespace, put, &log); err != nil {
			return 0, 0, err
		}
	}

	operatorPods, err := cs.CoreV1().Pods(o.OperatorNamespace).List(ctx, metav1.ListOptions{LabelSelector: o.OperatorSelector})
	switch {
	case err != nil:
		log.fail(fmt.Sprintf("the operator's pods (namespace %s, %s)", o.OperatorNamespace, o.OperatorSelector), err)
	case len(operatorPods.Items) == 0:
		log.failed = append(log.failed, fmt.Sprintf("the operator's logs: no pod in namespace %s matches %s",
			o.OperatorNamespace, o.OperatorSelector))
	}
	if operatorPods != nil {
		for _, pod := range operatorPods.Items {
			if err := podLogs(ctx, cs, &pod, "operator/"+pod.Namespace, put, &log); err != nil {
				return 0, 0, err
			}
		}
	}

	if err := put("README.txt", []byte(readme(o, &log))); err != nil {
		return 0, 0, err
	}
	return len(log.collected), len(log.failed), z.Close()
}

// machineChildren selects the objects the operator makes for a machine: pods, claims (a
// quarantined claim keeps the label) and services.
func machineChildren() (client.MatchingLabelsSelector, error) {
	r, err := labels.NewRequirement(labelMachine, selection.Exists, nil)
	if err != nil {
		return client.MatchingLabelsSelector{}, err
	}
	return client.MatchingLabelsSelector{Selector: labels.NewSelector().Add(*r)}, nil
}

// vendingEvents are the namespace's events about its machines, fleets and the machines' children.
func vendingEvents(ctx context.Context, c client.Client, ns string, pods *corev1.PodList,
	claims *corev1.PersistentVolumeClaimList, services *corev1.ServiceList) (*corev1.EventList, error) {
	events := &corev1.EventList{}
	if err := c.List(ctx, events, client.InNamespace(ns)); err != nil {
		return nil, err
	}
	names := map[string]map[string]bool{"Pod": {}, "PersistentVolumeClaim": {}, "Service": {}}
	for _, p := range pods.Items {
		names["Pod"][p.Name] = true
	}
	for _, c := range claims.Items {
		names["PersistentVolumeClaim"][c.Name] = true
	}
	for _, s := range services.Items {
		names["Service"][s.Name] = true
	}
	events.Items = slices.DeleteFunc(events.Items, func(e corev1.Event) bool { return !aboutVending(e.InvolvedObject, names) })
	return events, nil
}

// aboutVending says whether an event is about a VendingMachine, a VendingFleet or one of the
// machines' children (kind → names, core group). An events.k8s.io/v1 event's regarding is the
// involvedObject of the same event read as core/v1.
func aboutVending(ref corev1.ObjectReference, children map[string]map[string]bool) bool {
	gv, err := schema.ParseGroupVersion(ref.APIVersion)
	switch {
	case err != nil:
		return false
	case ref.Kind == "VendingMachine" || ref.Kind == "VendingFleet":
		return gv.Group == vendingv1alpha1.GroupVersion.Group
	case gv.Group == "":
		return children[ref.Kind][ref.Name]
	}
	return false
}

// namespaceExists fails on a namespace the API server does not know (a typo would otherwise
// give an empty report). A user who may not read namespaces gets the report: the lists say the
// rest.
func namespaceExists(ctx context.Context, cs kubernetes.Interface, ns string) error {
	_, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("namespace %q not found: no report written", ns)
	case err != nil && !apierrors.IsForbidden(err):
		return err
	}
	return nil
}

// podLogs collects each container's log, and the previous one after a container restart.
func podLogs(ctx context.Context, cs kubernetes.Interface, pod *corev1.Pod, dir string,
	put func(string, []byte) error, log *reportLog) error {
	restarted := map[string]bool{}
	for _, st := range append(slices.Clone(pod.Status.InitContainerStatuses), pod.Status.ContainerStatuses...) {
		restarted[st.Name] = st.RestartCount > 0 || st.LastTerminationState.Terminated != nil
	}
	containers := make([]string, 0, len(pod.Spec.InitContainers)+len(pod.Spec.Containers))
	for _, ct := range append(slices.Clone(pod.Spec.InitContainers), pod.Spec.Containers...) {
		containers = append(containers, ct.Name)
	}
	for _, name := range containers {
		for _, previous := range []bool{false, true} {
			if previous && !restarted[name] {
				continue
			}
			file := path.Join(dir, pod.Name, name+".log")
			if previous {
				file = path.Join(dir, pod.Name, name+".previous.log")
			}
			data, err := cs.CoreV1().Pods(pod.Namespace).GetLogs(pod.Name,
				&corev1.PodLogOptions{Container: name, Previous: previous, TailLines: ptr.To[int64](logTailLines)}).DoRaw(ctx)
			if err != nil {
				log.fail(file, err)
				continue
			}
			if err := put(file, data); err != nil {
				return err
			}
		}
	}
	return nil
}

func readme(o ReportOptions, log *reportLog) string {
	var b strings.Builder
	fmt.Fprintf(&b, "kubectl vend report of namespace %s, %s\n\n", o.Namespace, o.Now.UTC().Format(time.RFC3339))
	b.WriteString("Secrets and the namespace's other workloads are never collected.\n")
	b.WriteString("Objects are as the API server returned them (managed fields left out).\n")
	fmt.Fprintf(&b, "Logs are the newest %d lines of each container (previous: the run before a container restart).\n\n", logTailLines)
	fmt.Fprintf(&b, "Collected (%d):\n", len(log.collected)+1)
	for _, f := range append(slices.Clone(log.collected), "README.txt") {
		fmt.Fprintf(&b, "  %s\n", f)
	}
	fmt.Fprintf(&b, "\nNot collected (%d):\n", len(log.failed))
	if len(log.failed) == 0 {
		b.WriteString("  (nothing)\n")
	}
	for _, f := range log.failed {
		fmt.Fprintf(&b, "  %s\n", f)
	}
	return b.String()
}

// withKinds sets apiVersion and kind on a typed list and its items (the client leaves them
// empty), so the YAML says what each object is.
func withKinds(l client.ObjectList) runtime.Object {
	if gvk, err := apiutil.GVKForObject(l, Scheme); err == nil {
		l.GetObjectKind().SetGroupVersionKind(gvk)
	}
	items, _ := meta.ExtractList(l)
	for _, it := range items {
		if gvk, err := apiutil.GVKForObject(it, Scheme); err == nil {
			it.GetObjectKind().SetGroupVersionKind(gvk)
		}
	}
	return l
}

func newReportCommand(o *Options) *cobra.Command {
	var file, operatorNS, operatorSelector string
	cmd := &cobra.Command{
		Use:   "report",
		Short: "A zip for a bug report: machines, fleets, their pods, claims, events, pod and operator logs (never secrets)",
		Long: "report collects the namespace's VendingMachines, VendingFleets, the machines' pods,\n" +
			"PersistentVolumeClaims and services, the events about these, the logs of the machines' pods\n" +
			"(and of a restarted container's previous run) and the operator's logs into a zip, with a\n" +
			"README.txt that lists what was collected and what could not be (an RBAC denial is listed, not\n" +
			"fatal). Secrets, and the namespace's other workloads, are never read into it. A namespace that\n" +
			"does not exist is an error.",
		Example: "  kubectl vend report -n shop -f shop.zip",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			se, err := o.connect(false)
			if err != nil {
				return err
			}
			c, cs, ns := se.c, se.cs, se.ns
			if err := namespaceExists(ctx(cmd), cs, ns); err != nil {
				return err
			}
			now := o.Now()
			if file == "" {
				file = fmt.Sprintf("vend-report-%s-%s.zip", ns, now.UTC().Format("20060102T150405Z"))
			}
			out, err := os.Create(file)
			if err != nil {
				return err
			}
			collected, failed, err := WriteReport(ctx(cmd), c, cs, ReportOptions{Namespace: ns, OperatorNamespace: operatorNS,
				OperatorSelector: operatorSelector, Now: now}, out)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(o.Streams.Out, "wrote %s: %d files, %d things not collected (see README.txt inside)\n", file, collected, failed)
			return err
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the zip to write (default vend-report-NAMESPACE-TIME.zip)")
	cmd.Flags().StringVar(&operatorNS, "operator-namespace", "vending-operator-system", "the operator's namespace")
	cmd.Flags().StringVar(&operatorSelector, "operator-selector", "control-plane=controller-manager", "the operator's pods")
	return cmd
}
