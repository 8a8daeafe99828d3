// Command provisioner is the local cluster's dynamic volume provisioner: for each claim of its
// StorageClasses it makes a directory on this machine and a hostPath PersistentVolume for it, so
// that users never pre-create volumes. It runs beside the control plane, as a process of the local
// cluster (not in a pod: every node is this machine).
//
//	provisioner -kubeconfig STATE/admin.kubeconfig -dir STATE/volumes -node NODE
//
// Two kinds of volume, told apart by the StorageClass parameter "storage":
//
//   - local (the default; class local-dir): pinned to the node of the claim's first pod (the
//     scheduler's selected node; -node when none was selected), like a node's own disk;
//   - network (class network-dir): no node affinity, standing for network-attached storage: all
//     nodes share this machine's file system, so the volume can follow its pod to another node.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

// Name is the provisioner the local cluster's StorageClasses name.
const Name = "vending.resilience.dev/local-dir"

// StorageParameter is the StorageClass parameter that chooses the kind of volume: StorageLocal
// (also when absent) or StorageNetwork.
const (
	StorageParameter = "storage"
	StorageLocal     = "local"
	StorageNetwork   = "network"
)

type dirProvisioner struct {
	dir  string
	node string
}

// Provision makes the volume's directory, writable by the pod's non-root user (hostPath
// volumes get no fsGroup treatment), and a PersistentVolume: pinned to the selected node (local) or
// to none (network).
func (p *dirProvisioner) Provision(_ context.Context, opts controller.ProvisionOptions) (*corev1.PersistentVolume, controller.ProvisioningState, error) {
	storage := opts.StorageClass.Parameters[StorageParameter]
	if storage != "" && storage != StorageLocal && storage != StorageNetwork {
		return nil, controller.ProvisioningFinished, fmt.Errorf("StorageClass %s: parameter %s=%q: want %q or %q",
			opts.StorageClass.Name, StorageParameter, storage, StorageLocal, StorageNetwork)
	}
	path := filepath.Join(p.dir, opts.PVName)
	if err := os.MkdirAll(path, 0o777); err != nil {
		return nil, controller.ProvisioningFinished, err
	}
	if err := os.Chmod(path, 0o777); err != nil {
		return nil, controller.ProvisioningFinished, err
	}
	hostPathType := corev1.HostPathDirectory
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: opts.PVName, Annotations: map[string]string{"pv.kubernetes.io/provisioned-by": Name}},
		Spec: corev1.PersistentVolumeSpec{
			PersistentVolumeReclaimPolicy: *opts.StorageClass.ReclaimPolicy,
			AccessModes:                   opts.PVC.Spec.AccessModes,
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: opts.PVC.Spec.Resources.Requests[corev1.ResourceStorage]},
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: path, Type: &hostPathType},
			},
		},
	}
	if storage != StorageNetwork {
		node := opts.SelectedNodeName
		if node == "" {
			node = p.node
		}
		pv.Spec.NodeAffinity = &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchExpressions: []corev1.NodeSelectorRequirement{{
				Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpIn, Values: []string{node},
			}},
		}}}}
	}
	return pv, controller.ProvisioningFinished, nil
}

// Delete removes a released volume's directory (reclaim policy Delete only; Retain keeps it).
func (p *dirProvisioner) Delete(_ context.Context, pv *corev1.PersistentVolume) error {
	if pv.Spec.HostPath == nil || filepath.Dir(pv.Spec.HostPath.Path) != filepath.Clean(p.dir) {
		return errors.New("not a volume of this provisioner")
	}
	return os.RemoveAll(pv.Spec.HostPath.Path)
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the local cluster")
	dir := flag.String("dir", "", "directory the volumes are made in")
	node := flag.String("node", "", "node of a local volume whose claim has no selected node")
	flag.Parse()
	if *kubeconfig == "" || *dir == "" || *node == "" {
		fmt.Fprintln(os.Stderr, "usage: provisioner -kubeconfig F -dir D -node N")
		os.Exit(2)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fail(err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		fail(err)
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	pc := controller.NewProvisionController(ctx, client, Name, &dirProvisioner{dir: *dir, node: *node},
		controller.LeaderElection(false))
	fmt.Println("provisioner: serving", Name, "in", *dir)
	pc.Run(ctx)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "provisioner:", err)
	os.Exit(1)
}
