package vendcli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/vendingfleet/vending-operator/internal/contract"
)

// EventPage is GET /v1/events's answer (docs/vendingpod-api.md).
type EventPage struct {
	Events []contract.Event `json:"events"`
	Next   uint64           `json:"next"`
}

// RenderEvents draws a page of the machine's event log as a table; a full page ends with how
// to ask for the next one.
func RenderEvents(body []byte, machine string, limit int) (string, error) {
	var page EventPage
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&page); err != nil {
		return "", fmt.Errorf("the machine's answer is not an event page: %w", err)
	}
	var b bytes.Buffer
	if len(page.Events) == 0 {
		return "No events after this sequence.\n", nil
	}
	tw := tabwriter.NewWriter(&b, 0, 8, 2, ' ', 0)
	_, _ = fmt.Fprintln(tw, "SEQ\tTYPE\tDETAILS")
	for _, e := range page.Events {
		_, _ = fmt.Fprintf(tw, "%d\t%s\t%s\n", e.Sequence, e.Type, eventDetails(e))
	}
	_ = tw.Flush()
	if len(page.Events) >= limit {
		fmt.Fprintf(&b, "(more: kubectl vend events %s --after %d)\n", machine, page.Next)
	}
	return b.String(), nil
}

// eventDetails are the fields the event's type uses, as key=value, and its message.
func eventDetails(e contract.Event) string {
	d := e.Details()
	if e.Message != "" {
		d = strings.TrimSpace(d + " message=" + strconv.Quote(e.Message))
	}
	return d
}

func newEventsCommand(o *Options) *cobra.Command {
	var after uint64
	var limit int
	var output string
	cmd := &cobra.Command{
		Use:   "events MACHINE",
		Short: "The machine's own event log (GET /v1/events), through the API server's service proxy",
		Long: "events reads the machine's audit trail (coins, orders, brews, refills: durable events only)\n" +
			"from its pod, through the API server's service proxy (services/MACHINE:http/proxy), so it needs\n" +
			"no route to the pod. A machine that is down cannot answer: see kubectl vend why MACHINE.",
		Example: "  kubectl vend events coffee\n  kubectl vend events coffee --after 100 --limit 50\n  kubectl vend events coffee -o json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := ParseTarget(args[0])
			if err != nil {
				return err
			}
			if t.Kind != KindMachine {
				return fmt.Errorf("events reads one machine's log")
			}
			if limit < 1 || limit > 1000 {
				return fmt.Errorf("--limit must be between 1 and 1000")
			}
			p, err := printer(output)
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
			cs, ns := se.cs, se.ns
			body, err := cs.CoreV1().RESTClient().Get().Namespace(ns).Resource("services").Name(vm.Name+":http").
				SubResource("proxy").Suffix("v1/events").
				Param("after", strconv.FormatUint(after, 10)).Param("limit", strconv.Itoa(limit)).DoRaw(ctx(cmd))
			if err != nil {
				return fmt.Errorf("machine %s did not answer GET /v1/events (is it ready? kubectl vend why %s): %w", vm.Name, vm.Name, err)
			}
			if p != nil {
				var page EventPage
				if err := json.Unmarshal(body, &page); err != nil {
					return fmt.Errorf("the machine's answer is not an event page: %w", err)
				}
				return printData(p, page, o.Streams.Out)
			}
			text, err := RenderEvents(body, vm.Name, limit)
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(o.Streams.Out, text)
			return err
		},
	}
	cmd.Flags().Uint64Var(&after, "after", 0, "only events with a sequence after this")
	cmd.Flags().IntVar(&limit, "limit", 100, "at most this many events (1..1000)")
	outputFlag(cmd, &output)
	return cmd
}
