#!/usr/bin/env bash
# Builds the Kubernetes binaries that the tests and the local cluster run, from the Go module
# proxy only (setup-envtest's bucket and release downloads are out of reach on these machines):
#   etcd                      from hack/etcd          (go.etcd.io/etcd/server/v3)
#   kube-apiserver, ...       from hack/controlplane  (k8s.io/kubernetes, staging at v0.37.2)
# into bin/k8s/<version>/. Idempotent: a binary is rebuilt only when it is missing or the
# inputs that made it (module files, this script, the Go version) changed.
#
# Usage: hack/build-controlplane.sh [component ...]   (default: what envtest needs + kubectl)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
K8S_VERSION=${K8S_VERSION:-v1.37.2}
out=${CONTROLPLANE_DIR:-$root/bin/k8s/$K8S_VERSION}
components=("$@")
[ ${#components[@]} -gt 0 ] || components=(etcd kube-apiserver kube-scheduler kube-controller-manager kubectl)

mkdir -p "$out"

# What a binary was built from; a change to any of it makes the binary stale.
stamp=$( { cat "$root/hack/controlplane/go.mod" "$root/hack/controlplane/go.sum" \
              "$root/hack/etcd/go.mod" "$root/hack/etcd/go.sum" "$root/hack/etcd/main.go" \
              "${BASH_SOURCE[0]}"; go version; } | sha256sum | cut -c1-16)

current() { [ -x "$out/$1" ] && [ "$(cat "$out/.$1.stamp" 2>/dev/null)" = "$stamp" ]; }

k8s=()
for c in "${components[@]}"; do
  if current "$c"; then
    continue
  fi
  case "$c" in
    etcd)
      echo ">> building etcd into $out (about 30 s cold)" >&2
      start=$SECONDS
      (cd "$root/hack/etcd" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$out/etcd" .)
      echo "$stamp" > "$out/.etcd.stamp"
      echo ">> etcd built in $((SECONDS - start)) s" >&2
      ;;
    kube-apiserver|kube-scheduler|kube-controller-manager|kubelet|kube-proxy|kubectl)
      k8s+=("$c")
      ;;
    *)
      echo "unknown component: $c" >&2
      exit 2
      ;;
  esac
done

if [ ${#k8s[@]} -gt 0 ]; then
  # Stamp the real release into the binaries so that discovery and `kubectl version` report
  # it instead of v0.0.0-master.
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  built=$(cd "$root/hack/controlplane" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$built"
  done
  pkgs=()
  for c in "${k8s[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  echo ">> building ${k8s[*]} $K8S_VERSION into $out" >&2
  echo ">> a cold build takes minutes on 2 cores (kube-apiserver alone about 5); later runs reuse the Go build cache" >&2
  start=$SECONDS
  # One go build for all of them: shared packages compile once. A ticker shows it is alive.
  ( while sleep 30; do echo ">>   still building ($((SECONDS - start)) s)" >&2; done ) &
  ticker=$!
  trap 'kill $ticker 2>/dev/null || true' EXIT
  (cd "$root/hack/controlplane" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/" "${pkgs[@]}")
  kill $ticker 2>/dev/null || true
  for c in "${k8s[@]}"; do echo "$stamp" > "$out/.$c.stamp"; done
  echo ">> built ${k8s[*]} in $((SECONDS - start)) s" >&2
fi

echo "$out"
