// Package vendcli is `kubectl vend`, the day-2 plugin of the vending operator: status (a tree,
// problems first), why (a machine's last failure, decision and restart budget), reset, pause
// and resume (each writes only the declarative annotation or field the operator honours), events
// (the machine's own event log through the service proxy) and report (a zip for a bug report).
//
// The commands are thin: they read objects with the client the kubeconfig flags make, hand them
// to pure functions (RenderTree, Diagnose, RenderWhy, RenderEvents) that return text, and print
// it. The clock and the terminal are injected, so the output is the same on every run of a test.
package vendcli

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/cli-runtime/pkg/printers"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
)

// Options are what every command shares: the kubeconfig flags, the streams, the clock and the
// terminal. Tests set Now, IsTerminal and Getenv.
type Options struct {
	Config  *genericclioptions.ConfigFlags
	Streams genericiooptions.IOStreams
	// Now is the clock (SINCE columns, reset values, the restart budget).
	Now func() time.Time
	// IsTerminal says whether stdout is a terminal (for --color=auto).
	IsTerminal func() bool
	// Getenv reads NO_COLOR and TERM.
	Getenv func(string) string

	color string
}

// NewOptions are the options of the real plugin: os streams, the wall clock, the real terminal.
func NewOptions() *Options {
	return &Options{
		Config:     genericclioptions.NewConfigFlags(true),
		Streams:    genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr},
		Now:        time.Now,
		IsTerminal: func() bool { return term.IsTerminal(int(os.Stdout.Fd())) },
		Getenv:     os.Getenv,
	}
}

// Scheme knows the vending types and the core ones.
var Scheme = runtime.NewScheme()

func init() {
	utilruntime.Must(clientgoscheme.AddToScheme(Scheme))
	utilruntime.Must(vendingv1alpha1.AddToScheme(Scheme))
}

// NewCommand is `kubectl vend` with its subcommands.
func NewCommand(o *Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "vend",
		Short: "Day-2 operations on vending machines and fleets",
		Long: "kubectl vend shows what is wrong with VendingMachines and VendingFleets and why, and writes the\n" +
			"declarative changes the operator acts on (a reset annotation, spec.paused), never the status.",
		Annotations:       map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl vend"},
		SilenceUsage:      true,
		SilenceErrors:     true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	cmd.SetOut(o.Streams.Out)
	cmd.SetErr(o.Streams.ErrOut)
	o.Config.AddFlags(cmd.PersistentFlags())
	cmd.PersistentFlags().StringVar(&o.color, "color", string(ColorAuto), "color output: auto (a terminal without NO_COLOR), always or never")
	cmd.AddCommand(newStatusCommand(o), newWhyCommand(o), newResetCommand(o), newPauseCommand(o, true),
		newPauseCommand(o, false), newEventsCommand(o), newReportCommand(o))
	return cmd
}

// Execute runs the plugin; the error is printed as kubectl prints one.
func Execute(o *Options, args []string) int {
	cmd := NewCommand(o)
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil {
		_, _ = fmt.Fprintln(o.Streams.ErrOut, "error:", err)
		return 1
	}
	return 0
}

func (o *Options) useColor() (bool, error) {
	return UseColor(ColorMode(o.color), o.IsTerminal(), o.Getenv)
}

// namespace is -n, or the kubeconfig context's namespace.
func (o *Options) namespace() (string, error) {
	ns, _, err := o.Config.ToRawKubeConfigLoader().Namespace()
	return ns, err
}

// session is what a command works with: the clients and the namespace its flags name.
type session struct {
	c  client.Client
	cs kubernetes.Interface
	ns string
}

// connect makes the clients and resolves the namespace ("" with allNamespaces).
func (o *Options) connect(allNamespaces bool) (session, error) {
	c, cs, err := o.clients()
	if err != nil {
		return session{}, err
	}
	s := session{c: c, cs: cs}
	if !allNamespaces {
		s.ns, err = o.namespace()
	}
	return s, err
}

// machine reads the machine of that name in the session's namespace.
func (s session) machine(ctx context.Context, name string) (*vendingv1alpha1.VendingMachine, error) {
	vm := &vendingv1alpha1.VendingMachine{}
	return vm, s.c.Get(ctx, types.NamespacedName{Namespace: s.ns, Name: name}, vm)
}

// clients are a client that knows the vending types and a clientset (for logs and the service
// proxy), both from the kubeconfig flags.
func (o *Options) clients() (client.Client, kubernetes.Interface, error) {
	cfg, err := o.Config.ToRESTConfig()
	if err != nil {
		return nil, nil, err
	}
	c, err := client.New(cfg, client.Options{Scheme: Scheme})
	if err != nil {
		return nil, nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	return c, cs, nil
}

// outputFlag adds -o json|yaml; empty means the command's text.
func outputFlag(cmd *cobra.Command, p *string) {
	cmd.Flags().StringVarP(p, "output", "o", "", "output format: json or yaml (default: text for humans)")
}

// printer is cli-runtime's JSON or YAML printer (managed fields left out), nil for text.
func printer(format string) (printers.ResourcePrinter, error) {
	if format == "" {
		return nil, nil
	}
	if format != "json" && format != "yaml" {
		return nil, fmt.Errorf("--output must be json or yaml, not %q", format)
	}
	return genericclioptions.NewJSONYamlPrintFlags().ToPrinter(format)
}

// printData prints any JSON-able value through the printer (as runtime.Unknown: JSON indented,
// or YAML).
func printData(p printers.ResourcePrinter, v any, w io.Writer) error {
	return p.PrintObj(&runtime.Unknown{Raw: mustJSON(v)}, w)
}

func ctx(cmd *cobra.Command) context.Context {
	if c := cmd.Context(); c != nil {
		return c
	}
	return context.Background()
}
