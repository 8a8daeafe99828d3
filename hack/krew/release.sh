#!/usr/bin/env bash
# Builds kubectl-vend for krew's platforms into dist/kubectl-vend_VERSION_OS_ARCH.tar.gz and
# writes dist/krew/vend.yaml: hack/krew/vend.yaml with VERSION in the version and the URIs, and
# each archive's sha256.
#
#   hack/krew/release.sh v0.1.0
#   PLATFORMS="linux/amd64" hack/krew/release.sh v0.1.0-dev   # one platform, for a local install
set -euo pipefail

version=${1:?usage: hack/krew/release.sh VERSION (e.g. v0.1.0)}
platforms=${PLATFORMS:-linux/amd64 linux/arm64 darwin/amd64 darwin/arm64}
root=$(cd "$(dirname "$0")/../.." && pwd)
dist=$root/dist
mkdir -p "$dist/krew"
manifest=$(sed -e "s|v0\.1\.0|$version|g" "$root/hack/krew/vend.yaml")

for p in $platforms; do
  os=${p%/*} arch=${p#*/}
  dir=$(mktemp -d)
  CGO_ENABLED=0 GOOS=$os GOARCH=$arch go build -C "$root" -trimpath -ldflags "-s -w" -o "$dir/kubectl-vend" ./cmd/kubectl-vend
  archive=$dist/kubectl-vend_${version}_${os}_${arch}.tar.gz
  # Fixed owner, mode and time, so the same sources give the same archive (and sha256).
  tar -C "$dir" --owner=0 --group=0 --mode=0755 --mtime=@0 -czf "$archive" kubectl-vend
  rm -rf "$dir"
  sum=$(sha256sum "$archive" | cut -d' ' -f1)
  # The sha256 line that follows this platform's URI.
  manifest=$(awk -v uri="kubectl-vend_${version}_${os}_${arch}.tar.gz" -v sum="$sum" '
    index($0, uri) { print; getline; sub(/"[0-9a-f]+"/, "\"" sum "\""); print; next } { print }' <<<"$manifest")
  echo "$archive $sum"
done
printf '%s\n' "$manifest" >"$dist/krew/vend.yaml"
echo "wrote $dist/krew/vend.yaml"
