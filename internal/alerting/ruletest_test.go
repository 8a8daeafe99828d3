package alerting

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/prometheus/prometheus/rules"
	"go.yaml.in/yaml/v2"
)

// A promtool rule unit test file (https://prometheus.io/docs/prometheus/latest/configuration/unit_testing_rules/),
// alert tests only, run the way cmd/promtool/unittest.go runs them: the input series are loaded
// with promqltest's LazyLoader, the rules are loaded by a rules.Manager and every group is
// evaluated at each evaluation interval from 0 to the last eval_time; at each eval_time the
// firing alerts must be exactly the expected ones, labels and annotations.
//
// One difference: rule_files may name PrometheusRule manifests, whose spec is the rule file.
type unitTestFile struct {
	RuleFiles          []string       `yaml:"rule_files"`
	EvaluationInterval model.Duration `yaml:"evaluation_interval,omitempty"`
	Tests              []testGroup    `yaml:"tests"`
}

type testGroup struct {
	Name           string          `yaml:"name,omitempty"`
	Interval       model.Duration  `yaml:"interval"`
	InputSeries    []series        `yaml:"input_series"`
	AlertRuleTests []alertTestCase `yaml:"alert_rule_test,omitempty"`
}

type series struct {
	Series string `yaml:"series"`
	Values string `yaml:"values"`
}

type alertTestCase struct {
	EvalTime  model.Duration `yaml:"eval_time"`
	Alertname string         `yaml:"alertname"`
	ExpAlerts []expAlert     `yaml:"exp_alerts"`
}

type expAlert struct {
	ExpLabels      map[string]string `yaml:"exp_labels"`
	ExpAnnotations map[string]string `yaml:"exp_annotations"`
}

