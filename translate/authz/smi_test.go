package authz

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nodemesh/nodemesh/config"
)

func snapshot(t *testing.T, objs ...[]*config.Object) *config.Snapshot {
	t.Helper()
	var all []*config.Object
	for _, o := range objs {
		all = append(all, o...)
	}
	s := config.NewStore()
	if err := s.Replace("test", all); err != nil {
		t.Fatal(err)
	}
	return s.Snapshot()
}

func load(t *testing.T, path string) []*config.Object {
	t.Helper()
	objs, diags := config.Load(path)
	if config.HasErrors(diags) {
		t.Fatal(diags)
	}
	return objs
}

// The SMI specification's "Example implementation for L7"
// (traffic-access v1alpha3) and its table of allowed traffic.
func TestSMITrafficTargetSpecExample(t *testing.T) {
	snap := snapshot(t, load(t, "../../config/testdata/smi/traffic-access-v1alpha3-02.yaml"))
	api := Workload{Namespace: "default", Name: "api", ServiceAccount: "api-service", Labels: map[string]string{"app": "api"}}
	f := Build(snap, api, Options{})
	if len(f.Diagnostics) > 0 {
		t.Fatal(f.Diagnostics)
	}
	if err := Validate(f.HTTP, f.TCP); err != nil {
		t.Fatal(err)
	}
	sa := func(name string) string { return spiffe("default", name) }
	for _, c := range []struct {
		name  string
		req   request
		allow bool
	}{
		{"website GET /api", request{principal: sa("website-service"), method: "GET", path: "/api", port: 8080}, true},
		{"payments DELETE /api/x", request{principal: sa("payments-service"), method: "DELETE", path: "/api/x", port: 8080}, true},
		{"prometheus GET /metrics", request{principal: sa("prometheus"), method: "GET", path: "/metrics", port: 8080}, true},
		{"prometheus POST /metrics", request{principal: sa("prometheus"), method: "POST", path: "/metrics", port: 8080}, false},
		{"prometheus GET /api", request{principal: sa("prometheus"), method: "GET", path: "/api", port: 8080}, false},
		{"website GET /metrics", request{principal: sa("website-service"), method: "GET", path: "/metrics", port: 8080}, false},
		{"website GET /api on port 9090 (TCPRoute: 8080)", request{principal: sa("website-service"), method: "GET", path: "/api", port: 9090}, false},
		{"website GET /x/api (regex anchored at the start)", request{principal: sa("website-service"), method: "GET", path: "/x/api", port: 8080}, false},
		{"unknown source", request{principal: sa("other"), method: "GET", path: "/api", port: 8080}, false},
	} {
		if v := evalHTTP(t, f.HTTP, c.req); v.allowed != c.allow {
			t.Errorf("%s: allowed=%v (%s), want %v", c.name, v.allowed, v.by, c.allow)
		}
	}
	// Another service account of the namespace is not selected.
	if f := Build(snap, Workload{Namespace: "default", ServiceAccount: "website-service"}, Options{}); len(f.HTTP) != 0 {
		t.Errorf("TrafficTarget applied to a workload of another service account: %d filters", len(f.HTTP))
	}
}

// The specification's L4 example: TCPRoute ports and a UDPRoute.
func TestSMITrafficTargetL4(t *testing.T) {
	snap := snapshot(t, load(t, "../../config/testdata/smi/traffic-access-v1alpha3-03.yaml"))
	server := Workload{Namespace: "default", ServiceAccount: "server"}
	f := Build(snap, server, Options{})
	ps, _ := SMIPolicies(snap, Options{})
	if len(ps) != 1 || !Split(ps[0]) {
		t.Fatalf("want one L4-only SMI policy, got %d (split %v)", len(ps), len(ps) > 0 && Split(ps[0]))
	}
	if err := Validate(f.HTTP, f.TCP); err != nil {
		t.Fatal(err)
	}
	client := spiffe("default", "client")
	for _, c := range []struct {
		port  uint32
		src   string
		allow bool
	}{{8301, client, true}, {8300, client, true}, {8302, client, true}, {9000, client, false}, {8301, spiffe("default", "x"), false}} {
		r := request{principal: c.src, port: c.port}
		if v := evalTCP(t, f.TCP, r); v.allowed != c.allow {
			t.Errorf("TCP %s:%d allowed=%v, want %v", c.src, c.port, v.allowed, c.allow)
		}
		if v := evalHTTP(t, f.HTTP, r); v.allowed != c.allow {
			t.Errorf("HTTP %s:%d allowed=%v, want %v", c.src, c.port, v.allowed, c.allow)
		}
	}
}

