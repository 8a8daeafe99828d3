// Package alerting reads the operator's monitoring assets as Prometheus and Grafana do: the
// rule groups of a PrometheusRule (config/prometheus/rules.yaml), the PromQL of a Grafana
// dashboard (config/grafana), and the metric names an expression selects. The tests use it to
// check the alerts (promtool-style unit tests) and that every metric named is served.
package alerting

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"
)

// Parser is the PromQL parser Prometheus uses without feature flags.
var Parser = parser.NewParser(parser.Options{})

// RuleFile is the rule file (Prometheus's own format: `groups:`) held in the spec of the
// PrometheusRule at path, as the Prometheus Operator hands it to Prometheus.
func RuleFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var cr struct {
		APIVersion string         `json:"apiVersion"`
		Kind       string         `json:"kind"`
		Spec       map[string]any `json:"spec"`
	}
	if err := yaml.Unmarshal(b, &cr); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if cr.APIVersion != "monitoring.coreos.com/v1" || cr.Kind != "PrometheusRule" {
		return nil, fmt.Errorf("%s: a %s %s, not a monitoring.coreos.com/v1 PrometheusRule", path, cr.APIVersion, cr.Kind)
	}
	return yaml.Marshal(cr.Spec)
}

// RuleGroups parses and validates the PrometheusRule at path with rulefmt, as Prometheus
// loads a rule file: unknown fields, bad durations, bad templates and expressions that do not
// parse are errors.
func RuleGroups(path string) (*rulefmt.RuleGroups, error) {
	b, err := RuleFile(path)
	if err != nil {
		return nil, err
	}
	groups, errs := rulefmt.Parse(b, false, model.UTF8Validation, Parser, slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		msgs := make([]string, len(errs))
		for i, e := range errs {
			msgs[i] = e.Error()
		}
		return nil, fmt.Errorf("%s: %s", path, strings.Join(msgs, "; "))
	}
	return groups, nil
}

// MetricNames are the metric names expr selects, sorted, each once. A selector without a
// fixed name (a regular expression on __name__) is an error: nothing could check it.
func MetricNames(expr string) ([]string, error) {
	e, err := Parser.ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var names []string
	var bad error
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual {
				name = m.Value
			}
		}
		if name == "" {
			bad = fmt.Errorf("%q selects no fixed metric name", vs.String())
			return nil
		}
		names = append(names, name)
		return nil
	})
	if bad != nil {
		return nil, bad
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// DashboardQueries are the PromQL expressions of a Grafana dashboard's panels (rows' panels
// included) and the metrics its query variables read (label_values(metric, label)).
type DashboardQueries struct {
	Exprs           []string // the panels' targets
	VariableMetrics []string // metric names of label_values() variables
}

// labelValues matches Grafana's label_values(metric, label) and label_values(label).
var labelValues = regexp.MustCompile(`^\s*label_values\(\s*(?:([^,]+),)?\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$`)

// Dashboard reads the queries of the Grafana dashboard JSON at path.
func Dashboard(path string) (DashboardQueries, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return DashboardQueries{}, err
	}
	type target struct {
		Expr string `json:"expr"`
	}
	type panel struct {
		Title   string   `json:"title"`
		Targets []target `json:"targets"`
		Panels  []panel  `json:"panels"`
	}
	var d struct {
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return DashboardQueries{}, fmt.Errorf("%s: %w", path, err)
	}
	var q DashboardQueries
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, t := range p.Targets {
				if t.Expr != "" {
					q.Exprs = append(q.Exprs, t.Expr)
				}
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		s, _ := v.Query.(string)
		if m, ok := v.Query.(map[string]any); ok {
			s, _ = m["query"].(string)
		}
		sm := labelValues.FindStringSubmatch(s)
		if sm == nil {
			return DashboardQueries{}, fmt.Errorf("%s: variable %s: query %q is not label_values(metric, label)", path, v.Name, s)
		}
		if metric := strings.TrimSpace(sm[1]); metric != "" {
			names, err := MetricNames(metric)
			if err != nil {
				return DashboardQueries{}, fmt.Errorf("%s: variable %s: %w", path, v.Name, err)
			}
			q.VariableMetrics = append(q.VariableMetrics, names...)
		}
	}
	return q, nil
}

// grafanaDuration and grafanaVariable are the dashboard variables in an expression: Grafana
// replaces them before the query reaches Prometheus.
var (
	grafanaDuration = regexp.MustCompile(`\$\{?__(rate_interval|interval|range)\}?`)
	grafanaVariable = regexp.MustCompile(`\$\{?[a-zA-Z_][a-zA-Z0-9_]*\}?`)
)

// ExpandGrafana replaces a dashboard expression's variables as Grafana would (durations with
// 5m, other variables with .*, what "All" selects), so that it parses as PromQL.
func ExpandGrafana(expr string) string {
	return grafanaVariable.ReplaceAllString(grafanaDuration.ReplaceAllString(expr, "5m"), ".*")
}

// Family is the metric family a sample name belongs to: a histogram's or summary's _bucket,
// _sum and _count series are its family's, as /metrics serves them.
func Family(name string, histograms map[string]bool) string {
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && histograms[base] {
			return base
		}
	}
	return name
}
