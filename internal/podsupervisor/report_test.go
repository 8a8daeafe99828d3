package podsupervisor

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/vendingfleet/vending-operator/internal/contract"
)

// apiServer answers the pod's patches with the given status codes in turn (then 200), and
// records the reports it accepted.
type apiServer struct {
	mu       sync.Mutex
	codes    []int
	tries    int
	accepted []int32
	paths    []string
}

func (a *apiServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.tries++
	a.paths = append(a.paths, r.Method+" "+r.URL.Path+" "+r.Header.Get("Content-Type"))
	if len(a.codes) > 0 {
		code := a.codes[0]
		a.codes = a.codes[1:]
		w.WriteHeader(code)
		return
	}
	var patch struct {
		Metadata struct{ Annotations map[string]string }
	}
	var rep contract.InPlace
	_ = json.Unmarshal(body, &patch)
	_ = json.Unmarshal([]byte(patch.Metadata.Annotations[contract.AnnotationInPlace]), &rep)
	a.accepted = append(a.accepted, rep.Restarts)
}

func (a *apiServer) state() (tries int, accepted []int32, paths []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.tries, append([]int32(nil), a.accepted...), append([]string(nil), a.paths...)
}

func startAnnotator(t *testing.T, api *apiServer) *Annotator {
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	a, err := newAnnotator(ctx, &rest.Config{Host: srv.URL}, "ns", "coffee-0", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
	}
}

// While the API server is away the report is retried, and the newest report replaces one not
// sent yet: the status catches up with everything when the API server returns.
func TestReportRetriesAndTheLatestWins(t *testing.T) {
	api := &apiServer{codes: []int{http.StatusServiceUnavailable, http.StatusServiceUnavailable, http.StatusServiceUnavailable}}
	a := startAnnotator(t, api)
	a.Report(contract.InPlace{Restarts: 1})
	waitFor(t, "the first try", func() bool { tries, _, _ := api.state(); return tries >= 1 })
	a.Report(contract.InPlace{Restarts: 2}) // while the first is being retried
	a.Report(contract.InPlace{Restarts: 3})
	waitFor(t, "the report to be accepted", func() bool {
		_, acc, _ := api.state()
		return len(acc) > 0 && acc[len(acc)-1] == 3
	})
	tries, _, paths := api.state()
	if tries < 4 {
		t.Fatalf("%d tries; the three 503s were not retried", tries)
	}
	if paths[0] != "PATCH /api/v1/namespaces/ns/pods/coffee-0 application/merge-patch+json" {
		t.Fatalf("request %q", paths[0])
	}
}

// A refusal is retried too (an API server that has just come back answers 403 until its
// authorizer's caches are filled): the report gets through once it is allowed.
func TestReportRefusedIsRetried(t *testing.T) {
	api := &apiServer{codes: []int{http.StatusForbidden, http.StatusForbidden}}
	a := startAnnotator(t, api)
	a.Report(contract.InPlace{Restarts: 1})
	waitFor(t, "the report to be accepted after two refusals", func() bool {
		_, acc, _ := api.state()
		return len(acc) == 1 && acc[0] == 1
	})
}
