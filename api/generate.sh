#!/usr/bin/env bash
# Regenerates the Go code of api/ with protoc (apt: protobuf-compiler) and the
# protoc-gen-go pinned as a tool in go.mod. Output is committed.
set -euo pipefail
cd "$(dirname "$0")"
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
PATH="$bin:$PATH" protoc --go_out=. --go_opt=paths=source_relative dataplane/v1/dataplane.proto
