package vendcli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/supervisor"
)

// labelMachine is on every child of a machine (pods, claims, the service).
const labelMachine = "vending.resilience.dev/machine"

// fieldManager names the plugin in managedFields, so a GitOps tool (or a person) sees who wrote
// the field.
const fieldManager = "kubectl-vend"

func newStatusCommand(o *Options) *cobra.Command {
	var all, allNamespaces bool
	var output string
	cmd := &cobra.Command{
		Use:   "status [fleet [NAME] | machine [NAME] | MACHINE]",
		Short: "A tree of fleets, machines, pods and claims: problems first, and why",
		Long: "status draws fleet → machines → pod and claim, like clusterctl describe. Stalled machines\n" +
			"(escalated or stopped: only a human moves them on) come first, then those not ready, then the\n" +
			"degraded ones, each with the reason and message of the condition that says why; healthy\n" +
			"machines are one line unless --all. Like kubectl get, a kind alone lists that kind:\n" +
			"`status fleet` shows every fleet, `status machines` every machine (outside its fleet).",
		Example: "  kubectl vend status\n  kubectl vend status fleet\n  kubectl vend status fleet lobby\n" +
			"  kubectl vend status machine coffee\n  kubectl vend status -A",
		Args: cobra.MaximumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			only, err := ParseStatusArgs(args)
			if err != nil {
				return err
			}
			if allNamespaces && only != nil && only.Name != "" {
				// kubectl get refuses a name across namespaces too: a name is unique only in one.
				return fmt.Errorf("%s: a name needs a namespace: kubectl vend status -n NAMESPACE %s "+
					"(-A lists every namespace; kubectl get %ss -A finds the namespace)", only, only, only.Kind)
			}
			p, err := printer(output)
			if err != nil {
				return err
			}
			color, err := o.useColor()
			if err != nil {
				return err
			}
			se, err := o.connect(allNamespaces)
			if err != nil {
				return err
			}
			snap, err := readSnapshot(ctx(cmd), se.c, se.ns, only)
			if err != nil {
				return err
			}
			if p != nil {
				return p.PrintObj(snapshotList(snap), o.Streams.Out)
			}
			oneMachine := only != nil && only.Kind == KindMachine && only.Name != ""
			opts := TreeOptions{All: all || oneMachine, Namespaces: allNamespaces, Now: o.Now(), Color: color}
			_, err = fmt.Fprint(o.Streams.Out, RenderTree(snap, opts))
			return err
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "show every machine, healthy ones too, with its pod and claim")
	cmd.Flags().BoolVarP(&allNamespaces, "all-namespaces", "A", false, "every namespace")
	outputFlag(cmd, &output)
	return cmd
}

// readSnapshot reads the fleets and machines of ns ("" for all), every fleet (with its
// machines) or every machine, or one fleet or machine, with their pods and claims.
func readSnapshot(ctx context.Context, c client.Client, ns string, only *Target) (Snapshot, error) {
	var s Snapshot
	in := client.InNamespace(ns)
	switch {
	case only == nil || only.Name == "":
		var err error
		if s, err = listSnapshot(ctx, c, ns, only); err != nil {
			return s, err
		}
	case only.Kind == KindFleet:
		f := vendingv1alpha1.VendingFleet{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: only.Name}, &f); err != nil {
			return s, err
		}
		ml := &vendingv1alpha1.VendingMachineList{}
		if err := c.List(ctx, ml, in, client.MatchingLabels{labelFleet: only.Name}); err != nil {
			return s, err
		}
		s.Fleets, s.Machines = []vendingv1alpha1.VendingFleet{f}, ml.Items
	default:
		vm := vendingv1alpha1.VendingMachine{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: only.Name}, &vm); err != nil {
			return s, err
		}
		// The machine alone, even when it belongs to a fleet.
		vm.OwnerReferences = nil
		delete(vm.Labels, labelFleet)
		s.Machines = []vendingv1alpha1.VendingMachine{vm}
	}
	if len(s.Machines) == 0 {
		return s, nil
	}
	hasMachine, err := labels.NewRequirement(labelMachine, selection.Exists, nil)
	if err != nil {
		return s, err
	}
	children := client.MatchingLabelsSelector{Selector: labels.NewSelector().Add(*hasMachine)}
	pods := &corev1.PodList{}
	if err := c.List(ctx, pods, in, children); err != nil {
		return s, err
	}
	claims := &corev1.PersistentVolumeClaimList{}
	if err := c.List(ctx, claims, in, children); err != nil {
		return s, err
	}
	shown := map[string]bool{}
	for _, vm := range s.Machines {
		shown[vm.Namespace+"/"+vm.Name] = true
	}
	for _, p := range pods.Items {
		if shown[p.Namespace+"/"+p.Labels[labelMachine]] {
			s.Pods = append(s.Pods, p)
		}
	}
	for _, c := range claims.Items {
		if shown[c.Namespace+"/"+c.Labels[labelMachine]] {
			s.Claims = append(s.Claims, c)
		}
	}
	return s, nil
}

