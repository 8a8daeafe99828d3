#!/usr/bin/env bash
# A local Kubernetes cluster with one real node and no Docker, on this Linux machine (root):
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler   (from Go modules, bin/k8s)
#   containerd + runc + CNI plugins                                 (Debian's packages)
#   kubelet, kube-proxy                                             (from Go modules, bin/k8s)
#   a dynamic provisioner of directory volumes                      (hack/localcluster)
# Every byte stays on this machine: pods live in network namespaces on the bridge vending0,
# pod and service ranges are never routed off it, and forwarding out of the pod range is dropped.
#
# Usage: hack/local-cluster.sh up|down|status|images|node-stop|node-start|apiserver-stop|apiserver-kill|apiserver-start
#   up    idempotent; prints the kubeconfig and what it started. Logs in $STATE/logs.
#   down  stops every process it started (by pid), unmounts, removes the bridge and the rules.
# Stopping the kubelet (kill its pid) is a node loss; `up` again starts it: a node return.
# apiserver-stop / apiserver-kill / apiserver-start: an API server outage: a graceful stop (SIGTERM:
# it withdraws its endpoint from the kubernetes Service) or a crash (SIGKILL: the endpoint stays), then
# the same API server again.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
K8S_VERSION=${K8S_VERSION:-v1.37.2}
bin=${CONTROLPLANE_DIR:-$root/bin/k8s/$K8S_VERSION}
STATE=${LOCAL_CLUSTER_DIR:-$root/.local-cluster}
NODE=${LOCAL_NODE_NAME:-vending-node}
POD_CIDR=10.244.0.0/16
NODE_POD_CIDR=10.244.0.0/24
BRIDGE_IP=10.244.0.1
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1
BRIDGE=vending0
SANDBOX_IMAGE=vending.local/pause:dev

log() { echo ">> $*"; }
die() { echo "local-cluster: $*" >&2; exit 1; }

pidfile() { echo "$STATE/run/$1.pid"; }
running() { [ -f "$(pidfile "$1")" ] && kill -0 "$(cat "$(pidfile "$1")")" 2>/dev/null; }

# start NAME CMD...: runs a component in the background with its own log, unless it runs.
start() {
  local name=$1; shift
  if running "$name"; then return; fi
  "$@" >"$STATE/logs/$name.log" 2>&1 &
  echo $! >"$(pidfile "$name")"
  log "started $name (pid $!, log $STATE/logs/$name.log)"
}

wait_for() { # wait_for WHAT SECONDS CMD...
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "$what did not come up within ${secs}s; see $STATE/logs"
}

packages() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v openssl >/dev/null || missing+=(openssl)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >"$STATE/logs/apt.log" 2>&1 ||
      { apt-get update >>"$STATE/logs/apt.log" 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >>"$STATE/logs/apt.log" 2>&1; } ||
      die "apt-get install ${missing[*]} failed: $STATE/logs/apt.log"
  fi
}

binaries() {
  "$root/hack/build-controlplane.sh" etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy
  local lc="$root/hack/localcluster" out="$root/bin/localcluster"
  mkdir -p "$out"
  (cd "$lc" && CGO_ENABLED=0 go build -trimpath -o "$out/" ./cmd/...)
}

# pki makes a CA and the certificates of every component (openssl; once).
pki() {
  local d=$STATE/pki
  [ -f "$d/.done" ] && return
  mkdir -p "$d" && cd "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=vending-local-ca" 2>/dev/null
  cert() { # cert NAME SUBJECT [SANS]
    openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
    local ext="extendedKeyUsage=serverAuth,clientAuth"
    [ -n "${3:-}" ] && ext="$ext
subjectAltName=$3"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" -days 3650 \
      -extfile <(echo "$ext") 2>/dev/null
  }
  cert apiserver "/CN=kube-apiserver" \
    "IP:127.0.0.1,IP:$BRIDGE_IP,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
  cert admin "/O=system:masters/CN=local-admin"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  cert kubelet "/O=system:nodes/CN=system:node:$NODE" "IP:127.0.0.1,IP:$BRIDGE_IP,DNS:$NODE,DNS:localhost"
  cert controller-manager "/CN=system:kube-controller-manager"
  cert scheduler "/CN=system:kube-scheduler"
  cert proxy "/CN=system:kube-proxy"
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  touch .done
  cd - >/dev/null
}

kubeconfig() { # kubeconfig NAME CERT
  local f=$STATE/$1.kubeconfig
  [ -f "$f" ] && return
  cat >"$f" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: vending-local
  cluster: {server: "https://$BRIDGE_IP:6443", certificate-authority: "$STATE/pki/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$STATE/pki/$2.crt", client-key: "$STATE/pki/$2.key"}
contexts:
- name: vending-local
  context: {cluster: vending-local, user: $2}
current-context: vending-local
EOF
}

network() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$BRIDGE_IP/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
  fi
  sysctl -qw net.ipv4.ip_forward=1 || true
  # Pods talk to each other, to services and to this machine; nothing leaves it.
  iptables -C FORWARD -s "$POD_CIDR" ! -d "$POD_CIDR" -j DROP 2>/dev/null ||
    iptables -I FORWARD -s "$POD_CIDR" ! -d "$POD_CIDR" -j DROP
  mkdir -p "$STATE/cni/net.d"
  cat >"$STATE/cni/net.d/10-vending.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "vending",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$BRIDGE_IP"}]],
              "routes": [{"dst": "$POD_CIDR"}, {"dst": "$SERVICE_CIDR"}], "dataDir": "$STATE/cni/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

containerd_config() {
  cat >"$STATE/containerd.toml" <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
[grpc]
  address = "$STATE/run/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$SANDBOX_IMAGE"
  # This sandbox cannot lower oom_score_adj; without this runc fails with
  # "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
EOF
}

kubelet_config() {
  cat >"$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$STATE/run/containerd.sock
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$STATE/pki/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$STATE/pki/kubelet.crt"
tlsPrivateKeyFile: "$STATE/pki/kubelet.key"
address: $BRIDGE_IP
podCIDR: "$NODE_POD_CIDR"
resolvConf: ""
serializeImagePulls: false
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
  cat >"$STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$STATE/proxy.kubeconfig"}
hostnameOverride: $NODE
clusterCIDR: $POD_CIDR
mode: iptables
iptables: {masqueradeAll: true}
conntrack: {maxPerCore: 0}
EOF
}

up() {
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces, mounts, containerd)"
  mkdir -p "$STATE/logs" "$STATE/run"
  packages
  binaries
  pki
  kubeconfig admin admin
  kubeconfig controller-manager controller-manager
  kubeconfig scheduler scheduler
  kubeconfig kubelet kubelet
  kubeconfig proxy proxy
  network
  containerd_config
  kubelet_config

  local k=$bin
  start etcd "$k/etcd" --data-dir "$STATE/etcd" --listen-client-urls http://127.0.0.1:23790 \
    --advertise-client-urls http://127.0.0.1:23790 --listen-peer-urls http://127.0.0.1:23800 \
    --initial-advertise-peer-urls http://127.0.0.1:23800 --initial-cluster default=http://127.0.0.1:23800
  apiserver_start
  start kube-controller-manager "$k/kube-controller-manager" --kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --service-account-private-key-file "$STATE/pki/sa.key" --root-ca-file "$STATE/pki/ca.crt" \
    --use-service-account-credentials --leader-elect=false --service-cluster-ip-range "$SERVICE_CIDR" \
    --cluster-signing-cert-file "$STATE/pki/ca.crt" --cluster-signing-key-file "$STATE/pki/ca.key"
  start kube-scheduler "$k/kube-scheduler" --kubeconfig "$STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/scheduler.kubeconfig" --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
    --leader-elect=false
  start containerd containerd --config "$STATE/containerd.toml"
  wait_for containerd 30 ctr -a "$STATE/run/containerd.sock" version
  images
  node_start
  start kube-proxy "$k/kube-proxy" --config "$STATE/kube-proxy.yaml"
  start provisioner "$root/bin/localcluster/provisioner" -kubeconfig "$STATE/admin.kubeconfig" \
    -dir "$STATE/volumes" -node "$NODE"
  wait_for "node $NODE" 90 "$k/kubectl" --kubeconfig "$STATE/admin.kubeconfig" wait --for=condition=Ready "node/$NODE" --timeout=1s
  "$k/kubectl" --kubeconfig "$STATE/admin.kubeconfig" apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local-dir
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: vending.resilience.dev/local-dir
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
EOF
  log "cluster up: node $NODE Ready"
  echo "KUBECONFIG=$STATE/admin.kubeconfig"
}

