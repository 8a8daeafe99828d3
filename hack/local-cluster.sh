#!/usr/bin/env bash
# A local Kubernetes cluster with real nodes and no Docker, on this Linux machine (root):
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler   (from Go modules, bin/k8s)
#   containerd + runc + CNI plugins                                 (Debian's packages)
#   kubelet, kube-proxy                                             (from Go modules, bin/k8s)
#   a dynamic provisioner of directory volumes                      (hack/localcluster)
# Every byte stays on this machine: pods live in network namespaces on the bridge vending0 (node k's
# on its own bridge in its namespace), pod, node and service ranges are never routed off it, and
# forwarding out of the pod range (and the node range) is dropped.
#
# Usage: hack/local-cluster.sh up|down|status|images|apiserver-stop|apiserver-kill|apiserver-start
#        hack/local-cluster.sh node-stop|node-start [NODE] | node-partition|node-heal NODE
#        hack/local-cluster.sh node-ctr NODE ARGS... | node-exec NODE CMD...
#   up    idempotent; prints the kubeconfig and what it started. Logs in $STATE/logs.
#         NODES=N (default 1, kept in $STATE/node-count until `down`): node 1 is vending-node on this
#         machine's network; nodes k=2..N are vending-node-k, each in its own network namespace
#         ($STATE/netns/vending-node-k) on the bridge vendingn (10.245.0.1/16, node IP 10.245.0.k,
#         pods 10.244.(k-1).0/24) with its own containerd, kubelet and kube-proxy.
#   down  stops every process it started (by pid), unmounts, removes the bridges, namespaces, routes, rules.
# node-stop / node-start without NODE: node 1's kubelet stops (a node loss) and starts (its return).
# node-stop NODE: a power-off: the node's kubelet, kube-proxy, containerd and every container of it are
# SIGKILLed; node-start NODE brings them back. node-partition NODE cuts a node k>=2 from the host (its
# processes keep running); node-heal NODE reconnects it.
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
# Nodes 2..N: their network (node IPs 10.245.0.k on the bridge NODE_BRIDGE) and namespaces.
NODE_NET=10.245.0.0/16
NODE_GW=10.245.0.1
NODE_BRIDGE=vendingn
NETNS_DIR=$STATE/netns

log() { echo ">> $*"; }
die() { echo "local-cluster: $*" >&2; exit 1; }

pidfile() { echo "$STATE/run/$1.pid"; }
running() { [ -f "$(pidfile "$1")" ] && kill -0 "$(cat "$(pidfile "$1")")" 2>/dev/null; }

# Node k: 1 is $NODE on this machine's network (today's node); k>=2 is $NODE-k in its own namespace.
node_count() { cat "$STATE/node-count" 2>/dev/null || echo 1; }
nname() { if [ "$1" = 1 ]; then echo "$NODE"; else echo "$NODE-$1"; fi; }
ndir() { echo "$STATE/nodes/$(nname "$1")"; }
nip() { echo "10.245.0.$1"; }
nsubnet() { echo "10.244.$(($1 - 1)).0/24"; }
ngw() { echo "10.244.$(($1 - 1)).1"; }
nns() { echo "$NETNS_DIR/$(nname "$1")"; }
nveth() { echo "vnode$1"; } # the host's end of node k's link
nsock() { if [ "$1" = 1 ]; then echo "$STATE/run/containerd.sock"; else echo "$(ndir "$1")/run/containerd.sock"; fi; }
ncomp() { if [ "$1" = 1 ]; then echo "$2"; else echo "$2-$(nname "$1")"; fi; } # ncomp K kubelet: its pidfile/log name
# in_node K CMD...: CMD in node k's network namespace. Not `ip netns exec`: it remounts /sys and
# hides the cgroup mounts from the kubelet.
in_node() { local k=$1; shift; nsenter --net="$(nns "$k")" "$@"; }
# node_index NAME: the k of a node name, or a clear error.
node_index() {
  local n=$1 count k
  count=$(node_count)
  [ "$n" = "$NODE" ] && { echo 1; return; }
  for k in $(seq 2 "$count"); do [ "$n" = "$(nname "$k")" ] && { echo "$k"; return; }; done
  die "unknown node '$n' (nodes:$(for k in $(seq 1 "$count"); do printf ' %s' "$(nname "$k")"; done))"
}

