package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// The kills. Each returns the kill instant: when the failure was set off.

// killContainer SIGKILLs the pod's vending container through containerd (b, c): its PID 1
// dies, and with it everything in the container.
func killContainer(ctx context.Context, ctr []string, pod *corev1.Pod) (time.Time, error) {
	id, _, err := runningTask(ctx, ctr, pod)
	if err != nil {
		return time.Time{}, err
	}
	at := time.Now()
	args := append(slices.Clone(ctr), "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id)
	if out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput(); err != nil {
		return time.Time{}, fmt.Errorf("%v: %v: %s", args, err, out)
	}
	return at, nil
}

// killWorker SIGKILLs the vending process that the container's PID 1 (the in-pod supervisor)
// runs as its one child (a2), from the host.
func killWorker(ctx context.Context, ctr []string, pod *corev1.Pod) (time.Time, error) {
	_, pid1, err := runningTask(ctx, ctr, pod)
	if err != nil {
		return time.Time{}, err
	}
	// Each thread lists the children it forked: PID 1 is a Go program, any of its threads may
	// have started the worker.
	threads, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid1))
	if err != nil {
		return time.Time{}, err
	}
	var children []string
	for _, t := range threads {
		b, err := os.ReadFile(t)
		if err != nil {
			return time.Time{}, err
		}
		children = append(children, strings.Fields(string(b))...)
	}
	if len(children) != 1 {
		return time.Time{}, fmt.Errorf("pod %s: PID 1 (host pid %d) has %d children %v, want the one worker "+
			"(is the image's supervisor in the pod?)", pod.Name, pid1, len(children), children)
	}
	worker, err := strconv.Atoi(children[0])
	if err != nil {
		return time.Time{}, err
	}
	at := time.Now()
	return at, syscall.Kill(worker, syscall.SIGKILL)
}

// outOfBeans is the talk's OutOfCoffeeBeans (a1): arm the fault, insert the coins, then order;
// the brew fails and the worker exits 10. The kill instant is when the order is sent. It
// returns once the order's connection failed (the worker is gone), so that no measured request
// can be answered by the worker before it dies.
func (cu *customer) outOfBeans(ctx context.Context, ip string) (time.Time, error) {
	steps := []struct {
		path, body string
		want       int
	}{
		{"/v1/faults/out-of-beans", "", http.StatusAccepted},
		{"/v1/coins", `{"count":2}`, http.StatusOK},
	}
	for _, s := range steps {
		code, body, err := post(ctx, cu.pooled, ip, s.path, s.body, cu.key("fault"))
		if err == nil && code != s.want {
			err = fmt.Errorf("%d %s", code, body)
		}
		if err != nil {
			return time.Time{}, fmt.Errorf("POST %s: %w", s.path, err)
		}
	}
	at := time.Now()
	code, body, err := post(ctx, cu.once, ip, "/v1/orders", `{"beverage":"BlackCoffee"}`, cu.key("order"))
	if err == nil {
		return time.Time{}, fmt.Errorf("POST /v1/orders with the beans out: %d %s, want no answer (the worker's exit)", code, body)
	}
	return at, nil
}

// runningTask finds the pod's running vending container in containerd, and its PID 1 on the
// host. containerd knows a restarted container before the pod status says so.
func runningTask(ctx context.Context, ctr []string, pod *corev1.Pod) (string, int, error) {
	filter := fmt.Sprintf(`labels."io.kubernetes.pod.uid"==%s,labels."io.kubernetes.container.name"==vending`, pod.UID)
	ids, err := ctrOut(ctx, ctr, "containers", "ls", "-q", filter)
	if err != nil {
		return "", 0, err
	}
	tasks, err := ctrOut(ctx, ctr, "tasks", "ls")
	if err != nil {
		return "", 0, err
	}
	ours := strings.Fields(string(ids))
	sc := bufio.NewScanner(bytes.NewReader(tasks))
	for sc.Scan() { // TASK PID STATUS
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[2] == "RUNNING" && slices.Contains(ours, f[0]) {
			pid, err := strconv.Atoi(f[1])
			return f[0], pid, err
		}
	}
	return "", 0, fmt.Errorf("pod %s: no running vending container among %v", pod.Name, ours)
}

func ctrOut(ctx context.Context, ctr []string, args ...string) ([]byte, error) {
	all := append(append(slices.Clone(ctr), "-n", "k8s.io"), args...)
	out, err := exec.CommandContext(ctx, all[0], all[1:]...).Output()
	if err != nil {
		return nil, fmt.Errorf("%v: %w", all, err)
	}
	return out, nil
}
