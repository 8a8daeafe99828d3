// Package v1alpha1 holds the API of the vending.resilience.dev group: VendingMachine, one
// supervised, event-logged vending machine, and VendingFleet, a supervisor of machines.
//
// +kubebuilder:object:generate=true
// +groupName=vending.resilience.dev
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of every type in this package.
	GroupVersion = schema.GroupVersion{Group: "vending.resilience.dev", Version: "v1alpha1"}

	// SchemeBuilder registers the types of this package with a runtime.Scheme. The package
	// depends on apimachinery only, so that clients can import it cheaply.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the types of this package to a runtime.Scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(scheme *runtime.Scheme) error {
	scheme.AddKnownTypes(GroupVersion, &VendingMachine{}, &VendingMachineList{}, &VendingFleet{}, &VendingFleetList{})
	metav1.AddToGroupVersion(scheme, GroupVersion)
	return nil
}