func readUnitTestFile(path string) (*unitTestFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	f := &unitTestFile{}
	if err := yaml.UnmarshalStrict(b, f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if f.EvaluationInterval == 0 {
		f.EvaluationInterval = model.Duration(time.Minute)
	}
	for i, rf := range f.RuleFiles {
		if !filepath.IsAbs(rf) {
			f.RuleFiles[i] = filepath.Join(filepath.Dir(path), rf)
		}
	}
	return f, nil
}

// ruleFiles writes the rule file each PrometheusRule of f holds into dir, through edit (the
// mutation tests change the rules there), and returns their paths.
func ruleFiles(f *unitTestFile, dir string, edit func([]byte) []byte) ([]string, error) {
	var out []string
	for i, path := range f.RuleFiles {
		b, err := RuleFile(path)
		if err != nil {
			return nil, err
		}
		if edit != nil {
			b = edit(b)
		}
		p := filepath.Join(dir, fmt.Sprintf("rules-%d.yaml", i))
		if err := os.WriteFile(p, b, 0o600); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// run runs every test group of f against the rule files and returns what failed.
func (f *unitTestFile) run(ruleFiles []string) []error {
	var errs []error
	for i, tg := range f.Tests {
		name := tg.Name
		if name == "" {
			name = fmt.Sprintf("test group %d", i)
		}
		for _, err := range tg.run(time.Duration(f.EvaluationInterval), ruleFiles) {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	return errs
}

func (tg *testGroup) run(evalInterval time.Duration, ruleFiles []string) []error {
	interval := time.Duration(tg.Interval)
	if interval == 0 {
		interval = time.Minute
	}
	var load strings.Builder
	fmt.Fprintf(&load, "load %v\n", model.Duration(interval))
	for _, s := range tg.InputSeries {
		fmt.Fprintf(&load, "  %s %s\n", s.Series, s.Values)
	}
	suite, err := promqltest.NewLazyLoader(load.String(), promqltest.LazyLoaderOpts{
		EnableAtModifier: true, EnableNegativeOffset: true, Parser: Parser,
	})
	if err != nil {
		return []error{err}
	}
	defer func() { _ = suite.Close() }()
	suite.SubqueryInterval = evalInterval

	m := rules.NewManager(&rules.ManagerOptions{
		QueryFunc:    rules.EngineQueryFunc(suite.QueryEngine(), suite.Storage()),
		AppendableV2: suite.Storage(),
		Context:      context.Background(),
		NotifyFunc:   func(context.Context, string, ...*rules.Alert) {},
		Logger:       slog.New(slog.DiscardHandler),
		Parser:       Parser,
	})
	groupsMap, errs := m.LoadGroups(evalInterval, labels.EmptyLabels(), "", nil, false, ruleFiles...)
	if errs != nil {
		return errs
	}
	groups := make([]*rules.Group, 0, len(groupsMap))
	for _, g := range groupsMap {
		groups = append(groups, g)
		for _, r := range g.Rules() {
			if ar, ok := r.(*rules.AlertingRule); ok {
				ar.SetRestored(true) // as promtool: the ALERTS series exist from the first eval
			}
		}
	}
	sort.Slice(groups, func(i, j int) bool { return groups[i].Name() < groups[j].Name() })

	byTime := map[time.Duration][]alertTestCase{}
	var maxt time.Duration
	for _, tc := range tg.AlertRuleTests {
		if tc.Alertname == "" {
			return []error{fmt.Errorf("an alert_rule_test at %v names no alertname", tc.EvalTime)}
		}
		byTime[time.Duration(tc.EvalTime)] = append(byTime[time.Duration(tc.EvalTime)], tc)
		maxt = max(maxt, time.Duration(tc.EvalTime))
	}
	evalTimes := make([]time.Duration, 0, len(byTime))
	for t := range byTime {
		evalTimes = append(evalTimes, t)
	}
	slices.Sort(evalTimes)

	start := time.Unix(0, 0).UTC()
	var failed []error
	next := 0
	for ts := start; !ts.After(start.Add(maxt)); ts = ts.Add(evalInterval) {
		var evalErrs []error
		suite.WithSamplesTill(ts, func(err error) {
			if err != nil {
				evalErrs = append(evalErrs, err)
				return
			}
			for _, g := range groups {
				g.Eval(suite.Context(), ts)
				for _, r := range g.Rules() {
					if r.LastError() != nil {
						evalErrs = append(evalErrs, fmt.Errorf("rule %s at %v: %w", r.Name(), ts.Sub(start), r.LastError()))
					}
				}
			}
		})
		if len(evalErrs) > 0 {
			return append(failed, evalErrs...)
		}
		// An eval_time between two evaluations is checked against the earlier one, as promtool.
		for next < len(evalTimes) && ts.Sub(start) <= evalTimes[next] && evalTimes[next] < ts.Add(evalInterval).Sub(start) {
			for _, tc := range byTime[evalTimes[next]] {
				if err := tc.check(firing(groups, tc.Alertname)); err != nil {
					failed = append(failed, err)
				}
			}
			next++
		}
	}
	return failed
}

// alertText is an alert as a comparable string: its labels and annotations.
type alertText string

func textOf(lbls, annotations labels.Labels) alertText {
	return alertText(lbls.String() + " " + annotations.String())
}

func firing(groups []*rules.Group, name string) []alertText {
	var out []alertText
	for _, g := range groups {
		for _, r := range g.Rules() {
			ar, ok := r.(*rules.AlertingRule)
			if !ok || ar.Name() != name {
				continue
			}
			for _, a := range ar.ActiveAlerts() {
				if a.State == rules.StateFiring {
					out = append(out, textOf(a.Labels, a.Annotations))
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

func (tc alertTestCase) check(got []alertText) error {
	want := make([]alertText, 0, len(tc.ExpAlerts))
	for _, a := range tc.ExpAlerts {
		l := map[string]string{labels.AlertName: tc.Alertname}
		for k, v := range a.ExpLabels {
			l[k] = v
		}
		want = append(want, textOf(labels.FromMap(l), labels.FromMap(a.ExpAnnotations)))
	}
	slices.Sort(want)
	if slices.Equal(got, want) {
		return nil
	}
	return fmt.Errorf("alertname %s, time %v:\n    want: %s\n    got:  %s",
		tc.Alertname, time.Duration(tc.EvalTime), list(want), list(got))
}

func list(as []alertText) string {
	if len(as) == 0 {
		return "(none)"
	}
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = string(a)
	}
	return strings.Join(s, "\n          ")
}