# images builds the operator, vending pod and sandbox images from static binaries and imports
# them into containerd's k8s.io namespace (no registry, no Docker).
images() {
  (cd "$root" && CGO_ENABLED=0 go build -trimpath -o bin/manager ./cmd/manager &&
    CGO_ENABLED=0 go build -trimpath -o bin/vendingpod ./cmd/vendingpod &&
    CGO_ENABLED=0 go build -trimpath -o bin/vendinglog ./cmd/vendinglog)
  local tars
  tars=$("$root/bin/localcluster/images" -out "$root/bin/images" \
    "${IMG:-vendingfleet/vending-operator:dev}=$root/bin/manager" \
    "${VENDING_IMG:-vendingfleet/vendingpod:dev}=$root/bin/vendingpod,$root/bin/vendinglog" \
    "$SANDBOX_IMAGE=$root/bin/localcluster/pause")
  if ! running containerd; then
    log "built $(echo "$tars" | xargs -n1 basename | tr '\n' ' ')in bin/images (the local cluster is not up: not imported)"
    return
  fi
  for t in $tars; do
    ctr -a "$STATE/run/containerd.sock" -n k8s.io images import "$t" >/dev/null
  done
  log "imported images: $(echo "$tars" | xargs -n1 basename | tr '\n' ' ')"
}

# stop NAME: SIGTERM, wait for the process to go (its ports with it), SIGKILL after 20 s.
stop() {
  local name=$1 pid
  if running "$name"; then
    pid=$(cat "$(pidfile "$name")")
    kill "$pid"
    for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped $name"
  fi
  rm -f "$(pidfile "$name")"
}

down() {
  for name in provisioner kube-proxy kubelet kube-scheduler kube-controller-manager kube-apiserver etcd; do
    stop "$name"
  done
  # Pod sandboxes and containers are containerd's shims: stop them through containerd first.
  if running containerd; then
    for id in $(ctr -a "$STATE/run/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr -a "$STATE/run/containerd.sock" -n k8s.io tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    sleep 1
  fi
  stop containerd
  pkill -f "containerd-shim-runc-v2 -namespace k8s.io" 2>/dev/null || true
  grep -o " $STATE/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE" && log "removed bridge $BRIDGE"; fi
  iptables -D FORWARD -s "$POD_CIDR" ! -d "$POD_CIDR" -j DROP 2>/dev/null || true
  log "down (state kept in $STATE; rm -rf it for a fresh cluster)"
}

status() {
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy provisioner; do
    if running "$name"; then echo "$name: running (pid $(cat "$(pidfile "$name")"))"; else echo "$name: stopped"; fi
  done
}

# apiserver-stop / apiserver-kill / apiserver-start: the API server goes away (an outage of the
# control plane) and comes back on the same etcd, certificates and address; start returns once
# /readyz answers. A graceful stop withdraws the API server from the kubernetes Service's endpoints,
# so pods reach it again only when kube-proxy has seen it come back (its watch backs off up to 30 s
# after an outage); a crash (kill) leaves the endpoint, as a lost control-plane node would.
apiserver_kill() {
  local pid
  if running kube-apiserver; then
    pid=$(cat "$(pidfile kube-apiserver)")
    kill -9 "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    log "killed kube-apiserver"
  fi
  rm -f "$(pidfile kube-apiserver)"
}

apiserver_start() {
  start kube-apiserver "$bin/kube-apiserver" --etcd-servers http://127.0.0.1:23790 \
    --bind-address "$BRIDGE_IP" --advertise-address "$BRIDGE_IP" --secure-port 6443 \
    --tls-cert-file "$STATE/pki/apiserver.crt" --tls-private-key-file "$STATE/pki/apiserver.key" \
    --client-ca-file "$STATE/pki/ca.crt" --service-account-key-file "$STATE/pki/sa.pub" \
    --service-account-signing-key-file "$STATE/pki/sa.key" --service-account-issuer https://kubernetes.default.svc \
    --service-cluster-ip-range "$SERVICE_CIDR" --authorization-mode Node,RBAC \
    --kubelet-client-certificate "$STATE/pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$STATE/pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$STATE/pki/ca.crt" --kubelet-preferred-address-types InternalIP \
    --enable-admission-plugins NodeRestriction --allow-privileged=true
  wait_for kube-apiserver 60 "$bin/kubectl" --kubeconfig "$STATE/admin.kubeconfig" get --raw /readyz
}

# node-stop / node-start: the node's agent goes away (a node loss) and comes back.
node_start() {
  start kubelet "$bin/kubelet" --config "$STATE/kubelet.yaml" --kubeconfig "$STATE/kubelet.kubeconfig" \
    --hostname-override "$NODE" --node-ip "$BRIDGE_IP" --root-dir "$STATE/kubelet" --cert-dir "$STATE/kubelet/pki"
}

case "${1:-}" in
  up) up ;;
  node-stop) stop kubelet ;;
  node-start) node_start ;;
  apiserver-stop) stop kube-apiserver ;;
  apiserver-kill) apiserver_kill ;;
  apiserver-start) apiserver_start ;;
  down) down ;;
  status) status ;;
  images) images ;;
  *) echo "usage: $0 up|down|status|images|node-stop|node-start|apiserver-stop|apiserver-kill|apiserver-start" >&2; exit 2 ;;
esac
