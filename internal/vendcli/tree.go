package vendcli

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
	"github.com/vendingfleet/vending-operator/internal/supervisor"
)

const (
	labelFleet = "vending.resilience.dev/fleet"
	labelIndex = "vending.resilience.dev/index"

	// messageWidth is where a problem line's message is cut: status is an overview that fits
	// one screen; `why` tells the whole story.
	messageWidth = 80
)

// Snapshot is what status looks at: the namespace's (or namespaces') fleets and machines, and
// the machines' pods and claims.
type Snapshot struct {
	Fleets   []vendingv1alpha1.VendingFleet
	Machines []vendingv1alpha1.VendingMachine
	Pods     []corev1.Pod
	Claims   []corev1.PersistentVolumeClaim
}

// TreeOptions shape the tree.
type TreeOptions struct {
	// All expands healthy machines instead of one "N machines Ready" line.
	All bool
	// Namespaces adds a NAMESPACE column (-A).
	Namespaces bool
	// Now is the clock SINCE is measured against.
	Now time.Time
	// Color paints problems red or yellow and healthy lines green.
	Color bool
}

// row is one line of the tree, before columns are aligned.
type row struct {
	namespace, prefix, name, ready, phase, restarts, since, message string
	sev                                                             severity
}

// judgement is a machine's or a fleet's place in the order and the reason for it.
type judgement struct {
	sev     severity
	reason  string
	message string
}

// reasonNotObserved is the judgement of an object without a Ready condition: the operator has
// not written its status (not running, not yet, or not watching the namespace). Nothing in it
// needs a reset.
const reasonNotObserved = "NotObserved"

// operatorPods shows whether the operator runs (config/default's namespace).
const operatorPods = "kubectl -n vending-operator-system get pods"

// judgeMachine says how bad a machine is and why, from the conditions the operator wrote.
func judgeMachine(vm *vendingv1alpha1.VendingMachine) judgement {
	conds := vm.Status.Conditions
	resetPending := ""
	if r := vm.Annotations[supervisor.AnnotationReset]; r != "" && r != vm.Status.ObservedReset {
		resetPending = "reset requested, not yet carried out; "
	}
	if c := trueCondition(conds, vendingv1alpha1.ConditionStalled, vendingv1alpha1.ConditionEscalated); c != nil {
		return judgement{sevStalled, c.Reason, resetPending + c.Message}
	}
	if vm.Status.Phase == vendingv1alpha1.PhaseStopped || vm.Status.Phase == vendingv1alpha1.PhaseEscalated {
		c := meta.FindStatusCondition(conds, vendingv1alpha1.ConditionProgressing)
		return judgement{sevStalled, string(vm.Status.Phase), resetPending + messageOf(c)}
	}
	if vm.Spec.Paused {
		return judgement{sevNotReady, wordPaused, fmt.Sprintf(
			"spec.paused: the supervisor does not act on this machine (kubectl vend resume %s)", vm.Name)}
	}
	ready := meta.FindStatusCondition(conds, vendingv1alpha1.ConditionReady)
	if ready == nil {
		return judgement{sevNotReady, reasonNotObserved,
			"the operator has not reported on this machine yet (is it running? " + operatorPods + ")"}
	}
	if ready.Status != metav1.ConditionTrue {
		if c := trueCondition(conds, vendingv1alpha1.ConditionReconciling, vendingv1alpha1.ConditionProgressing); c != nil {
			return judgement{sevNotReady, c.Reason, resetPending + c.Message}
		}
		return judgement{sevNotReady, ready.Reason, resetPending + ready.Message}
	}
	if c := trueCondition(conds, vendingv1alpha1.ConditionDegraded); c != nil {
		return judgement{sevDegraded, c.Reason, c.Message}
	}
	return judgement{sevHealthy, ready.Reason, ""}
}