// listSnapshot lists the fleets and machines of ns ("" for all): every one (kind nil), every
// fleet with its machines, or every machine.
func listSnapshot(ctx context.Context, c client.Client, ns string, kind *Target) (Snapshot, error) {
	var s Snapshot
	in := client.InNamespace(ns)
	machines := []client.ListOption{in}
	if kind == nil || kind.Kind == KindFleet {
		fl := &vendingv1alpha1.VendingFleetList{}
		if err := c.List(ctx, fl, in); err != nil {
			return s, err
		}
		s.Fleets = fl.Items
	}
	if kind != nil && kind.Kind == KindFleet {
		inFleet, err := labels.NewRequirement(labelFleet, selection.Exists, nil)
		if err != nil {
			return s, err
		}
		machines = append(machines, client.MatchingLabelsSelector{Selector: labels.NewSelector().Add(*inFleet)})
	}
	ml := &vendingv1alpha1.VendingMachineList{}
	if err := c.List(ctx, ml, machines...); err != nil {
		return s, err
	}
	s.Machines = ml.Items
	return s, nil
}

// snapshotList is the snapshot as a kubectl List, for -o json|yaml.
func snapshotList(s Snapshot) *corev1.List {
	list := &corev1.List{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "List"}}
	add := func(obj client.Object) {
		if gvk, err := apiutil.GVKForObject(obj, Scheme); err == nil {
			obj.GetObjectKind().SetGroupVersionKind(gvk)
		}
		list.Items = append(list.Items, runtime.RawExtension{Object: obj})
	}
	for i := range s.Fleets {
		add(&s.Fleets[i])
	}
	for i := range s.Machines {
		add(&s.Machines[i])
	}
	for i := range s.Pods {
		add(&s.Pods[i])
	}
	for i := range s.Claims {
		add(&s.Claims[i])
	}
	return list
}

func newWhyCommand(o *Options) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "why MACHINE",
		Short: "Why a machine is down: its last failure, the decision, the restart budget left, what to do",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := ParseTarget(args[0])
			if err != nil {
				return err
			}
			if t.Kind != KindMachine {
				return fmt.Errorf("why explains a machine; for a fleet, kubectl vend status fleet %s", t.Name)
			}
			p, err := printer(output)
			if err != nil {
				return err
			}
			color, err := o.useColor()
			if err != nil {
				return err
			}
			se, err := o.connect(false)
			if err != nil {
				return err
			}
			vm, err := se.machine(ctx(cmd), t.Name)
			if err != nil {
				return err
			}
			now := o.Now()
			d := Diagnose(vm, now)
			if p != nil {
				return printData(p, d, o.Streams.Out)
			}
			_, err = fmt.Fprint(o.Streams.Out, RenderWhy(d, now, color))
			return err
		},
	}
	outputFlag(cmd, &output)
	return cmd
}

// dryRun is --dry-run: none, client (print only) or server (the API server validates and
// admits the patch, and stores nothing).
type dryRun string

const (
	dryRunNone   dryRun = "none"
	dryRunClient dryRun = "client"
	dryRunServer dryRun = "server"
)

func dryRunFlag(cmd *cobra.Command, p *string) {
	cmd.Flags().StringVar(p, "dry-run", string(dryRunNone),
		"none, client (print what would be written) or server (the API server checks it, stores nothing)")
}

func parseDryRun(s string) (dryRun, error) {
	switch d := dryRun(s); d {
	case dryRunNone, dryRunClient, dryRunServer:
		return d, nil
	}
	return "", fmt.Errorf("--dry-run must be none, client or server, not %q", s)
}

func (d dryRun) suffix() string {
	switch d {
	case dryRunClient:
		return " (dry run)"
	case dryRunServer:
		return " (server dry run)"
	}
	return ""
}

// writer applies one merge patch (only the fields it names: GitOps tools keep owning the rest,
// and the status is never touched) and says what it wrote.
type writer struct {
	c   client.Client
	dry dryRun
	out func(format string, args ...any)
}

func (w writer) patch(ctx context.Context, obj client.Object, patch []byte, said string) error {
	if w.dry != dryRunClient {
		var opts []client.PatchOption
		if w.dry == dryRunServer {
			opts = append(opts, client.DryRunAll)
		}
		opts = append(opts, client.FieldOwner(fieldManager))
		if err := w.c.Patch(ctx, obj, client.RawPatch(types.MergePatchType, patch), opts...); err != nil {
			return err
		}
	}
	w.out("%s%s\n", said, w.dry.suffix())
	return nil
}

