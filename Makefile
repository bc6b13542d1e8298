# nodemesh. `make demo` runs the control plane on the embedded Istio samples
# and a node agent on this machine; `make test` runs every test (root needed
# for the kernel and network namespace tests, as in CI).
GO      ?= go
BIN     ?= bin
# Generated files are excluded from the format check.
GOFILES  = $(shell git ls-files '*.go' | grep -v '_bpfel\.go$$')

.PHONY: all build test lint generate check-generate bench bench-maps bench-dataplane bench-xds demo clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

lint:
	@out="$$(gofmt -l $(GOFILES))"; if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

test: lint
	$(GO) test -count=1 -timeout 40m ./...
	$(GO) test -count=1 -race -short -timeout 40m ./config/... ./bpf/... ./nodeagent/ ./xds/... ./identity/... ./nodeagent/ads/... ./nodeagent/envoy/... ./nodeagent/agent/... ./e2e/spire/... ./translate/authz/... ./e2e/kubeapi/... ./deploy/...

generate:
	$(GO) generate ./...

# Regenerates and fails when committed generated files differ (needs clang).
check-generate: generate
	@git diff --exit-code --stat -- bpf api || (echo "generated files drifted: run make generate and commit"; exit 1)

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./translate/...

# BPF maps at scale (root): 100k services / 1M backends, a 10k-service change.
bench-maps:
	$(GO) test -count=1 -run '^TestScale$$' -v -bench '^BenchmarkApply10kChange$$' -benchtime 5x ./nodeagent/

# Data-path latency table (Graf's method): fortio (built once into
# $${XDG_CACHE_HOME:-$$HOME/.cache}/nodemesh/bin) sends a fixed-rate HTTP load
# over fixed connections in the netns cluster: no mesh, eBPF socket LB, eBPF
# same-node acceleration, haproxy sidecars, haproxy node proxy; ratios to no
# mesh. Needs root and haproxy (apt-get install -y haproxy).
# Tune with BENCH_FLAGS='-bench-qps 5000 -bench-rounds 1'.
bench-dataplane:
	$(GO) test -count=1 -timeout 30m -run '^TestBenchDataplane$$' -v ./e2e -bench-dataplane $(BENCH_FLAGS)

# DESIGN.md's xDS scenario (1,000 services, 10,000 pods, 50 namespaces, 50
# Envoy-like nodes over real gRPC, SotW then Delta ADS): cold start, CPU,
# heap/RSS, route and endpoint change latency and bytes per node. Not part
# of go test ./...
bench-xds:
	$(GO) test -count=1 -timeout 20m -run '^TestScaleMesh$$' -v ./xds -xds-scale
	$(GO) test -count=1 -timeout 20m -run '^TestScaleMesh$$' -v ./xds -xds-scale -xds-scale-delta

demo: build
	e2e/demo.sh

# Builds spire-server and spire-agent v1.13.3 into NODEMESH_CACHE (default ~/.cache/nodemesh)/spire-1.13.3/bin
# (reused when present; ~5 min and 4 GiB cold). e2e/spire tests find them there.
.PHONY: spire
spire:
	GO=$(GO) e2e/spire/build.sh

# Builds etcd v3.7.3 and kube-apiserver v1.37.2 into NODEMESH_CACHE (default ~/.cache/nodemesh)/kube-1.37.2/bin
# (reused when present; ~4-6 min and 2.7 GiB cold). config/kube, e2e/kubeapi and deploy tests find them there;
# CI sets NODEMESH_REQUIRE_KUBE=1 so they fail instead of skipping when the binaries are missing.
.PHONY: kube-binaries
kube-binaries:
	GO=$(GO) e2e/kubeapi/build.sh

clean:
	rm -rf $(BIN)
