//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/vendingfleet/vending-operator/internal/contract"
)

// kubectl is the kubectl the suite runs as a user would: $KUBECTL, or the one make builds.
func kubectl(t *testing.T) string {
	if k := os.Getenv("KUBECTL"); k != "" {
		return k
	}
	_, here, _, _ := runtime.Caller(0)
	k := filepath.Join(filepath.Dir(here), "..", "..", "bin", "k8s", "v1.37.2", "kubectl")
	if _, err := os.Stat(k); err != nil {
		t.Fatalf("no kubectl: set KUBECTL or run make kubectl: %v", err)
	}
	return k
}

// The first thing a user tries: kubectl port-forward to the machine's pod and to its Service,
// then play customer on localhost. It reaches the pod's localhost, so the vending pod must
// listen there too, not only on its pod IP.
func TestPortForwardReachesTheMachine(t *testing.T) {
	g := NewWithT(t)
	vm := createMachine(t, nil)
	waitReady(g, vm)
	pod := machineStatus(g, vm).PodName
	for _, target := range []string{"pod/" + pod, "svc/" + vm.Name} {
		addr := portForward(t, g, vm.Namespace, target)
		var st contract.State
		g.Eventually(func(g Gomega) {
			resp, err := http.Get("http://" + addr + "/v1/state")
			g.Expect(err).NotTo(HaveOccurred())
			defer func() { _ = resp.Body.Close() }()
			body, _ := io.ReadAll(resp.Body)
			g.Expect(resp.StatusCode).To(Equal(http.StatusOK), "%s", body)
			g.Expect(json.Unmarshal(body, &st)).To(Succeed())
		}).WithTimeout(30 * time.Second).Should(Succeed())
		t.Logf("kubectl port-forward %s: GET /v1/state answered %+v", target, st)
	}
}

var forwarding = regexp.MustCompile(`Forwarding from (127\.0\.0\.1:\d+) -> 8080`)

// portForward runs kubectl port-forward TARGET :8080 (a free local port) until the test ends,
// and returns the local address it forwards from.
func portForward(t *testing.T, g Gomega, ns, target string) string {
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, kubectl(t), "-n", ns, "port-forward", "--address", "127.0.0.1", target, ":8080")
	out, err := cmd.StdoutPipe()
	g.Expect(err).NotTo(HaveOccurred())
	cmd.Stderr = os.Stderr
	g.Expect(cmd.Start()).To(Succeed())
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	addr := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			if m := forwarding.FindStringSubmatch(s.Text()); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
			fmt.Fprintln(os.Stderr, "kubectl port-forward: "+s.Text()) // not t.Log: it may outlive the test
		}
	}()
	select {
	case a := <-addr:
		return a
	case <-time.After(30 * time.Second):
		t.Fatalf("kubectl port-forward %s said nowhere where it forwards from", target)
		return ""
	}
}
