// Package argocdhealth runs Argo CD resource health checks (the health.lua scripts under
// config/argocd/resource_customizations) the way Argo CD runs them, so that they can be tested on
// fixtures (the health_test.yaml files, in Argo CD's own format) and on live objects in e2e.
//
// The lua state is Argo CD's for a script installed through argocd-cm (util/lua/lua.go, runLua
// and ExecuteHealthLua, with useOpenLibs off, its default): only the package, base and table
// libraries are open, and require("os") returns a table holding time and date; there is no
// string, math, io or os global. The object is the unstructured object turned into Lua tables
// (decodeValue), the script's last return value must be a table, and it is read through JSON into
// {status, message}; a status Argo CD does not know becomes Unknown. A script that runs here
// therefore runs in Argo CD, with the same result.
//
// Before any health check, Argo CD (gitops-engine pkg/health, GetResourceHealth) shows an object
// being deleted as Progressing, "Pending deletion", unless it is a sync hook holding Argo CD's hook
// finalizer; Run does the same, so the script never sees such an object.
package argocdhealth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// Argo CD's health status codes (gitops-engine pkg/health).
const (
	Healthy     = "Healthy"
	Progressing = "Progressing"
	Degraded    = "Degraded"
	Suspended   = "Suspended"
	Missing     = "Missing"
	Unknown     = "Unknown"
)

// Status is what a health script says about an object: Argo CD's HealthStatus.
type Status struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
}

// invalidStatus is Argo CD's message for a status it does not know.
const invalidStatus = "Lua returned an invalid health status"

// timeout is Argo CD's limit for one health script.
const timeout = time.Second

// Run runs a health script on an object (as decoded from JSON or YAML, or from an unstructured
// object: numbers may be float64 or int64) and returns what Argo CD would show.
func Run(script string, obj map[string]any) (Status, error) {
	if pendingDeletion(obj) {
		return Status{Status: Progressing, Message: pendingDeletionMessage}, nil
	}
	return runScript(script, obj)
}

// Argo CD's health of an object being deleted, and the finalizer of its sync hooks that makes
// the exception (gitops-engine pkg/sync/hook).
const (
	pendingDeletionMessage = "Pending deletion"
	hookFinalizer          = "argocd.argoproj.io/hook-finalizer"
)

// pendingDeletion says whether Argo CD shows the object as pending deletion without running its
// health check: it has a deletionTimestamp and is not a sync hook Argo CD holds.
func pendingDeletion(obj map[string]any) bool {
	u := unstructured.Unstructured{Object: obj}
	return u.GetDeletionTimestamp() != nil && !slices.Contains(u.GetFinalizers(), hookFinalizer)
}

