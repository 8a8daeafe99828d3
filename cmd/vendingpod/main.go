// Command vendingpod is one vending machine: the talk's CoffeeMachine as a crash-only,
// event-sourced service. Its state lives in an append-only event log under --data-dir (the
// pod's PersistentVolumeClaim) and is replayed at every start; failures are reported as an
// exit code and a JSON termination message for the supervisor (the operator). The HTTP API and
// the exit codes are documented in docs/vendingpod-api.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/eventlog"
	"github.com/vendingfleet/vending-operator/internal/podsupervisor"
	"github.com/vendingfleet/vending-operator/internal/vending"
	"github.com/vendingfleet/vending-operator/internal/vendingpod"
)

func main() {
	def := vending.DefaultConfig()
	cfg := vendingpod.Config{Machine: def}
	var menu string
	flag.StringVar(&cfg.DataDir, "data-dir", "/data", "Directory of the event log (the PersistentVolumeClaim's mount).")
	flag.StringVar(&cfg.Listen, "listen", vendingpod.DefaultListen(), "Address of the HTTP API, probes and metrics.")
	flag.StringVar(&menu, "menu", "BlackCoffee=2,Latte=2:milk,Espresso=2", "Menu: Name=price[:milk],...")
	flag.Int64Var(&cfg.Machine.BeanCapacity, "beans", def.BeanCapacity, "Brews a full bean hopper makes.")
	flag.Int64Var(&cfg.Machine.MilkCapacity, "milk", def.MilkCapacity, "Milk beverages a full tank makes.")
	flag.Uint64Var(&cfg.SnapshotEvery, "snapshot-every", 10000, "Write a snapshot every this many events (0: never).")
	flag.Int64Var(&cfg.SegmentSize, "segment-size", eventlog.DefaultSegmentSize, "Start a new log segment past this many bytes.")
	flag.IntVar(&cfg.Machine.Retention.Keys, "keep-keys", vending.DefaultRetention.Keys,
		"Idempotency keys remembered (the newest); a retry with an older key runs as a new request. 0: all, unbounded.")
	flag.IntVar(&cfg.Machine.Retention.Orders, "keep-orders", vending.DefaultRetention.Orders,
		"Dispensed orders remembered (the newest); older ones answer 410 OrderExpired. Pending orders are always kept. 0: all, unbounded.")
	flag.IntVar(&cfg.MailboxSize, "mailbox-size", 1024, "Commands that may wait for the writer before requests get 503.")
	flag.DurationVar(&cfg.LockWait, "lock-wait", 30*time.Second,
		"How long to wait for another process to release the log before exiting with LogLocked.")
	flag.BoolVar(&cfg.EnableFaults, "enable-faults", false, "Serve POST /v1/faults/out-of-beans (demos and tests).")
	flag.StringVar(&cfg.TerminationMessagePath, "termination-message-path", contract.DefaultTerminationMessagePath,
		"Where the failure's JSON termination message is written before the process exits.")
	supervise := flag.Bool("supervise", false, "Run as the pod's supervisor (PID 1): hold the socket, run the vending service "+
		"as a child, restart it in place per the supervision flags.")
	var settings podsupervisor.Settings
	parseSettings := podsupervisor.Register(flag.CommandLine, &settings)
	listenFD := flag.Int("listen-fd", 0, "Serve on this inherited listening socket (the supervisor's child).")
	reportFD := flag.Int("report-fd", 0,
		"Report the failure on this inherited pipe instead of the termination-message path (the supervisor's child).")
	flag.Parse()

	cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	if *supervise {
		runSupervisor(cfg, &settings, parseSettings)
		os.Exit(contract.ExitConfigError) // runSupervisor exits; this is a backstop
	}
	var err error
	if cfg.Machine.Menu, err = vendingpod.ParseMenu(menu); err != nil || cfg.MailboxSize < 1 {
		if err == nil {
			err = fmt.Errorf("--mailbox-size must be at least 1")
		}
		fmt.Fprintln(os.Stderr, "vendingpod:", err)
		os.Exit(contract.ExitConfigError)
	}
	if *listenFD > 0 {
		if cfg.Listener, err = net.FileListener(os.NewFile(uintptr(*listenFD), "listener")); err != nil {
			fmt.Fprintln(os.Stderr, "vendingpod: --listen-fd:", err)
			os.Exit(contract.ExitConfigError)
		}
	}
	if *reportFD > 0 {
		cfg.ReportTo = os.NewFile(uintptr(*reportFD), "report")
	}
	if err := vendingpod.Run(cfg); err != nil {
		os.Exit(contract.ExitConfigError) // Run reported and exited already; this is a backstop.
	}
}

// runSupervisor is PID 1 of a supervised pod: the vending service runs as its child, with the
// same flags (the supervisor's own are ignored by the child).
func runSupervisor(cfg vendingpod.Config, settings *podsupervisor.Settings, parse func() error) {
	if err := parse(); err != nil {
		fmt.Fprintln(os.Stderr, "vendingpod:", err)
		return
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "vendingpod:", err)
		return
	}
	command := []string{self}
	for _, a := range os.Args[1:] {
		if a != "--supervise" && a != "-supervise" && a != "--supervise=true" {
			command = append(command, a)
		}
	}
	sup := podsupervisor.Config{Settings: *settings, Listen: cfg.Listen, Command: command,
		TerminationMessagePath: cfg.TerminationMessagePath, MemoryEvents: podsupervisor.MemoryEventsFile(), Logger: cfg.Logger}
	if ns, name := os.Getenv("POD_NAMESPACE"), os.Getenv("POD_NAME"); ns != "" && name != "" {
		a, err := podsupervisor.NewAnnotator(context.Background(), ns, name, cfg.Logger)
		if err != nil {
			// Healing does not depend on it: the restarts still reach the operator in the
			// termination message when the pod ends.
			cfg.Logger.Warn("In-place restarts are not reported live (no API credentials)", "err", err)
		} else {
			sup.Report = a.Report
		}
	}
	_ = podsupervisor.Run(sup)
}