// judgeFleet does the same for a fleet: escalated to humans (or a stalled rollout) first.
func judgeFleet(f *vendingv1alpha1.VendingFleet) judgement {
	conds := f.Status.Conditions
	if c := trueCondition(conds, vendingv1alpha1.ConditionStalled, vendingv1alpha1.ConditionEscalated); c != nil {
		return judgement{sevStalled, c.Reason, c.Message}
	}
	ready := meta.FindStatusCondition(conds, vendingv1alpha1.ConditionReady)
	switch {
	case f.Spec.Paused:
		return judgement{sevNotReady, wordPaused, fmt.Sprintf("spec.paused: the fleet does not act (kubectl vend resume fleet/%s)", f.Name)}
	case ready == nil:
		return judgement{sevNotReady, reasonNotObserved, "the operator has not reported on this fleet yet (is it running? " + operatorPods + ")"}
	case ready.Status != metav1.ConditionTrue:
		if c := trueCondition(conds, vendingv1alpha1.ConditionReconciling, vendingv1alpha1.ConditionProgressing); c != nil {
			return judgement{sevNotReady, c.Reason, c.Message}
		}
		return judgement{sevNotReady, ready.Reason, ready.Message}
	}
	if c := trueCondition(conds, vendingv1alpha1.ConditionDegraded); c != nil {
		return judgement{sevDegraded, c.Reason, c.Message}
	}
	return judgement{sevHealthy, ready.Reason, ""}
}

func trueCondition(conds []metav1.Condition, types ...string) *metav1.Condition {
	for _, t := range types {
		if c := meta.FindStatusCondition(conds, t); c != nil && c.Status == metav1.ConditionTrue {
			return c
		}
	}
	return nil
}

func messageOf(c *metav1.Condition) string {
	if c == nil {
		return ""
	}
	return c.Message
}

func conditionStatus(conds []metav1.Condition, t string) string {
	if c := meta.FindStatusCondition(conds, t); c != nil {
		return string(c.Status)
	}
	return "-"
}

// fleetPhase is the one word a fleet line shows where a machine shows its phase.
func fleetPhase(j judgement) string {
	if j.sev == sevNotReady && j.reason == wordPaused {
		return wordPaused
	}
	return j.sev.word()
}

// RenderTree draws the snapshot as a tree, fleet → machines → pod and claim, problems first:
// stalled (escalated, stopped), then not ready, then degraded; healthy machines are one line
// per fleet unless All. Each problem line says why, from its conditions.
func RenderTree(s Snapshot, o TreeOptions) string {
	t := &treeBuilder{s: s, o: o}
	t.build()
	return renderRows(t.rows, o)
}

type treeBuilder struct {
	s    Snapshot
	o    TreeOptions
	rows []row
}

type node struct {
	sev   severity
	name  string
	index int // a fleet machine's index, for natural order
	emit  func(prefix, child string)
}

func (t *treeBuilder) build() {
	byFleet := map[string][]*vendingv1alpha1.VendingMachine{}
	fleets := map[string]bool{}
	for i := range t.s.Fleets {
		fleets[t.s.Fleets[i].Namespace+"/"+t.s.Fleets[i].Name] = true
	}
	var standalone []*vendingv1alpha1.VendingMachine
	for i := range t.s.Machines {
		vm := &t.s.Machines[i]
		if f := fleetOf(vm); f != "" && fleets[vm.Namespace+"/"+f] {
			byFleet[vm.Namespace+"/"+f] = append(byFleet[vm.Namespace+"/"+f], vm)
			continue
		}
		standalone = append(standalone, vm)
	}
	var top []node
	for i := range t.s.Fleets {
		f := &t.s.Fleets[i]
		j := judgeFleet(f)
		machines := byFleet[f.Namespace+"/"+f.Name]
		top = append(top, node{sev: j.sev, name: f.Namespace + "/" + f.Name, emit: func(prefix, child string) {
			t.add(row{namespace: f.Namespace, prefix: prefix, name: "VendingFleet/" + f.Name, ready: f.Status.Ready,
				phase: fleetPhase(j), since: t.since(f.Status.Conditions), message: why(j), sev: j.sev})
			t.machines(machines, child)
		}})
	}
	// Machines without a fleet: problems are top-level nodes of their own, healthy ones one line.
	var healthy []*vendingv1alpha1.VendingMachine
	for _, vm := range standalone {
		j := judgeMachine(vm)
		if j.sev == sevHealthy && !t.o.All {
			healthy = append(healthy, vm)
			continue
		}
		top = append(top, node{sev: j.sev, name: vm.Namespace + "/" + vm.Name, emit: func(prefix, child string) {
			t.machine(vm, j, prefix, child)
		}})
	}
	sortNodes(top)
	for _, n := range top {
		n.emit("", "")
	}
	if len(healthy) > 0 {
		t.add(row{namespace: namespaceOf(healthy), name: readyGroup(len(healthy), "without a fleet"), sev: sevHealthy})
	}
	if len(t.rows) == 0 {
		t.add(row{name: "No VendingFleets or VendingMachines found", sev: sevNone})
	}
}