// runScript runs the script as Argo CD runs an argocd-cm health script.
func runScript(script string, obj map[string]any) (Status, error) {
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer L.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		// Argo CD's OpenSafeOs registers its two functions under the table library's name: there
		// is no os global, only require("os").
		{lua.OsLibName, openSafeOs},
	} {
		if err := L.CallByParam(lua.P{Fn: L.NewFunction(lib.open), Protect: true}, lua.LString(lib.name)); err != nil {
			return Status{}, fmt.Errorf("argocdhealth: opening %s: %w", lib.name, err)
		}
	}
	L.PreloadModule(lua.OsLibName, func(L *lua.LState) int {
		L.Push(L.SetFuncs(L.NewTable(), safeOsFuncs()))
		return 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	L.SetContext(ctx)
	L.SetGlobal("obj", decodeValue(L, obj))
	if err := L.DoString(script); err != nil {
		return Status{}, fmt.Errorf("argocdhealth: %w", err)
	}
	ret := L.Get(-1)
	if ret.Type() != lua.LTTable {
		return Status{}, fmt.Errorf("argocdhealth: expect table output from Lua script, not %s", ret.Type())
	}
	v, err := encodeValue(ret, 0)
	if err != nil {
		return Status{}, fmt.Errorf("argocdhealth: %w", err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return Status{}, fmt.Errorf("argocdhealth: %w", err)
	}
	var st Status
	if err := json.Unmarshal(b, &st); err != nil {
		return Status{}, fmt.Errorf("argocdhealth: reading the script's table %s: %w", b, err)
	}
	switch st.Status {
	case Healthy, Progressing, Degraded, Suspended, Missing, Unknown:
		return st, nil
	}
	return Status{Status: Unknown, Message: invalidStatus}, nil
}

// safeOsFuncs are os.time and os.date, gopher-lua's own (Argo CD's safe os library is a copy of
// them), taken from a scratch state whose os library is never exposed.
func safeOsFuncs() map[string]lua.LGFunction {
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer L.Close()
	L.Push(L.NewFunction(lua.OpenOs))
	L.Call(0, 1)
	mod := L.Get(-1).(*lua.LTable)
	funcs := map[string]lua.LGFunction{}
	for _, name := range []string{"time", "date"} {
		funcs[name] = mod.RawGetString(name).(*lua.LFunction).GFunction
	}
	return funcs
}

func openSafeOs(L *lua.LState) int {
	L.Push(L.RegisterModule(lua.TabLibName, safeOsFuncs()))
	return 1
}

// decodeValue turns a Go value of an unstructured object into a Lua value, as Argo CD's
// decodeValue does: maps become tables with string keys, slices become arrays, numbers of any
// width become numbers, and anything else is nil.
func decodeValue(L *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case json.Number:
		return lua.LString(v)
	case int:
		return lua.LNumber(v)
	case int32:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case []any:
		arr := L.CreateTable(len(v), 0)
		for _, item := range v {
			arr.Append(decodeValue(L, item))
		}
		return arr
	case map[string]any:
		tbl := L.CreateTable(0, len(v))
		for key, item := range v {
			tbl.RawSetH(lua.LString(key), decodeValue(L, item))
		}
		return tbl
	}
	return lua.LNil
}

// maxDepth bounds encodeValue, as the JSON encoder Argo CD uses refuses nested tables that
// refer to themselves.
const maxDepth = 64

// encodeValue turns the script's result into a Go value for encoding/json, as the JSON encoder
// Argo CD reads it with (layeh.com/gopher-json) does: a table with an array part is an array, any
// other table an object with string keys (an empty table is an empty array).
func encodeValue(v lua.LValue, depth int) (any, error) {
	if depth > maxDepth {
		return nil, errors.New("nested table too deep, or a table that contains itself")
	}
	switch v := v.(type) {
	case *lua.LNilType:
		return nil, nil
	case lua.LBool:
		return bool(v), nil
	case lua.LNumber:
		return float64(v), nil
	case lua.LString:
		return string(v), nil
	case *lua.LTable:
		if v.MaxN() > 0 {
			arr := make([]any, 0, v.MaxN())
			for i := 1; i <= v.MaxN(); i++ {
				item, err := encodeValue(v.RawGetInt(i), depth+1)
				if err != nil {
					return nil, err
				}
				arr = append(arr, item)
			}
			return arr, nil
		}
		obj := map[string]any{}
		var err error
		v.ForEach(func(k, item lua.LValue) {
			key, ok := k.(lua.LString)
			if !ok {
				err = errors.Join(err, fmt.Errorf("cannot encode a table with a %s key", k.Type()))
				return
			}
			val, e := encodeValue(item, depth+1)
			err = errors.Join(err, e)
			obj[string(key)] = val
		})
		if err != nil {
			return nil, err
		}
		if len(obj) == 0 {
			return []any{}, nil
		}
		return obj, nil
	}
	return nil, fmt.Errorf("cannot encode a %s", v.Type())
}

// The layout of a resource customization, as in Argo CD's resource_customizations directory:
// <group>/<Kind>/health.lua, health_test.yaml and the fixtures it names.
const (
	ScriptFile = "health.lua"
	TestsFile  = "health_test.yaml"
)

// Tests is a health_test.yaml: each fixture with the health Argo CD must show for it.
type Tests struct {
	Tests []Test `json:"tests"`
}

// Test is one case of a health_test.yaml; inputPath is relative to the file.
type Test struct {
	HealthStatus Status `json:"healthStatus"`
	InputPath    string `json:"inputPath"`
}

// ReadTests reads the health_test.yaml of a customization directory.
func ReadTests(dir string) (Tests, error) {
	var ts Tests
	b, err := os.ReadFile(filepath.Join(dir, TestsFile))
	if err != nil {
		return ts, fmt.Errorf("argocdhealth: %w", err)
	}
	if err := yaml.UnmarshalStrict(b, &ts); err != nil {
		return ts, fmt.Errorf("argocdhealth: %s: %w", filepath.Join(dir, TestsFile), err)
	}
	return ts, nil
}

// ReadObject reads a fixture as Argo CD's tests do: YAML through JSON into a map.
func ReadObject(path string) (map[string]any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("argocdhealth: %w", err)
	}
	obj := map[string]any{}
	if err := yaml.Unmarshal(b, &obj); err != nil {
		return nil, fmt.Errorf("argocdhealth: %s: %w", path, err)
	}
	return obj, nil
}

// ReadScript reads the health.lua of a customization directory.
func ReadScript(dir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, ScriptFile))
	if err != nil {
		return "", fmt.Errorf("argocdhealth: %w", err)
	}
	return string(b), nil
}

// Merge returns the tests with each of produced in place of the test of the same inputPath, and
// those that were not there yet appended: regenerated fixtures replace their cases and keep the
// hand-written ones.
func Merge(tests Tests, produced []Test) Tests {
	out := Tests{Tests: append([]Test(nil), tests.Tests...)}
	for _, p := range produced {
		replaced := false
		for i := range out.Tests {
			if out.Tests[i].InputPath == p.InputPath {
				out.Tests[i], replaced = p, true
			}
		}
		if !replaced {
			out.Tests = append(out.Tests, p)
		}
	}
	return out
}
