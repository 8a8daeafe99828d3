package managerloop

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
)

// NewIdentity is this process's name in the lease, kept across all its managers: the hostname
// (the pod's name) and a UUID for this process, as controller-runtime makes one per manager.
func NewIdentity() (string, error) {
	host, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("managerloop: identity: %w", err)
	}
	return host + "_" + string(uuid.NewUUID()), nil
}

const inClusterNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// leaseNamespace is the namespace given, or the pod's own (what controller-runtime defaults to).
func leaseNamespace(ns string) (string, error) {
	if ns != "" {
		return ns, nil
	}
	b, err := os.ReadFile(inClusterNamespace)
	if err != nil {
		return "", fmt.Errorf("managerloop: not running in a pod: set the leader election namespace: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// newLock is the process's one lease lock, with a client whose requests time out within the
// renew deadline (as controller-runtime sets it: a hung request must not cost the lease).
func newLock(cfg *rest.Config, ns, name, identity string, renewDeadline time.Duration,
	events record.EventRecorder) (resourcelock.Interface, error) {
	cfg = rest.AddUserAgent(rest.CopyConfig(cfg), "leader-election")
	cfg.Timeout = max(renewDeadline/2, time.Second)
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("managerloop: lease client: %w", err)
	}
	return resourcelock.New(resourcelock.LeasesResourceLock, ns, name, cs.CoreV1(), cs.CoordinationV1(),
		resourcelock.ResourceLockConfig{Identity: identity, EventRecorder: events})
}

var errReleaseRefused = errors.New("managerloop: the lease is not released while the process goes on or a controller still runs")

// gatedLock refuses to release the lease (an update to an empty holder) unless mayRelease says
// so. client-go releases a lease with ReleaseOnCancel also after a failed renewal, before the
// manager's controllers are told to stop; only releasing on the way out, after they stopped,
// keeps another replica from leading while ours still acts.
type gatedLock struct {
	resourcelock.Interface
	mayRelease func() bool
}

func (l gatedLock) Update(ctx context.Context, rec resourcelock.LeaderElectionRecord) error {
	if rec.HolderIdentity == "" && !l.mayRelease() {
		return errReleaseRefused
	}
	return l.Interface.Update(ctx, rec)
}