// TrafficTarget and AuthorizationPolicy both apply: a request must be
// allowed by both, and an Istio DENY still wins.
func TestSMIAndIstioBothApply(t *testing.T) {
	istio := decode(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: default}
spec:
  rules:
  - to: [{operation: {methods: ["GET"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-internal, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/api/internal*"]}}]
`)
	snap := snapshot(t, load(t, "../../config/testdata/smi/traffic-access-v1alpha3-02.yaml"), istio)
	f := Build(snap, Workload{Namespace: "default", ServiceAccount: "api-service"}, Options{})
	if len(f.Diagnostics) > 0 {
		t.Fatal(f.Diagnostics)
	}
	website := spiffe("default", "website-service")
	for _, c := range []struct {
		name  string
		req   request
		allow bool
	}{
		{"GET /api: both allow", request{principal: website, method: "GET", path: "/api", port: 8080}, true},
		{"POST /api: SMI allows, Istio ALLOW does not", request{principal: website, method: "POST", path: "/api", port: 8080}, false},
		{"GET /other: Istio allows, SMI does not", request{principal: website, method: "GET", path: "/other", port: 8080}, false},
		{"GET /api/internal: Istio DENY", request{principal: website, method: "GET", path: "/api/internal/x", port: 8080}, false},
	} {
		if v := evalHTTP(t, f.HTTP, c.req); v.allowed != c.allow {
			t.Errorf("%s: allowed=%v (%s), want %v", c.name, v.allowed, v.by, c.allow)
		}
	}
}

func TestSMIMissingRoutesFailClosed(t *testing.T) {
	snap := snapshot(t, decode(t, `apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: t, namespace: default}
spec:
  destination: {kind: ServiceAccount, name: api, namespace: default}
  rules: [{kind: HTTPRouteGroup, name: missing}]
  sources: [{kind: ServiceAccount, name: web, namespace: default}]
`))
	f := Build(snap, Workload{Namespace: "default", ServiceAccount: "api"}, Options{})
	if len(f.Diagnostics) != 1 || !strings.Contains(f.Diagnostics[0].String(), "TrafficTarget/default/t spec.rules[0].name: HTTPRouteGroup default/missing not found") {
		t.Errorf("diagnostics %v", f.Diagnostics)
	}
	if evalHTTP(t, f.HTTP, request{principal: spiffe("default", "web"), path: "/"}).allowed {
		t.Error("a TrafficTarget with a missing route allowed traffic")
	}
}

func TestTrafficSplitWeights(t *testing.T) {
	services := decode(t, `apiVersion: v1
kind: Service
metadata: {name: website, namespace: default}
spec: {selector: {app: website}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: website-v1, namespace: default}
spec: {selector: {app: website, version: v1}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: website-v2, namespace: default}
spec: {selector: {app: website, version: v2}, ports: [{port: 80}]}
`)
	canary := load(t, "../../config/testdata/smi/traffic-split-v1alpha4-00.yaml")
	got, diags := TrafficSplitWeights(snapshot(t, services, canary), "default", "website")
	want := []WeightedBackend{{"website-v1", "website-v1.default.svc.cluster.local", 90}, {"website-v2", "website-v2.default.svc.cluster.local", 10}}
	if diff := cmp.Diff(want, got); diff != "" || len(diags) > 0 {
		t.Errorf("weights (-want +got):\n%s\ndiagnostics %v", diff, diags)
	}
	if got, _ := TrafficSplitWeights(snapshot(t, services, canary), "default", "other"); got != nil {
		t.Errorf("split for a service without TrafficSplit: %v", got)
	}

	// An Istio VirtualService for the host wins, with a Warning.
	vs := decode(t, `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: website, namespace: default}
spec:
  hosts: [website]
  http: [{route: [{destination: {host: website-v1}}]}]
`)
	got, diags = TrafficSplitWeights(snapshot(t, services, canary, vs), "default", "website")
	if got != nil || len(diags) != 1 || diags[0].Severity != config.SeverityWarning ||
		!strings.Contains(diags[0].Message, "VirtualService default/website routes host website.default.svc.cluster.local and takes precedence") {
		t.Errorf("with a VirtualService: %v, %v", got, diags)
	}

	// The ab-test split carries its matches.
	ab := load(t, "../../config/testdata/smi/traffic-split-v1alpha4-01.yaml")
	r, diags := TrafficSplitFor(snapshot(t, services, ab), "default", "website")
	if r == nil || len(diags) > 0 || len(r.Backends) != 2 || r.Backends[1].Weight != 100 {
		t.Fatalf("ab-test: %+v %v", r, diags)
	}
	if len(r.Matches) != 1 || r.Matches[0].Headers["user-agent"] != ".*Firefox.*" {
		t.Errorf("ab-test matches %+v", r.Matches)
	}
	if got, diags := TrafficSplitWeights(snapshot(t, services, ab), "default", "website"); got != nil || len(diags) != 1 {
		t.Errorf("TrafficSplitWeights returned a split with matches: %v %v", got, diags)
	}
	// Without website-v2 only a weight of 0 is left: ignored, with errors.
	r, diags = TrafficSplitFor(snapshot(t, services[:2], ab), "default", "website")
	if r != nil || len(diags) != 2 || !strings.Contains(diags[0].String(), "spec.backends[1].service: Service default/website-v2 not found") {
		t.Errorf("missing backend: %+v %v", r, diags)
	}
}