func newResetCommand(o *Options) *cobra.Command {
	var dry string
	cmd := &cobra.Command{
		Use:   "reset MACHINE | fleet/NAME",
		Short: "Reset a machine (or a fleet's stalled machines): a new value of the reset annotation",
		Long: "reset writes a new value (the time) into the machine's " + supervisor.AnnotationReset + " annotation,\n" +
			"with a JSON merge patch of that one annotation: the operator clears the decision in force (an\n" +
			"escalation or a stop), empties the restart window and starts a new pod on the same log.\n" +
			"fleet/NAME resets each of the fleet's stalled (escalated or stopped) machines the same way.",
		Example: "  kubectl vend reset coffee\n  kubectl vend reset fleet/lobby --dry-run=server",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := ParseTarget(args[0])
			if err != nil {
				return err
			}
			w, ns, err := o.writer(dry)
			if err != nil {
				return err
			}
			var machines []vendingv1alpha1.VendingMachine
			if t.Kind == KindMachine {
				vm := vendingv1alpha1.VendingMachine{}
				if err := w.c.Get(ctx(cmd), types.NamespacedName{Namespace: ns, Name: t.Name}, &vm); err != nil {
					return err
				}
				machines = append(machines, vm)
			} else {
				if machines, err = stalledMachines(ctx(cmd), w.c, ns, t.Name); err != nil {
					return err
				}
				if len(machines) == 0 {
					w.out("vendingfleet/%s has no stalled machine: nothing written\n", t.Name)
					return nil
				}
			}
			now := o.Now()
			for i := range machines {
				vm := &machines[i]
				v := ResetValue(now, vm.Annotations[supervisor.AnnotationReset])
				if err := w.patch(ctx(cmd), vm, resetPatch(v), fmt.Sprintf("vendingmachine/%s annotated %s=%s",
					vm.Name, supervisor.AnnotationReset, v)); err != nil {
					return err
				}
			}
			return nil
		},
	}
	dryRunFlag(cmd, &dry)
	return cmd
}

// stalledMachines are the fleet's machines that only a human moves on: escalated or stopped.
func stalledMachines(ctx context.Context, c client.Client, ns, fleet string) ([]vendingv1alpha1.VendingMachine, error) {
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: fleet}, &vendingv1alpha1.VendingFleet{}); err != nil {
		return nil, err
	}
	list := &vendingv1alpha1.VendingMachineList{}
	if err := c.List(ctx, list, client.InNamespace(ns), client.MatchingLabels{labelFleet: fleet}); err != nil {
		return nil, err
	}
	var out []vendingv1alpha1.VendingMachine
	for _, vm := range list.Items {
		if judgeMachine(&vm).sev == sevStalled {
			out = append(out, vm)
		}
	}
	return out, nil
}

func newPauseCommand(o *Options, pause bool) *cobra.Command {
	var dry string
	verb, does := "pause", "Stop the supervisor (or the fleet) from acting: spec.paused=true"
	if !pause {
		verb, does = "resume", "Let the supervisor (or the fleet) act again: spec.paused=false"
	}
	cmd := &cobra.Command{
		Use:   verb + " MACHINE | fleet/NAME",
		Short: does,
		Long: does + ", with a JSON merge patch of that one field.\n" +
			"A paused machine's supervisor creates, restarts and deletes nothing; a paused fleet creates,\n" +
			"rolls, resets and deletes no machine (its machines keep supervising their pods). If the object\n" +
			"is managed by GitOps, the next sync sets spec.paused back to what Git says.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := ParseTarget(args[0])
			if err != nil {
				return err
			}
			w, ns, err := o.writer(dry)
			if err != nil {
				return err
			}
			var obj client.Object
			var paused bool
			key := types.NamespacedName{Namespace: ns, Name: t.Name}
			if t.Kind == KindMachine {
				vm := &vendingv1alpha1.VendingMachine{}
				err, obj = w.c.Get(ctx(cmd), key, vm), vm
				paused = vm.Spec.Paused
			} else {
				f := &vendingv1alpha1.VendingFleet{}
				err, obj = w.c.Get(ctx(cmd), key, f), f
				paused = f.Spec.Paused
			}
			if err != nil {
				return err
			}
			if paused == pause {
				w.out("%s unchanged: spec.paused is already %v\n", t, pause)
				return nil
			}
			return w.patch(ctx(cmd), obj, pausedPatch(pause), fmt.Sprintf("%s patched spec.paused=%v", t, pause))
		},
	}
	dryRunFlag(cmd, &dry)
	return cmd
}

func (o *Options) writer(dry string) (writer, string, error) {
	d, err := parseDryRun(dry)
	if err != nil {
		return writer{}, "", err
	}
	se, err := o.connect(false)
	if err != nil {
		return writer{}, "", err
	}
	out := func(format string, args ...any) { _, _ = fmt.Fprintf(o.Streams.Out, format, args...) }
	return writer{c: se.c, dry: d, out: out}, se.ns, nil
}
