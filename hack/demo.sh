#!/usr/bin/env bash
# make demo: the talk's vending machine, supervised by the operator, on a real node.
# Uses the cluster KUBECONFIG names; without one, brings up the local cluster (root, no Docker).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
K8S_VERSION=${K8S_VERSION:-v1.37.2}
kubectl=${KUBECTL:-$root/bin/k8s/$K8S_VERSION/kubectl}

if [ -z "${KUBECONFIG:-}" ]; then
  echo "== no KUBECONFIG: bringing up the local cluster (the first run builds the control plane: minutes)"
  hack/local-cluster.sh up
  export KUBECONFIG=$root/.local-cluster/admin.kubeconfig
else
  echo "== using the cluster KUBECONFIG names ($KUBECONFIG); its nodes need the images (bin/images/*.tar)"
  hack/build-controlplane.sh kubectl
fi

echo "== installing the CRDs and deploying the operator (make install deploy)"
make --no-print-directory install deploy IMG="${IMG:-vendingfleet/vending-operator:dev}" >/dev/null
"$kubectl" -n vending-operator-system rollout status deploy/vending-operator-controller-manager --timeout=180s

echo "== applying the talk's machine (config/samples) in namespace demo"
"$kubectl" create namespace demo --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
"$kubectl" -n demo delete vendingmachine coffee --ignore-not-found --wait >/dev/null
"$kubectl" -n demo delete pvc coffee-log --ignore-not-found --wait=false >/dev/null
"$kubectl" -n demo apply -f config/samples/vending_v1alpha1_vendingmachine.yaml
"$kubectl" -n demo wait vendingmachine/coffee --for=jsonpath='{.status.phase}'=Running --timeout=180s

go run ./hack/demo -namespace demo -machine coffee

echo
echo "== kubectl get vendingmachines"
"$kubectl" -n demo get vendingmachines
echo
echo "== kubectl describe vendingmachine coffee"
"$kubectl" -n demo describe vendingmachine coffee
