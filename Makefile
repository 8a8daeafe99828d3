# vending-operator. `make help` lists the targets.

# Image names. The vending pod image is what the operator starts for each machine.
IMG ?= vendingfleet/vending-operator:dev
VENDING_IMG ?= vendingfleet/vendingpod:dev

K8S_VERSION ?= v1.37.2
CONTROLPLANE_DIR ?= $(LOCALBIN)/k8s/$(K8S_VERSION)

# Tools, pinned and installed into ./bin.
LOCALBIN ?= $(shell pwd)/bin
CONTROLLER_TOOLS_VERSION ?= v0.23.0
KUSTOMIZE_VERSION ?= v5.8.2
GOLANGCI_LINT_VERSION ?= v2.15.0
CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
KUSTOMIZE ?= $(LOCALBIN)/kustomize-$(KUSTOMIZE_VERSION)
GOLANGCI_LINT ?= $(LOCALBIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
KUBECTL ?= $(CONTROLPLANE_DIR)/kubectl

CONTAINER_TOOL ?= docker
GO_TEST_FLAGS ?=
CHAOS_DURATION ?= 2m

SHELL = /usr/bin/env bash -o pipefail
.SHELLFLAGS = -ec

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: controller-gen ## Generate the CRDs and the RBAC role from markers.
	"$(CONTROLLER_GEN)" rbac:roleName=manager-role crd paths="./..." output:crd:artifacts:config=config/crd/bases

.PHONY: generate
generate: controller-gen ## Generate DeepCopy methods.
	"$(CONTROLLER_GEN)" object paths="./api/..."

.PHONY: fmt
fmt: ## go fmt.
	go fmt ./...

.PHONY: vet
vet: ## go vet, including the e2e suite.
	go vet ./...
	go vet -tags e2e ./test/...

.PHONY: lint
lint: golangci-lint ## golangci-lint.
	"$(GOLANGCI_LINT)" run

.PHONY: lint-fix
lint-fix: golangci-lint ## golangci-lint with fixes.
	"$(GOLANGCI_LINT)" run --fix

.PHONY: controlplane
controlplane: ## Build etcd, kube-apiserver, kube-scheduler, kube-controller-manager, kubectl from Go modules into bin/k8s.
	K8S_VERSION=$(K8S_VERSION) CONTROLPLANE_DIR=$(CONTROLPLANE_DIR) hack/build-controlplane.sh >/dev/null

.PHONY: test
test: manifests generate fmt vet controlplane ## Unit tests and the envtest suite (real kube-apiserver + etcd).
	KUBEBUILDER_ASSETS="$(CONTROLPLANE_DIR)" go test $(GO_TEST_FLAGS) ./... -coverprofile cover.out

.PHONY: test-e2e
test-e2e: manifests kustomize ## End-to-end suite: against KUBECONFIG's cluster, or (unset) the local cluster, brought up and deployed.
	@if [ -z "$$KUBECONFIG" ]; then \
	  hack/local-cluster.sh up && export KUBECONFIG="$(LOCAL_KUBECONFIG)" && \
	  $(MAKE) --no-print-directory install deploy >/dev/null && \
	  "$(KUBECTL)" -n vending-operator-system rollout restart deploy/vending-operator-controller-manager && \
	  "$(KUBECTL)" -n vending-operator-system rollout status deploy/vending-operator-controller-manager --timeout=180s && \
	  export E2E_NODE_STOP="$(CURDIR)/hack/local-cluster.sh node-stop" E2E_NODE_START="$(CURDIR)/hack/local-cluster.sh node-start" \
	    E2E_APISERVER_STOP="$(CURDIR)/hack/local-cluster.sh apiserver-kill" E2E_APISERVER_START="$(CURDIR)/hack/local-cluster.sh apiserver-start"; \
	fi; \
	go test -tags e2e -count=1 -timeout 20m -v ./test/e2e/

# deploy-local: the local cluster (NODES of them) up, with the operator of this tree deployed and restarted.
define deploy-local
	NODES=$(1) hack/local-cluster.sh up && export KUBECONFIG="$(LOCAL_KUBECONFIG)" && \
	  $(MAKE) --no-print-directory install deploy >/dev/null && \
	  "$(KUBECTL)" -n vending-operator-system rollout restart deploy/vending-operator-controller-manager && \
	  "$(KUBECTL)" -n vending-operator-system rollout status deploy/vending-operator-controller-manager --timeout=180s
endef

.PHONY: test-e2e-nodes
test-e2e-nodes: manifests kustomize ## Three-node suite on the local cluster (grown to 3 nodes): power-off + fence, partition, drain, a fleet rollout across nodes.
	@$(call deploy-local,3) && \
	  E2E_LOCAL_CLUSTER="$(CURDIR)/hack/local-cluster.sh" go test -tags e2e -count=1 -timeout 30m -v \
	    -run 'TestMultiNode|TestFleetHealsOneMachineAndRollsUnderLoad' ./test/e2e/

.PHONY: bench-failover
bench-failover: manifests kustomize ## After a power-off and the fence: time to Ready on another node, operator vs a StatefulSet (3 nodes).
	@$(call deploy-local,3) && \
	  E2E_LOCAL_CLUSTER="$(CURDIR)/hack/local-cluster.sh" go test -tags e2e -run '^$$' -bench NodeFailover -benchtime 3x \
	    -timeout 30m -v ./test/e2e/

##@ Local cluster (a real node without Docker: containerd, kubelet, kube-proxy; root)

LOCAL_KUBECONFIG ?= $(shell pwd)/.local-cluster/admin.kubeconfig

.PHONY: demo
demo: manifests kustomize ## The talk's demo on a real node: local cluster (unless KUBECONFIG), operator, machine, customer.
	hack/demo.sh

NODES ?= 1
.PHONY: local-up
local-up: ## Start (or resume) the local cluster (NODES=3: three nodes); prints its kubeconfig.
	NODES=$(NODES) hack/local-cluster.sh up

.PHONY: local-down
local-down: ## Stop every process of the local cluster, unmount, remove its bridge and rules.
	hack/local-cluster.sh down

.PHONY: local-images
local-images: ## Rebuild the operator and vending pod images and import them into the local cluster.
	hack/local-cluster.sh images

.PHONY: chaos
chaos: ## Crash-simulation, power-cut (FUSE, root) and history (porcupine) suites for CHAOS_DURATION each (2m), then a verdict table.
	CHAOS_DURATION=$(CHAOS_DURATION) hack/chaos.sh

.PHONY: bench
bench: ## Micro-benchmarks: the event log (group commit) and the vending pod (replay, start-to-ready).
	go test ./internal/eventlog/ -run XXX -bench . -benchtime 3s
	go test ./internal/vendingpod/ -run XXX -bench 'Replay|StartToReady' -benchtime 5x

.PHONY: bench-scale
bench-scale: build controlplane ## The operator at scale (envtest): 1,000 machines and 100 failures; a fleet of 1,000 and 100 escalations.
	go run ./hack/scalebench -machines 1000 -failures 100 -manager bin/manager -assets "$(CONTROLPLANE_DIR)"
	go run ./hack/scalebench -fleet -fleet-size 1000 -machines 1000 -failures 100 -manager bin/manager -assets "$(CONTROLPLANE_DIR)"

.PHONY: bench-scale-10k
bench-scale-10k: build controlplane ## 10,000 machines on one operator (about 15 minutes): 1,000 failures at once; then 10 fleets of 1,000.
	go run ./hack/scalebench -machines 10000 -failures 1000 -settle-timeout 20m -manager bin/manager -assets "$(CONTROLPLANE_DIR)"
	go run ./hack/scalebench -fleet -fleet-size 1000 -machines 10000 -failures 100 -settle-timeout 20m -manager bin/manager -assets "$(CONTROLPLANE_DIR)"

##@ Build

.PHONY: build
build: manifests generate fmt vet build-plugin ## Build the manager, vending pod and kubectl-vend binaries into bin/.
	CGO_ENABLED=0 go build -trimpath -o bin/manager ./cmd/manager
	CGO_ENABLED=0 go build -trimpath -o bin/vendingpod ./cmd/vendingpod

.PHONY: build-plugin
build-plugin: ## Build the kubectl plugin into bin/kubectl-vend (put bin/ on PATH: kubectl vend).
	CGO_ENABLED=0 go build -trimpath -o bin/kubectl-vend ./cmd/kubectl-vend

.PHONY: plugin-release
plugin-release: ## kubectl-vend archives for krew (linux/darwin, amd64/arm64) and their manifest in dist/krew (VERSION=v0.1.0).
	hack/krew/release.sh $(or $(VERSION),v0.1.0)

.PHONY: run
run: manifests generate fmt vet ## Run the manager on this machine against the current kubeconfig.
	go run ./cmd/manager --metrics-bind-address=127.0.0.1:8082 --metrics-secure=false --health-probe-bind-address=127.0.0.1:8081 --vending-image=$(VENDING_IMG)

.PHONY: docker-build
docker-build: ## Build the manager and vending pod images with Docker (where a Docker engine exists).
	$(CONTAINER_TOOL) build -t $(IMG) -f Dockerfile .
	$(CONTAINER_TOOL) build -t $(VENDING_IMG) -f Dockerfile.vendingpod .

.PHONY: docker-push
docker-push: ## Push the images.
	$(CONTAINER_TOOL) push $(IMG)
	$(CONTAINER_TOOL) push $(VENDING_IMG)

.PHONY: build-installer
build-installer: manifests generate kustomize ## One YAML with CRDs and the deployment: dist/install.yaml.
	mkdir -p dist
	cd config/manager && "$(KUSTOMIZE)" edit set image controller=$(IMG)
	"$(KUSTOMIZE)" build config/default > dist/install.yaml

##@ Deployment

ifndef ignore-not-found
  ignore-not-found = false
endif

.PHONY: install
install: manifests kustomize kubectl ## Install the CRDs into the cluster KUBECONFIG names.
	"$(KUSTOMIZE)" build config/crd | "$(KUBECTL)" apply --server-side -f -

.PHONY: uninstall
uninstall: manifests kustomize kubectl ## Remove the CRDs. ignore-not-found=true to ignore missing ones.
	"$(KUSTOMIZE)" build config/crd | "$(KUBECTL)" delete --ignore-not-found=$(ignore-not-found) -f -

.PHONY: deploy
deploy: manifests kustomize kubectl ## Deploy the operator (kubectl apply -k config/default, image IMG).
	cd config/manager && "$(KUSTOMIZE)" edit set image controller=$(IMG)
	"$(KUSTOMIZE)" build config/default | "$(KUBECTL)" apply --server-side -f -

.PHONY: undeploy
undeploy: kustomize kubectl ## Remove the operator. ignore-not-found=true to ignore missing objects.
	"$(KUSTOMIZE)" build config/default | "$(KUBECTL)" delete --ignore-not-found=$(ignore-not-found) -f -

##@ Dependencies

$(LOCALBIN):
	mkdir -p "$(LOCALBIN)"

.PHONY: kubectl
kubectl: ## kubectl v1.37.2, built from Go modules unless KUBECTL names one.
	@[ -x "$(KUBECTL)" ] || hack/build-controlplane.sh kubectl >/dev/null

.PHONY: controller-gen
controller-gen: $(CONTROLLER_GEN) ## controller-gen into ./bin.
$(CONTROLLER_GEN): | $(LOCALBIN)
	$(call go-install-tool,$(CONTROLLER_GEN),sigs.k8s.io/controller-tools/cmd/controller-gen,$(CONTROLLER_TOOLS_VERSION))

.PHONY: kustomize
kustomize: $(KUSTOMIZE) ## kustomize into ./bin.
$(KUSTOMIZE): | $(LOCALBIN)
	$(call go-install-tool,$(KUSTOMIZE),sigs.k8s.io/kustomize/kustomize/v5,$(KUSTOMIZE_VERSION))

.PHONY: golangci-lint
golangci-lint: $(GOLANGCI_LINT) ## golangci-lint into ./bin.
$(GOLANGCI_LINT): | $(LOCALBIN)
	$(call go-install-tool,$(GOLANGCI_LINT),github.com/golangci/golangci-lint/v2/cmd/golangci-lint,$(GOLANGCI_LINT_VERSION))

# go-install-tool installs package $2 at version $3 as $1 (versioned name), with a symlink
# without the version for convenience.
define go-install-tool
@[ -f "$(1)" ] || { \
set -e; \
package=$(2)@$(3) ;\
echo "Downloading $${package}" ;\
rm -f "$(1)" ;\
GOBIN="$(LOCALBIN)" go install $${package} ;\
mv "$(LOCALBIN)/$$(basename "$(1)" | sed 's/-$(3)$$//')" "$(1)" ;\
} ;\
ln -sf "$$(realpath "$(1)")" "$$(echo "$(1)" | sed 's/-$(3)$$//')"
endef
