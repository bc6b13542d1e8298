package translate

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// shareMeshYAML: namespaces a, b, c with one HTTP service each (VIPs
// 10.96.<i>.1) and a pod of each on node-1; c has a Sidecar that limits it
// to its own namespace; a's service has an 80/20 VirtualService with weight
// w for v1.
func shareMeshYAML(w int) string {
	var b strings.Builder
	for i, ns := range []string{"a", "b", "c"} {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: %s}\nspec:\n  clusterIP: 10.96.%d.1\n  selector: {app: web}\n  ports: [{name: http, port: 80}]\n", ns, i)
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata: {name: web-0, namespace: %s, labels: {app: web, version: v1}}\nspec:\n  nodeName: node-1\n  containers: [{name: c, image: c}]\nstatus: {phase: Running, podIP: 10.1.%d.1}\n", ns, i)
	}
	fmt.Fprintf(&b, `---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: a}
spec:
  host: web
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: a}
spec:
  hosts: [web]
  http:
  - route:
    - {destination: {host: web, subset: v1}, weight: %d}
    - {destination: {host: web, subset: v2}, weight: %d}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: c}
spec:
  egress: [{hosts: ["./*"]}]
`, w, 100-w)
	return b.String()
}

// TestMain verifies every route configuration shared in any test: equal
// view keys must mean equal content. Benchmarks measure what production
// runs: no verification.
func TestMain(m *testing.M) {
	flag.Parse()
	verifySharing = flag.Lookup("test.bench").Value.String() == ""
	code := m.Run()
	if n := sharingMismatches.Load(); n > 0 && code == 0 {
		fmt.Fprintf(os.Stderr, "FAIL: %d route configurations shared under one view key differ in content\n", n)
		code = 1
	}
	os.Exit(code)
}

func routeNames(nc *NodeConfig) []string {
	var out []string
	for _, r := range nc.Routes {
		out = append(out, r.GetName())
	}
	return out
}

func TestRouteConfigurationsAreSharedByView(t *testing.T) {
	node := Proxy{Node: "node-1"}
	nc := mustTranslate(t, decode(t, shareMeshYAML(80)), node)
	// a and b see the same mesh: one shared configuration for both, plus
	// each one's own for its VIPs; c sees only itself (its VIP is its own),
	// so it needs no shared one.
	want := []string{"outbound_80", "outbound_a_80", "outbound_b_80", "outbound_c_80"}
	if got := routeNames(nc); !slices.Equal(got, want) {
		t.Fatalf("route configurations %v, want %v", got, want)
	}

	aV1, aV2 := "outbound|80|v1|web.a.svc.cluster.local", "outbound|80|v2|web.a.svc.cluster.local"
	tests := []struct {
		name  string
		req   request
		route string
		want  map[string]uint32
	}{
		{"own service by short name", request{Namespace: "a", DestIP: "10.96.0.1", Port: 80, Host: "web"}, "outbound_a_80", map[string]uint32{aV1: 80, aV2: 20}},
		{"other namespace by FQDN, shared", request{Namespace: "b", DestIP: "10.96.0.1", Port: 80, Host: "web.a.svc.cluster.local"}, "outbound_80", map[string]uint32{aV1: 80, aV2: 20}},
		{"short name of b from b", request{Namespace: "b", DestIP: "10.96.1.1", Port: 80, Host: "web:80"}, "outbound_b_80", map[string]uint32{"outbound|80||web.b.svc.cluster.local": 1}},
		{"b's VIP from a, shared", request{Namespace: "a", DestIP: "10.96.1.1", Port: 80, Host: "web.b"}, "outbound_80", map[string]uint32{"outbound|80||web.b.svc.cluster.local": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := simulate(nc, tt.req)
			if err != nil {
				t.Fatal(err)
			}
			if res.RouteConfig != tt.route || !mapsEqual(res.Clusters, tt.want) {
				t.Fatalf("route config %s clusters %v, want %s %v", res.RouteConfig, res.Clusters, tt.route, tt.want)
			}
		})
	}

	// A weight change keeps every name (no listener change) and changes
	// the shared configuration's content.
	nc2 := mustTranslate(t, decode(t, shareMeshYAML(50)), node)
	if got := routeNames(nc2); !slices.Equal(got, want) {
		t.Fatalf("after a weight change: route configurations %v, want %v", got, want)
	}
	if shared := func(nc *NodeConfig) *routev3.RouteConfiguration { return nc.Routes[0] }; shared(nc).String() == shared(nc2).String() {
		t.Fatal("the shared route configuration did not change with the weight")
	}
}

func TestNamespaceWithOwnVirtualServiceGetsItsOwnView(t *testing.T) {
	// A VirtualService in b for a's host changes b's view: b gets a scoped
	// shared configuration, a keeps the mesh default.
	yaml := shareMeshYAML(80) + `---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web-a, namespace: b}
spec:
  hosts: [web.a.svc.cluster.local]
  exportTo: ["."]
  http:
  - route:
    - destination: {host: web.a.svc.cluster.local, subset: v2}
`
	nc := mustTranslate(t, decode(t, yaml), Proxy{Node: "node-1"})
	names := routeNames(nc)
	if !slices.Contains(names, "outbound_80") || !slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, "outbound_80~") }) {
		t.Fatalf("route configurations %v: want outbound_80 and a scoped outbound_80~<hash>", names)
	}
	res, err := simulate(nc, request{Namespace: "b", DestIP: "10.96.0.1", Port: 80, Host: "web.a"})
	if err != nil {
		t.Fatal(err)
	}
	if !mapsEqual(res.Clusters, map[string]uint32{"outbound|80|v2|web.a.svc.cluster.local": 1}) {
		t.Fatalf("b's own VirtualService not applied: %+v", res)
	}
}

func mapsEqual(a, b map[string]uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
