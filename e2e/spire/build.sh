#!/usr/bin/env bash
# Builds spire-server and spire-agent (SPIRE v1.13.3) through a throwaway
# wrapper module in a cache directory outside the repository, and reuses the
# binaries when they are already there. Prints the bin directory on stdout.
#
#   NODEMESH_CACHE   cache root (default: $HOME/.cache/nodemesh)
#   GO               go command (default: go)
#
# Tests find the binaries through NODEMESH_SPIRE_BIN or this same default path
# (see e2e/spire/spire.go).
set -euo pipefail

version=v1.13.3
cache="${NODEMESH_CACHE:-$HOME/.cache/nodemesh}"
dir="$cache/spire-${version#v}"
bin="$dir/bin"
go="${GO:-go}"

# The stamp records how the binaries were built; binaries without it (or
# from other flags) are rebuilt, which after a first build only relinks.
# SPIRE parses its own version as semver: the tag without its "v".
ldflags="-X github.com/spiffe/spire/pkg/common/version.gittag=${version#v}"
stamp="spire $version ldflags=$ldflags"
if [ -x "$bin/spire-server" ] && [ -x "$bin/spire-agent" ] &&
  [ "$(cat "$bin/.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "spire: reusing $bin" >&2
  echo "$bin"
  exit 0
fi
rm -f "$bin/.stamp" "$bin/spire-server" "$bin/spire-agent"

mkdir -p "$dir/src" "$bin"
cd "$dir/src"
if [ ! -f go.mod ]; then
  "$go" mod init nodemesh.local/spire-build >&2
fi
export CGO_ENABLED=1 # sqlite3 datastore needs cgo
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"
"$go" get -tool "github.com/spiffe/spire/cmd/spire-server@$version" \
  "github.com/spiffe/spire/cmd/spire-agent@$version" >&2

for b in spire-server spire-agent; do
  if [ ! -x "$bin/$b" ]; then
    start=$(date +%s)
    # Build to a temporary name first so an interrupted build is never reused.
    "$go" build -ldflags "$ldflags" -o "$bin/$b.tmp" "github.com/spiffe/spire/cmd/$b" >&2
    mv "$bin/$b.tmp" "$bin/$b"
    echo "spire: built $b in $(( $(date +%s) - start )) s" >&2
  fi
done
for b in spire-server spire-agent; do
  got=$("$bin/$b" --version 2>&1 || true)
  if [ "$got" != "${version#v}" ]; then
    echo "spire: $b --version printed '$got', want '${version#v}'" >&2
    exit 1
  fi
done
echo "spire: $version in $bin" >&2
echo "$stamp" >"$bin/.stamp"
echo "$bin"
