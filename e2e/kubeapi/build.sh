#!/usr/bin/env bash
# Builds etcd (v3.7.3) and kube-apiserver (v1.37.2) through throwaway wrapper
# modules in a cache directory outside the repository, and reuses the binaries
# when they are already there and print the expected --version. Prints the bin
# directory on stdout.
#
#   NODEMESH_CACHE   cache root (default: $HOME/.cache/nodemesh)
#   GO               go command (default: go)
#
# Tests find the binaries through NODEMESH_KUBE_BIN or this same default path
# (see e2e/kubeapi/kubeapi.go). kubectl is not built: the image's is used.
set -euo pipefail

etcd_version=v3.7.3
kube_version=v1.37.2
staging_version=v0.${kube_version#v1.}
cache="${NODEMESH_CACHE:-$HOME/.cache/nodemesh}"
dir="$cache/kube-${kube_version#v}"
bin="$dir/bin"
go="${GO:-go}"
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"
export CGO_ENABLED=0

kube_minor=${kube_version#v1.}
kube_minor=${kube_minor%%.*}
kube_ldflags="-X k8s.io/component-base/version.gitVersion=$kube_version"
kube_ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
kube_ldflags+=" -X k8s.io/component-base/version.gitMinor=$kube_minor"

etcd_ok() {
  [ -x "$bin/etcd" ] && "$bin/etcd" --version 2>/dev/null | grep -q "^etcd Version: ${etcd_version#v}$"
}
apiserver_ok() {
  [ -x "$bin/kube-apiserver" ] &&
    [ "$("$bin/kube-apiserver" --version 2>/dev/null)" = "Kubernetes $kube_version" ]
}

mkdir -p "$bin"

if etcd_ok; then
  echo "kubeapi: reusing etcd in $bin" >&2
else
  mkdir -p "$dir/etcd-src"
  (
    cd "$dir/etcd-src"
    [ -f go.mod ] || "$go" mod init nodemesh.local/etcd-build >&2
    "$go" get -tool "go.etcd.io/etcd/server/v3@$etcd_version" >&2
    start=$(date +%s)
    # Build to a temporary name first so an interrupted build is never reused.
    "$go" build -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3 >&2
    mv "$bin/etcd.tmp" "$bin/etcd"
    echo "kubeapi: built etcd in $(($(date +%s) - start)) s" >&2
  )
  etcd_ok || {
    echo "kubeapi: etcd --version does not report ${etcd_version#v}" >&2
    exit 1
  }
fi

if apiserver_ok; then
  echo "kubeapi: reusing kube-apiserver in $bin" >&2
else
  mkdir -p "$dir/apiserver-src"
  (
    cd "$dir/apiserver-src"
    if [ ! -f go.mod ]; then
      "$go" mod init nodemesh.local/kube-apiserver-build >&2
      # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces
      # them with ./staging paths; pin each to its published release instead.
      gomod=$("$go" mod download -json "k8s.io/kubernetes@$kube_version" |
        sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
      staging=$(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod")
      if [ -z "$staging" ]; then
        echo "kubeapi: no staging replace block found in $gomod" >&2
        exit 1
      fi
      args=()
      for m in $staging; do args+=("-replace=$m=$m@$staging_version"); done
      "$go" mod edit "${args[@]}"
      echo "kubeapi: pinned $(echo "$staging" | wc -l) staging modules to $staging_version" >&2
    fi
    "$go" get "k8s.io/kubernetes@$kube_version" >&2
    "$go" get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$kube_version" >&2
    start=$(date +%s)
    "$go" build -ldflags "$kube_ldflags" -o "$bin/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver >&2
    mv "$bin/kube-apiserver.tmp" "$bin/kube-apiserver"
    echo "kubeapi: built kube-apiserver in $(($(date +%s) - start)) s" >&2
  )
  apiserver_ok || {
    echo "kubeapi: kube-apiserver --version does not report $kube_version" >&2
    exit 1
  }
fi

# envtest-style layout: KUBEBUILDER_ASSETS may point here too.
if [ ! -e "$bin/kubectl" ] && command -v kubectl >/dev/null; then
  ln -s "$(command -v kubectl)" "$bin/kubectl"
fi
echo "kubeapi: etcd $etcd_version and kube-apiserver $kube_version in $bin" >&2
echo "$bin"
