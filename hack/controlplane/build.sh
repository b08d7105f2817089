#!/usr/bin/env bash
# Builds the real Kubernetes control plane used by tests and `make demo`:
# etcd, kube-apiserver, kube-controller-manager, kubectl and helm (for chart tests),
# from the Go module proxy only.
#
# Output: $TONEBRIDGE_DR_CONTROLPLANE_DIR (default ~/.cache/tonebridge-dr/controlplane/<k8s>-<etcd>)
# holding etcd, kube-apiserver, kube-controller-manager, kubectl, helm. Nothing is rebuilt when all
# five exist. When KUBEBUILDER_ASSETS points at a folder with these binaries it is
# used as is (the envtest convention) and nothing is built.
#
# Prints the folder on the last line of stdout.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
k8s_version=$(awk '/^require k8s.io\/kubernetes /{print $3}' "$here/kubernetes/go.mod")
etcd_version=$(awk '/^require go.etcd.io\/etcd\/server\/v3 /{print $3}' "$here/etcd/go.mod")
binaries=(etcd kube-apiserver kube-controller-manager kubectl helm)
helm_version=v3.19.0

have_all() {
  local dir=$1 b
  for b in "${binaries[@]}"; do [ -x "$dir/$b" ] || return 1; done
}

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && have_all "$KUBEBUILDER_ASSETS"; then
  echo "using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS" >&2
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

cache=${XDG_CACHE_HOME:-$HOME/.cache}
out=${TONEBRIDGE_DR_CONTROLPLANE_DIR:-$cache/tonebridge-dr/controlplane/${k8s_version}-etcd-${etcd_version}}
if have_all "$out"; then
  echo "control plane already built in $out" >&2
  echo "$out"
  exit 0
fi

command -v go >/dev/null || { echo "error: Go is required to build the control plane" >&2; exit 1; }
mkdir -p "$out"
# Keep Go's module and build caches under ~/.cache so a CI machine can reuse them.
export GOMODCACHE=${GOMODCACHE:-$cache/tonebridge-dr/go-mod}
export GOCACHE=${GOCACHE:-$cache/tonebridge-dr/go-build}
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0

minor=$(echo "$k8s_version" | cut -d. -f2)
ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=${k8s_version} \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=${minor} \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=${k8s_version} \
 -X k8s.io/client-go/pkg/version.gitMajor=1 \
 -X k8s.io/client-go/pkg/version.gitMinor=${minor}"

start=$(date +%s)
if [ ! -x "$out/etcd" ]; then
  echo "building etcd ${etcd_version} ..." >&2
  (cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$out/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$out/etcd.tmp" "$out/etcd"
fi
for cmd in kube-apiserver kube-controller-manager kubectl; do
  if [ ! -x "$out/$cmd" ]; then
    echo "building $cmd ${k8s_version} ..." >&2
    (cd "$here/kubernetes" && go build -trimpath -ldflags "$ldflags" -o "$out/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd")
    mv "$out/$cmd.tmp" "$out/$cmd"
  fi
done
if [ ! -x "$out/helm" ]; then
  echo "building helm ${helm_version} ..." >&2
  # helm's module has no replace directives, so `go install` works as is.
  tmpbin=$(mktemp -d)
  GOBIN="$tmpbin" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@${helm_version}"
  mv "$tmpbin/helm" "$out/helm"
  rmdir "$tmpbin"
fi
echo "control plane built in $out in $(( $(date +%s) - start ))s" >&2
echo "$out"