// machines adds a fleet's machines under it, problems first, the healthy ones grouped.
func (t *treeBuilder) machines(vms []*vendingv1alpha1.VendingMachine, prefix string) {
	var nodes []node
	healthy := 0
	for _, vm := range vms {
		j := judgeMachine(vm)
		if j.sev == sevHealthy && !t.o.All {
			healthy++
			continue
		}
		nodes = append(nodes, node{sev: j.sev, name: vm.Name, index: indexOf(vm), emit: func(p, c string) {
			t.machine(vm, j, p, c)
		}})
	}
	sortNodes(nodes)
	if healthy > 0 {
		ns := ""
		if len(vms) > 0 {
			ns = vms[0].Namespace
		}
		nodes = append(nodes, node{emit: func(p, _ string) {
			t.add(row{namespace: ns, prefix: p, name: readyGroup(healthy, ""), sev: sevHealthy})
		}})
	}
	for i, n := range nodes {
		last := i == len(nodes)-1
		n.emit(prefix+branch(last), prefix+indent(last))
	}
}

// machine adds a machine's line and, under it, its pod and its claim.
func (t *treeBuilder) machine(vm *vendingv1alpha1.VendingMachine, j judgement, prefix, child string) {
	t.add(row{namespace: vm.Namespace, prefix: prefix, name: "VendingMachine/" + vm.Name,
		ready:    conditionStatus(vm.Status.Conditions, vendingv1alpha1.ConditionReady),
		phase:    string(vm.Status.Phase),
		restarts: strconv.Itoa(int(vm.Status.Restarts)),
		since:    t.since(vm.Status.Conditions), message: why(j), sev: j.sev})
	var children []row
	if name := vm.Status.PodName; name != "" {
		children = append(children, t.podRow(vm.Namespace, name))
	}
	children = append(children, t.claimRow(vm.Namespace, cmp.Or(vm.Status.LogClaim, vm.Name+"-log")))
	for i, r := range children {
		r.prefix = child + branch(i == len(children)-1)
		t.add(r)
	}
}

func (t *treeBuilder) podRow(ns, name string) row {
	r := row{namespace: ns, name: "Pod/" + name, sev: sevNone}
	var pod *corev1.Pod
	for i := range t.s.Pods {
		if t.s.Pods[i].Namespace == ns && t.s.Pods[i].Name == name {
			pod = &t.s.Pods[i]
		}
	}
	if pod == nil {
		r.ready, r.phase, r.message = "-", "Missing", "the pod object is gone (status.lastFailure keeps what it reported)"
		return r
	}
	r.phase = string(pod.Status.Phase)
	if pod.DeletionTimestamp != nil {
		r.phase = "Terminating"
	}
	r.ready = "False"
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			r.ready = string(c.Status)
			r.since = t.ago(c.LastTransitionTime)
		}
	}
	for _, cs := range pod.Status.ContainerStatuses {
		switch {
		case cs.State.Terminated != nil:
			r.message = fmt.Sprintf("container %s: %s (exit code %d)", cs.Name, cs.State.Terminated.Reason, cs.State.Terminated.ExitCode)
		case cs.State.Waiting != nil:
			r.message = strings.TrimSuffix(fmt.Sprintf("container %s: %s %s", cs.Name, cs.State.Waiting.Reason, cs.State.Waiting.Message), " ")
		}
	}
	return r
}

func (t *treeBuilder) claimRow(ns, name string) row {
	r := row{namespace: ns, name: "PVC/" + name, sev: sevNone}
	for i := range t.s.Claims {
		c := &t.s.Claims[i]
		if c.Namespace == ns && c.Name == name {
			r.phase = string(c.Status.Phase)
			if q, ok := c.Status.Capacity[corev1.ResourceStorage]; ok {
				r.message = q.String()
			}
			return r
		}
	}
	r.phase = "Missing"
	return r
}

