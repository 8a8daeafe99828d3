package alerting

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"sigs.k8s.io/yaml"
)

const (
	rulesPath     = "../../config/prometheus/rules.yaml"
	ruleTestsPath = "../../config/prometheus/rules_test.yaml"
	runbooksDir   = "../../docs/runbooks"
	dashboardPath = "../../config/grafana/vending-operator-dashboard.json"
	runbookPrefix = "https://github.com/vendingfleet/vending-operator/blob/main/docs/runbooks/"
)

// TestRulesLoad parses the PrometheusRule's groups with rulefmt, as Prometheus loads a rule
// file (every expression and template must parse), and checks what every alert must carry: a
// severity, a summary and a description, and a runbook that exists.
func TestRulesLoad(t *testing.T) {
	groups, err := RuleGroups(rulesPath)
	if err != nil {
		t.Fatal(err)
	}
	alerts := 0
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			if _, err := Parser.ParseExpr(r.Expr); err != nil {
				t.Errorf("%s: %v", r.Alert, err)
			}
			switch r.Labels["severity"] {
			case "warning", "critical":
			default:
				t.Errorf("%s: severity %q, want warning or critical", r.Alert, r.Labels["severity"])
			}
			for _, a := range []string{"summary", "description"} {
				if !strings.Contains(r.Annotations[a], "{{") && r.Alert != "VendingOperatorDown" {
					t.Errorf("%s: annotation %s names nothing of the alert's ($labels): %q", r.Alert, a, r.Annotations[a])
				}
				if r.Annotations[a] == "" {
					t.Errorf("%s: no %s", r.Alert, a)
				}
			}
			if want := runbookPrefix + r.Alert + ".md"; r.Annotations["runbook_url"] != want {
				t.Errorf("%s: runbook_url %q, want %q", r.Alert, r.Annotations["runbook_url"], want)
			}
			if _, err := os.Stat(filepath.Join(runbooksDir, r.Alert+".md")); err != nil {
				t.Errorf("%s: its runbook: %v", r.Alert, err)
			}
		}
	}
	if alerts == 0 {
		t.Fatal("no alerts in " + rulesPath)
	}
}

// TestRuleUnitTests runs config/prometheus/rules_test.yaml as `promtool test rules` would.
func TestRuleUnitTests(t *testing.T) {
	f, err := readUnitTestFile(ruleTestsPath)
	if err != nil {
		t.Fatal(err)
	}
	files, err := ruleFiles(f, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range f.run(files) {
		t.Error(err)
	}
	tested := map[string]bool{}
	for _, tg := range f.Tests {
		for _, tc := range tg.AlertRuleTests {
			tested[tc.Alertname] = true
		}
	}
	groups, err := RuleGroups(rulesPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" && !tested[r.Alert] {
				t.Errorf("%s has no unit test in %s", r.Alert, ruleTestsPath)
			}
		}
	}
}

// TestRuleUnitTestsCatchMutations: the unit tests can fail. For each alert, an alert that
// fires at once (no `for`), one that waits twice as long, and one that never fires must each
// fail rules_test.yaml: every alert has a case where it fires, and one just before it may.
// An alert that reads an object's last value over a leader change's gap (last_over_time) must
// fail them when it reads only the value now: each has a case across such a gap.
func TestRuleUnitTestsCatchMutations(t *testing.T) {
	f, err := readUnitTestFile(ruleTestsPath)
	if err != nil {
		t.Fatal(err)
	}
	groups, err := RuleGroups(rulesPath)
	if err != nil {
		t.Fatal(err)
	}
	mutations := map[string]func(r map[string]any){
		"no for": func(r map[string]any) { delete(r, "for") },
		"twice the for": func(r map[string]any) {
			d, _ := model.ParseDuration(fmt.Sprint(r["for"]))
			r["for"] = model.Duration(2*time.Duration(d) + time.Minute).String()
		},
		"never fires": func(r map[string]any) { r["expr"] = "vector(1) > 2" },
		"forgets over a gap": func(r map[string]any) {
			r["expr"] = lastOverTime.ReplaceAllString(fmt.Sprint(r["expr"]), "$1")
		},
	}
	for _, g := range groups.Groups {
		for _, rule := range g.Rules {
			if rule.Alert == "" {
				continue
			}
			for what, mutate := range mutations {
				if what == "forgets over a gap" && !lastOverTime.MatchString(rule.Expr) {
					continue
				}
				t.Run(rule.Alert+"/"+what, func(t *testing.T) {
					files, err := ruleFiles(f, t.TempDir(), func(b []byte) []byte {
						return mutateRule(t, b, rule.Alert, mutate)
					})
					if err != nil {
						t.Fatal(err)
					}
					if errs := f.run(files); len(errs) == 0 {
						t.Errorf("%s with %s: rules_test.yaml still passes", rule.Alert, what)
					}
				})
			}
		}
	}
}

// lastOverTime is last_over_time(selector[range]), the selector in $1.
var lastOverTime = regexp.MustCompile(`last_over_time\(([^\[]+)\[[^\]]+\]\)`)

// mutateRule applies mutate to the rule of the alert in a rule file.
func mutateRule(t *testing.T, b []byte, alert string, mutate func(map[string]any)) []byte {
	t.Helper()
	var file struct {
		Groups []struct {
			Name  string           `json:"name"`
			Rules []map[string]any `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal(b, &file); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			if r["alert"] == alert {
				mutate(r)
				found = true
			}
		}
	}
	if !found {
		t.Fatalf("no alert %s", alert)
	}
	out, err := yaml.Marshal(file)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDashboardQueriesParse: every panel's expression is PromQL once Grafana's variables are
// replaced, and names metrics.
func TestDashboardQueriesParse(t *testing.T) {
	q, err := Dashboard(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(q.Exprs) == 0 || len(q.VariableMetrics) == 0 {
		t.Fatalf("%s: %d expressions, %d variable metrics", dashboardPath, len(q.Exprs), len(q.VariableMetrics))
	}
	for _, e := range q.Exprs {
		names, err := MetricNames(ExpandGrafana(e))
		if err != nil {
			t.Errorf("%q: %v", e, err)
		} else if len(names) == 0 {
			t.Errorf("%q names no metric", e)
		}
	}
}