# start NAME CMD...: runs a component in the background with its own log, unless it runs.
start() {
  local name=$1; shift
  if running "$name"; then return; fi
  "$@" >"$STATE/logs/$name.log" 2>&1 &
  echo $! >"$(pidfile "$name")"
  log "started $name (pid $!, log $STATE/logs/$name.log)"
}

# put FILE: stdin into FILE, only if it differs (kube-proxy exits when its config file is written).
put() {
  local t
  t=$(mktemp "$1.XXXXXX")
  cat >"$t"
  if cmp -s "$t" "$1"; then rm -f "$t"; else chmod 644 "$t" && mv "$t" "$1"; fi
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

# node_pki K: node k's kubelet certificate (serving and client), CN system:node:NAME, SAN its IP and name.
node_pki() {
  local k=$1 d=$STATE/pki name
  name=$(nname "$k")
  [ -f "$d/kubelet-$name.crt" ] && return
  openssl req -newkey rsa:2048 -nodes -keyout "$d/kubelet-$name.key" -out "$d/kubelet-$name.csr" \
    -subj "/O=system:nodes/CN=system:node:$name" 2>/dev/null
  openssl x509 -req -in "$d/kubelet-$name.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -out "$d/kubelet-$name.crt" -days 3650 2>/dev/null -extfile <(printf '%s\n' \
    "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=IP:$(nip "$k"),DNS:$name")
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
  cni_conf "$STATE/cni" "$BRIDGE" "$NODE_POD_CIDR" "$BRIDGE_IP"
}

# cni_conf DIR BRIDGE SUBNET GATEWAY: a node's pod network. With more than one node, pods route the
# node network too (kube-proxy's masqueradeAll makes another node's service traffic come from its
# node IP: without the route a pod cannot answer it).
cni_conf() {
  local routes="{\"dst\": \"$POD_CIDR\"}, {\"dst\": \"$SERVICE_CIDR\"}"
  if [ "$(node_count)" -gt 1 ]; then routes="$routes, {\"dst\": \"$NODE_NET\"}"; fi
  mkdir -p "$1/net.d"
  put "$1/net.d/10-vending.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "vending",
  "plugins": [
    {"type": "bridge", "bridge": "$2", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$3", "gateway": "$4"}]],
              "routes": [$routes], "dataDir": "$1/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

# nodes_network: (more than one node) the host's bridge to the nodes' namespaces, and the rules that
# keep their traffic on this machine: pods and nodes reach only pods, nodes and this machine (service
# addresses are DNATed to pods before forwarding); nothing else from them is forwarded.
nodes_network() {
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$NODE_BRIDGE" type bridge
    ip addr add "$NODE_GW/16" dev "$NODE_BRIDGE"
    ip link set "$NODE_BRIDGE" up
  fi
  # A pod address of no node is unreachable, not routed to the default gateway.
  ip route replace unreachable "$POD_CIDR"
  # In mangle's FORWARD, which sees the destination after kube-proxy's DNAT and comes before every
  # filter rule (kube-proxy's ACCEPTs of service traffic come before ours in filter's FORWARD).
  if ! iptables -t mangle -S VENDING-NODES >/dev/null 2>&1; then
    iptables -t mangle -N VENDING-NODES
    local src dst
    for src in "$POD_CIDR" "$NODE_NET"; do
      for dst in "$POD_CIDR" "$NODE_NET"; do iptables -t mangle -A VENDING-NODES -s "$src" -d "$dst" -j RETURN; done
    done
    iptables -t mangle -A VENDING-NODES -s "$POD_CIDR" -j DROP
    iptables -t mangle -A VENDING-NODES -s "$NODE_NET" -j DROP
    iptables -t mangle -A VENDING-NODES -i "$NODE_BRIDGE" -j DROP
  fi
  iptables -t mangle -C FORWARD -j VENDING-NODES 2>/dev/null || iptables -t mangle -I FORWARD -j VENDING-NODES
  # Pods may open connections to node IPs (the pod range's DROP in filter would stop them).
  iptables -C FORWARD -s "$POD_CIDR" -d "$NODE_NET" -j ACCEPT 2>/dev/null ||
    iptables -I FORWARD -s "$POD_CIDR" -d "$NODE_NET" -j ACCEPT
}

# node_network K: node k's namespace (a file under $NETNS_DIR, not /run/netns: making /run/netns a
# shared mount, as `ip netns add` does, breaks node 1's containerd, whose pod namespaces live there),
# its link to the host's bridge, its routes, its cgroup root.
node_network() {
  local k=$1 ns veth h
  ns=$(nns "$k")
  veth=$(nveth "$k")
  mkdir -p "$NETNS_DIR"
  if ! grep -q " $ns nsfs " /proc/mounts; then
    touch "$ns"
    unshare --net="$ns" true
  fi
  if ! ip link show "$veth" >/dev/null 2>&1; then
    in_node "$k" ip link del eth0 2>/dev/null || true
    in_node "$k" ip link add eth0 type veth peer name "$veth" netns "$$"
    ip link set "$veth" master "$NODE_BRIDGE" up
  fi
  in_node "$k" ip link set lo up
  in_node "$k" ip addr replace "$(nip "$k")/16" dev eth0
  in_node "$k" ip link set eth0 up
  in_node "$k" ip route replace default via "$NODE_GW"
  in_node "$k" sysctl -qw net.ipv4.ip_forward=1
  ip route replace "$(nsubnet "$k")" via "$(nip "$k")" dev "$NODE_BRIDGE"
  # The kubelet's cgroupRoot must exist in every hierarchy (cgroup v1: cpuset needs its cpus and mems).
  for h in /sys/fs/cgroup/*/; do
    mkdir -p "$h$(nname "$k")"
    if [ -f "${h}cpuset.cpus" ] && [ -z "$(cat "$h$(nname "$k")/cpuset.cpus")" ]; then
      cat "${h}cpuset.cpus" >"$h$(nname "$k")/cpuset.cpus"
      cat "${h}cpuset.mems" >"$h$(nname "$k")/cpuset.mems"
    fi
  done
  cni_conf "$(ndir "$k")/cni" "vending$((k - 1))" "$(nsubnet "$k")" "$(ngw "$k")"
}

containerd_config() { # containerd_config [K]: node 1's (today's) or node k's
  local k=${1:-1} d=$STATE extra="" runc=""
  if [ "$k" != 1 ]; then
    d=$(ndir "$k")
    # Its pod namespaces under its state dir, not /run/netns (node 1's), and its own runc root.
    extra="
  netns_mounts_under_state_dir = true"
    runc="
      Root = \"$d/runc\""
  fi
  mkdir -p "$d"
  put "$d/containerd.toml" <<EOF
version = 2
root = "$d/containerd/root"
state = "$d/containerd/state"
[grpc]
  address = "$(nsock "$k")"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$SANDBOX_IMAGE"
  # This sandbox cannot lower oom_score_adj; without this runc fails with
  # "can't get final child's PID from pipe".
  restrict_oom_score_adj = true$extra
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$d/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false$runc
EOF
}

kubelet_config() { # kubelet_config [K]: node 1's (today's) or node k's
  local k=${1:-1} d=$STATE cert=$STATE/pki/kubelet addr=$BRIDGE_IP cidr=$NODE_POD_CIDR extra=""
  if [ "$k" != 1 ]; then
    d=$(ndir "$k")
    cert=$STATE/pki/kubelet-$(nname "$k")
    addr=$(nip "$k")
    cidr=$(nsubnet "$k")
    # Its pods' cgroups and logs apart from the other kubelets' (each one removes what it does not know).
    extra="cgroupRoot: /$(nname "$k")
podLogsDir: \"$d/pod-logs\"
"
  fi
  {
    cat <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$(nsock "$k")
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$STATE/pki/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$cert.crt"
tlsPrivateKeyFile: "$cert.key"
address: $addr
podCIDR: "$cidr"
resolvConf: ""
serializeImagePulls: false
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
    printf '%s' "$extra"
  } | put "$d/kubelet.yaml"
  put "$d/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$STATE/proxy.kubeconfig"}
hostnameOverride: $(nname "$k")
clusterCIDR: $POD_CIDR
mode: iptables
iptables: {masqueradeAll: true}
conntrack: {maxPerCore: 0}
EOF
}

up() {
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces, mounts, containerd)"
  mkdir -p "$STATE/logs" "$STATE/run"
  local n=${NODES:-$(node_count)} k
  if ! [[ "$n" =~ ^[1-9][0-9]*$ ]] || [ "$n" -gt 200 ]; then die "NODES=$n: a number of nodes from 1 to 200"; fi
  for k in $(seq $((n + 1)) "$(node_count)"); do
    if running "$(ncomp "$k" containerd)" || running "$(ncomp "$k" kubelet)"; then
      die "the cluster runs $(node_count) nodes: \`down\` first for NODES=$n"
    fi
  done
  echo "$n" >"$STATE/node-count"
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
  if [ "$n" -gt 1 ]; then nodes_network; fi
  for k in $(seq 2 "$n"); do
    node_pki "$k"
    kubeconfig "kubelet-$(nname "$k")" "kubelet-$(nname "$k")"
    node_network "$k"
    containerd_config "$k"
    kubelet_config "$k"
  done

  local b=$bin
  start etcd "$b/etcd" --data-dir "$STATE/etcd" --listen-client-urls http://127.0.0.1:23790 \
    --advertise-client-urls http://127.0.0.1:23790 --listen-peer-urls http://127.0.0.1:23800 \
    --initial-advertise-peer-urls http://127.0.0.1:23800 --initial-cluster default=http://127.0.0.1:23800
  apiserver_start
  # --node-monitor-grace-period=20s: a lost node goes Unknown in ~20 s instead of 50 s (for tests).
  start kube-controller-manager "$b/kube-controller-manager" --kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --service-account-private-key-file "$STATE/pki/sa.key" --root-ca-file "$STATE/pki/ca.crt" \
    --use-service-account-credentials --leader-elect=false --service-cluster-ip-range "$SERVICE_CIDR" \
    --cluster-signing-cert-file "$STATE/pki/ca.crt" --cluster-signing-key-file "$STATE/pki/ca.key" \
    --node-monitor-grace-period=20s
  start kube-scheduler "$b/kube-scheduler" --kubeconfig "$STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/scheduler.kubeconfig" --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
    --leader-elect=false
  for k in $(seq 1 "$n"); do containerd_start "$k"; done
  images
  node_start
  start kube-proxy "$b/kube-proxy" --config "$STATE/kube-proxy.yaml"
  for k in $(seq 2 "$n"); do node_agents_start "$k"; done
  start provisioner "$root/bin/localcluster/provisioner" -kubeconfig "$STATE/admin.kubeconfig" \
    -dir "$STATE/volumes" -node "$NODE"
  # Nodes of an earlier, larger cluster are gone: remove them (their pods go with them).
  if [ -d "$STATE/nodes" ]; then
    for k in $("$b/kubectl" --kubeconfig "$STATE/admin.kubeconfig" get nodes -o name |
      sed -n "s|^node/$NODE-\([0-9]*\)$|\1|p"); do
      if [ "$k" -gt "$n" ]; then
        "$b/kubectl" --kubeconfig "$STATE/admin.kubeconfig" delete node "$(nname "$k")" >/dev/null
        log "removed node $(nname "$k") (NODES=$n)"
      fi
    done
  fi
  for k in $(seq 1 "$n"); do
    wait_for "node $(nname "$k")" 90 "$b/kubectl" --kubeconfig "$STATE/admin.kubeconfig" wait --for=condition=Ready "node/$(nname "$k")" --timeout=1s
  done
  # local-dir: a directory pinned to the node of the claim's first pod. network-dir: the same
  # directory without node affinity, standing for network storage (the nodes share this machine's
  # file system), so a volume can follow its pod to another node.
  "$b/kubectl" --kubeconfig "$STATE/admin.kubeconfig" apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local-dir
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: vending.resilience.dev/local-dir
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: network-dir
provisioner: vending.resilience.dev/local-dir
parameters: {storage: network}
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
EOF
  if [ "$n" = 1 ]; then
    log "cluster up: node $NODE Ready"
  else
    log "cluster up: nodes $(for k in $(seq 1 "$n"); do printf '%s ' "$(nname "$k")"; done)Ready"
  fi
  echo "KUBECONFIG=$STATE/admin.kubeconfig"
}

# containerd_start K: node k's containerd (k>=2: in its network namespace), once it answers.
containerd_start() {
  local k=$1
  if [ "$k" = 1 ]; then
    start containerd containerd --config "$STATE/containerd.toml"
  else
    start "$(ncomp "$k" containerd)" nsenter --net="$(nns "$k")" containerd --config "$(ndir "$k")/containerd.toml"
  fi
  wait_for "$(ncomp "$k" containerd)" 30 ctr -a "$(nsock "$k")" version
}

# node_agents_start K: node k's kubelet and kube-proxy (k>=2: in its network namespace).
node_agents_start() {
  local k=$1 d name
  if [ "$k" = 1 ]; then
    node_start
    start kube-proxy "$bin/kube-proxy" --config "$STATE/kube-proxy.yaml"
    return
  fi
  d=$(ndir "$k")
  name=$(nname "$k")
  start "$(ncomp "$k" kubelet)" nsenter --net="$(nns "$k")" "$bin/kubelet" --config "$d/kubelet.yaml" \
    --kubeconfig "$STATE/kubelet-$name.kubeconfig" --hostname-override "$name" --node-ip "$(nip "$k")" \
    --root-dir "$d/kubelet" --cert-dir "$d/kubelet/pki"
  start "$(ncomp "$k" kube-proxy)" nsenter --net="$(nns "$k")" "$bin/kube-proxy" --config "$d/kube-proxy.yaml"
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
  local k
  for k in $(seq 1 "$(node_count)"); do
    running "$(ncomp "$k" containerd)" || continue
    for t in $tars; do
      ctr -a "$(nsock "$k")" -n k8s.io images import "$t" >/dev/null
    done
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
  local count k
  count=$(node_count)
  for name in provisioner kube-proxy kubelet kube-scheduler kube-controller-manager kube-apiserver etcd; do
    stop "$name"
  done
  for k in $(seq 2 "$count"); do stop "$(ncomp "$k" kube-proxy)"; stop "$(ncomp "$k" kubelet)"; done
  # Pod sandboxes and containers are containerd's shims: stop them through containerd first.
  for k in $(seq 1 "$count"); do
    if running "$(ncomp "$k" containerd)"; then
      for id in $(ctr -a "$(nsock "$k")" -n k8s.io tasks ls -q 2>/dev/null); do
        ctr -a "$(nsock "$k")" -n k8s.io tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
      done
    fi
  done
  if running containerd; then sleep 1; fi
  for k in $(seq 2 "$count"); do stop "$(ncomp "$k" containerd)"; node_kill "$k"; done
  stop containerd
  pkill -f "containerd-shim-runc-v2 -namespace k8s.io" 2>/dev/null || true
  # Node 1's pod namespaces (containerd keeps them in /run/netns): those with a pod address.
  for f in /run/netns/cni-*; do
    if [ -e "$f" ] && nsenter --net="$f" ip -4 -o addr show 2>/dev/null | grep -q " inet 10\.244\."; then
      umount "$f" 2>/dev/null || umount -l "$f" 2>/dev/null || true
      rm -f "$f"
    fi
  done
  # kube-proxy's and the kubelet's rules on this machine (their KUBE-* chains and the jumps to them).
  local ipt t r c
  for ipt in iptables ip6tables; do
    for t in filter nat mangle; do
      { $ipt -t "$t" -S 2>/dev/null || true; } | sed -n '/^-A KUBE-/d; s/^-A \([A-Z]* .*-j KUBE-\)/-D \1/p' |
        while read -r r; do eval "$ipt -t $t $r" 2>/dev/null || true; done
      for c in $($ipt -t "$t" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[^ ]*\)$/\1/p'); do $ipt -t "$t" -F "$c"; done
      for c in $($ipt -t "$t" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[^ ]*\)$/\1/p'); do $ipt -t "$t" -X "$c" || true; done
    done
  done
  { grep -o " $STATE/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE" && log "removed bridge $BRIDGE"; fi
  iptables -D FORWARD -s "$POD_CIDR" ! -d "$POD_CIDR" -j DROP 2>/dev/null || true
  if [ "$count" -gt 1 ] || ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    for k in $(seq 2 "$count"); do
      ip link del "$(nveth "$k")" 2>/dev/null || true
      rm -f "$(nns "$k")"
      for h in /sys/fs/cgroup/*/; do
        if [ -d "$h$(nname "$k")" ]; then find "$h$(nname "$k")" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
      done
    done
    if ip link del "$NODE_BRIDGE" 2>/dev/null; then log "removed bridge $NODE_BRIDGE and nodes 2..$count"; fi
    ip route del unreachable "$POD_CIDR" 2>/dev/null || true
    iptables -D FORWARD -s "$POD_CIDR" -d "$NODE_NET" -j ACCEPT 2>/dev/null || true
    iptables -t mangle -D FORWARD -j VENDING-NODES 2>/dev/null || true
    iptables -t mangle -F VENDING-NODES 2>/dev/null || true
    iptables -t mangle -X VENDING-NODES 2>/dev/null || true
  fi
  rm -f "$STATE/node-count"
  log "down (state kept in $STATE; rm -rf it for a fresh cluster)"
}

status() {
  local k count line
  count=$(node_count)
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy provisioner; do
    if running "$name"; then echo "$name: running (pid $(cat "$(pidfile "$name")"))"; else echo "$name: stopped"; fi
  done
  for k in $(seq 2 "$count"); do
    line="$(nname "$k") ($(nip "$k"), pods $(nsubnet "$k")):"
    for name in containerd kubelet kube-proxy; do
      if running "$(ncomp "$k" "$name")"; then
        line="$line $name running (pid $(cat "$(pidfile "$(ncomp "$k" "$name")")")),"
      else
        line="$line $name stopped,"
      fi
    done
    if ip -o link show "$(nveth "$k")" 2>/dev/null | grep -q '[<,]UP[,>]'; then
      echo "$line link up"
    else
      echo "$line link DOWN (partitioned)"
    fi
  done
}

# node_kill K: SIGKILL every shim and container process of node k (its containerd is gone already):
# shims by their containerd's address, containers by the node's pod cgroups.
node_kill() {
  local k=$1 sock root p pids=""
  sock=$(nsock "$k")
  if [ "$k" = 1 ]; then root=kubepods; else root=$(nname "$k"); fi
  for p in /proc/[0-9]*; do
    if tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -qxF -- "$sock" &&
      tr '\0' '\n' <"$p/cmdline" 2>/dev/null | head -1 | grep -q 'containerd-shim'; then
      kill -9 "${p#/proc/}" 2>/dev/null || true
    fi
  done
  for _ in $(seq 50); do
    pids=$(find "/sys/fs/cgroup/pids/$root" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
    [ -z "$pids" ] && return 0
    # shellcheck disable=SC2086 # a list of pids
    kill -9 $pids 2>/dev/null || true
    sleep 0.1
  done
  die "processes of $(nname "$k") survive SIGKILL: $pids"
}

# kill9 NAME: SIGKILL, no graceful shutdown (a power-off).
kill9() {
  local pid
  if running "$1"; then
    pid=$(cat "$(pidfile "$1")")
    kill -9 "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$(pidfile "$1")"
}

# node-stop NODE: a power-off of the node: kubelet, kube-proxy, containerd, shims and containers are
# SIGKILLed; nothing tells the API server. node-start NODE: containerd, kubelet, kube-proxy come back.
node_poweroff() {
  local k
  k=$(node_index "$1")
  kill9 "$(ncomp "$k" kubelet)"
  kill9 "$(ncomp "$k" kube-proxy)"
  kill9 "$(ncomp "$k" containerd)"
  node_kill "$k"
  log "powered off $(nname "$k")"
}

node_poweron() {
  local k
  k=$(node_index "$1")
  if [ "$k" != 1 ]; then node_network "$k"; fi
  containerd_start "$k"
  node_agents_start "$k"
}

# node-partition NODE / node-heal NODE: node k's link to the host goes down (its processes keep
# running, unreachable and unable to reach the API server) and comes back.
node_link() {
  local k
  k=$(node_index "$2")
  [ "$k" = 1 ] && die "$(nname 1) is this machine's own network: it cannot be partitioned (nodes 2..N can)"
  if [ "$1" = down ]; then
    ip link set "$(nveth "$k")" down
    log "partitioned $(nname "$k") (link $(nveth "$k") down)"
  else
    ip link set "$(nveth "$k")" up
    # Routes through a link that went down are gone: put them back.
    in_node "$k" ip route replace default via "$NODE_GW"
    ip route replace "$(nsubnet "$k")" via "$(nip "$k")" dev "$NODE_BRIDGE"
    log "healed $(nname "$k") (link $(nveth "$k") up)"
  fi
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

usage="usage: $0 up|down|status|images|apiserver-stop|apiserver-kill|apiserver-start
       $0 node-stop|node-start [NODE]    (no NODE: node 1's kubelet only; NODE: a power-off / power-on)
       $0 node-partition|node-heal NODE  (NODE: $NODE-k, k>=2)
       $0 node-ctr NODE ARGS... | node-exec NODE CMD...   (the node's containerd; a command in its network)
       NODES=N $0 up                      (N nodes; default 1, or the running cluster's)"
case "${1:-}" in
  up) up ;;
  node-stop) if [ -n "${2:-}" ]; then node_poweroff "$2"; else stop kubelet; fi ;;
  node-start) if [ -n "${2:-}" ]; then node_poweron "$2"; else node_start; fi ;;
  node-partition) [ -n "${2:-}" ] || die "usage: $0 node-partition NODE"; node_link down "$2" ;;
  node-heal) [ -n "${2:-}" ] || die "usage: $0 node-heal NODE"; node_link up "$2" ;;
  apiserver-stop) stop kube-apiserver ;;
  apiserver-kill) apiserver_kill ;;
  apiserver-start) apiserver_start ;;
  down) down ;;
  status) status ;;
  images) images ;;
  # node-ctr NODE ARGS...: ctr against the node's containerd; node-exec NODE CMD...: CMD in the
  # node's network (node 1: this machine's). What a test reads from the node's side.
  node-ctr) [ -n "${2:-}" ] || die "usage: $0 node-ctr NODE ARGS..."; k=$(node_index "$2"); shift 2; ctr -a "$(nsock "$k")" "$@" ;;
  node-exec)
    [ -n "${2:-}" ] || die "usage: $0 node-exec NODE CMD..."; k=$(node_index "$2"); shift 2
    if [ "$k" = 1 ]; then "$@"; else in_node "$k" "$@"; fi ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