func (t *treeBuilder) add(r row) { t.rows = append(t.rows, r) }

// since is how long ago the Ready condition last changed.
func (t *treeBuilder) since(conds []metav1.Condition) string {
	if c := meta.FindStatusCondition(conds, vendingv1alpha1.ConditionReady); c != nil {
		return t.ago(c.LastTransitionTime)
	}
	return ""
}

func (t *treeBuilder) ago(at metav1.Time) string {
	if at.IsZero() {
		return ""
	}
	return duration.HumanDuration(t.o.Now.Sub(at.Time))
}

func why(j judgement) string {
	if j.sev == sevHealthy || j.sev == sevNone {
		return ""
	}
	return shorten(j.reason+": "+j.message, messageWidth)
}

// shorten cuts s to at most n runes, on one line.
func shorten(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return strings.TrimRight(string(r[:n-1]), " ,;:.") + "…"
}

func readyGroup(n int, what string) string {
	s := fmt.Sprintf("%d machines Ready", n)
	if n == 1 {
		s = "1 machine Ready"
	}
	if what != "" {
		s += " (" + what + ")"
	}
	return s
}

func fleetOf(vm *vendingv1alpha1.VendingMachine) string {
	if ref := metav1.GetControllerOf(vm); ref != nil && ref.Kind == "VendingFleet" {
		return ref.Name
	}
	return vm.Labels[labelFleet]
}

func indexOf(vm *vendingv1alpha1.VendingMachine) int {
	if n, err := strconv.Atoi(vm.Labels[labelIndex]); err == nil {
		return n
	}
	return -1
}

func namespaceOf(vms []*vendingv1alpha1.VendingMachine) string {
	ns := vms[0].Namespace
	for _, vm := range vms {
		if vm.Namespace != ns {
			return "*"
		}
	}
	return ns
}

// sortNodes puts the worst first; among equals, a fleet's machines in index order, then names.
func sortNodes(ns []node) {
	slices.SortStableFunc(ns, func(a, b node) int {
		return cmp.Or(cmp.Compare(a.sev, b.sev), cmp.Compare(a.index, b.index), strings.Compare(a.name, b.name))
	})
}

func branch(last bool) string {
	if last {
		return "└─ "
	}
	return "├─ "
}

func indent(last bool) string {
	if last {
		return "   "
	}
	return "│  "
}

// renderRows aligns the columns on the uncolored text, then paints whole cells, so that escape
// codes never shift a column.
func renderRows(rows []row, o TreeOptions) string {
	header := row{namespace: "NAMESPACE", name: "NAME", ready: "READY", phase: "PHASE", restarts: "RESTARTS",
		since: "SINCE", message: "MESSAGE", sev: sevNone}
	all := append([]row{header}, rows...)
	first := 0 // the NAME column; NAMESPACE comes before it with -A
	if o.Namespaces {
		first = 1
	}
	nameCol, phaseCol, messageCol := first, first+2, first+5
	cells := func(r row) []string {
		c := []string{r.prefix + r.name, r.ready, r.phase, r.restarts, r.since, r.message}
		if o.Namespaces {
			c = append([]string{r.namespace}, c...)
		}
		return c
	}
	widths := make([]int, len(cells(header)))
	for _, r := range all {
		for i, c := range cells(r) {
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	p := painter(o.Color)
	var b strings.Builder
	for n, r := range all {
		cs := cells(r)
		var line strings.Builder
		for i, c := range cs {
			pad := ""
			if i < len(cs)-1 {
				pad = strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c)+2)
			}
			switch {
			case n == 0:
				c = p.bold(c)
			case i == nameCol: // the tree stays plain, the name takes the color
				c = r.prefix + p.paint(r.sev, r.name)
			case i == phaseCol || i == messageCol:
				c = p.paint(r.sev, c)
			}
			line.WriteString(c + pad)
		}
		b.WriteString(strings.TrimRight(line.String(), " ") + "\n")
	}
	return b.String()
}
