// Package controller holds the reconcilers of the vending-operator: the thin imperative shell
// that observes children, asks the pure policies (internal/supervision) what to do, acts, and
// writes status and events.
package controller

import (
	"context"

	"k8s.io/apimachinery/pkg/runtime"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	vendingv1alpha1 "github.com/vendingfleet/vending-operator/api/v1alpha1"
)

// DefaultVendingImage is the vending pod image for machines that name none.
const DefaultVendingImage = "vendingfleet/vendingpod:dev"

// Options tunes the controllers.
type Options = controller.Options

// VendingMachineReconciler supervises VendingMachines.
type VendingMachineReconciler struct {
	client.Client
	Scheme       *runtime.Scheme
	Recorder     recorder.EventRecorder
	VendingImage string
}

// +kubebuilder:rbac:groups=vending.resilience.dev,resources=vendingmachines,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=vending.resilience.dev,resources=vendingmachines/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=vending.resilience.dev,resources=vendingmachines/finalizers,verbs=update

// Reconcile moves one VendingMachine toward its spec.
func (r *VendingMachineReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	vm := &vendingv1alpha1.VendingMachine{}
	if err := r.Get(ctx, req.NamespacedName, vm); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	return ctrl.Result{}, nil
}

// SetupWithManager registers the reconciler with the manager.
func (r *VendingMachineReconciler) SetupWithManager(mgr ctrl.Manager, opts Options) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&vendingv1alpha1.VendingMachine{}).
		WithOptions(opts).
		Named("vendingmachine").
		Complete(r)
}
