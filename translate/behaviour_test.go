package translate

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const (
	reviewsV1 = "outbound|9080|v1|reviews.default.svc.cluster.local"
	reviewsV2 = "outbound|9080|v2|reviews.default.svc.cluster.local"
	reviewsV3 = "outbound|9080|v3|reviews.default.svc.cluster.local"
)

func TestBehaviour(t *testing.T) {
	nodeA := Proxy{Node: "node-a"}
	grpcDefault := Proxy{Kind: ProxylessGRPC, Namespace: "default"}
	grpcShop := Proxy{Kind: ProxylessGRPC, Namespace: "shop"}
	mesh := "testdata/behaviour/mesh.yaml"
	tests := []struct {
		name    string
		files   []string
		proxy   Proxy
		req     request
		want    map[string]uint32 // cluster -> weight
		wantErr string            // substring of the simulation error
		route   string            // expected route name, if set
	}{
		{
			name: "jason goes to v2", files: bookinfo(vsFile("virtual-service-reviews-jason-v2-v3.yaml")), proxy: nodeA,
			req:  request{Namespace: "default", DestIP: "10.9.9.9", Port: 9080, Host: "reviews:9080", Headers: map[string]string{"end-user": "jason"}},
			want: map[string]uint32{reviewsV2: 1},
		},
		{
			name: "others go to v3", files: bookinfo(vsFile("virtual-service-reviews-jason-v2-v3.yaml")), proxy: nodeA,
			req:  request{Namespace: "default", Port: 9080, Host: "reviews", Headers: map[string]string{"end-user": "mike"}},
			want: map[string]uint32{reviewsV3: 1},
		},
		{
			name: "80/20 split", files: bookinfo(vsFile("virtual-service-reviews-80-20.yaml")), proxy: nodeA,
			req:  request{Namespace: "default", Port: 9080, Host: "reviews.default.svc.cluster.local:9080"},
			want: map[string]uint32{reviewsV1: 80, reviewsV2: 20},
		},
		{
			name: "default route without VirtualService", files: bookinfo(vsFile("virtual-service-reviews-80-20.yaml")), proxy: nodeA,
			req:  request{Namespace: "default", Port: 9080, Host: "details.default"},
			want: map[string]uint32{"outbound|9080||details.default.svc.cluster.local": 1}, route: "default",
		},
		{
			name: "all-v1 pins every service", files: bookinfo(vsFile("virtual-service-all-v1.yaml")), proxy: nodeA,
			req:  request{Namespace: "default", Port: 9080, Host: "ratings"},
			want: map[string]uint32{"outbound|9080|v1|ratings.default.svc.cluster.local": 1},
		},
		{
			name: "proxyless gRPC, jason", files: bookinfo(vsFile("virtual-service-reviews-jason-v2-v3.yaml")), proxy: grpcDefault,
			req:  request{Port: 9080, Host: "reviews", Headers: map[string]string{"end-user": "jason"}},
			want: map[string]uint32{reviewsV2: 1},
		},
		{
			name: "proxyless gRPC by FQDN", files: bookinfo(vsFile("virtual-service-reviews-90-10.yaml")), proxy: grpcDefault,
			req:  request{Port: 9080, Host: "reviews.default.svc.cluster.local"},
			want: map[string]uint32{reviewsV1: 90, reviewsV2: 10},
		},
		{
			name: "proxyless gRPC: short name only in own namespace", files: bookinfo(mesh), proxy: grpcShop,
			req: request{Port: 9080, Host: "reviews"}, wantErr: "no API listener",
		},
		{
			name: "exact path", files: []string{mesh}, proxy: nodeA,
			req:  request{Namespace: "shop", DestIP: "10.96.1.1", Port: 80, Host: "web", Path: "/productpage"},
			want: map[string]uint32{"outbound|80||web.shop.svc.cluster.local": 1},
		},
		{
			name: "exact path does not match longer path", files: []string{mesh}, proxy: nodeA,
			req: request{Namespace: "shop", DestIP: "10.96.1.1", Port: 80, Host: "web", Path: "/productpage/x"}, wantErr: "404",
		},
		{
			name: "prefix path", files: []string{mesh}, proxy: nodeA,
			req:  request{Namespace: "shop", DestIP: "10.96.1.1", Port: 80, Host: "10.96.1.1:80", Path: "/static/app.css"},
			want: map[string]uint32{"outbound|80||web.shop.svc.cluster.local": 1},
		},
		{
			name: "regex path", files: []string{mesh}, proxy: nodeA,
			req:  request{Namespace: "shop", DestIP: "10.96.1.1", Port: 80, Host: "web.shop", Path: "/api/v1/products/42"},
			want: map[string]uint32{"outbound|80||web.shop.svc.cluster.local": 1},
		},
		{
			name: "method and header prefix", files: []string{mesh}, proxy: nodeA,
			req:  request{Namespace: "shop", DestIP: "10.96.1.1", Port: 80, Host: "web", Path: "/x", Method: "POST", Headers: map[string]string{"x-canary": "yes-please"}},
			want: map[string]uint32{"outbound|7070||grpc-api.shop.svc.cluster.local": 1},
		},
		{
			name: "method mismatch", files: []string{mesh}, proxy: nodeA,
			req: request{Namespace: "shop", DestIP: "10.96.1.1", Port: 80, Host: "web", Path: "/x", Method: "GET", Headers: map[string]string{"x-canary": "yes"}}, wantErr: "404",
		},
		{
			name: "TCP service with weighted subsets", files: []string{mesh}, proxy: nodeA,
			req:  request{Namespace: "shop", DestIP: "10.96.1.2", Port: 5432},
			want: map[string]uint32{"outbound|5432|primary|db.shop.svc.cluster.local": 90, "outbound|5432|replica|db.shop.svc.cluster.local": 10},
		},
		{
			name: "unknown destination passes through", files: []string{mesh}, proxy: nodeA,
			req:  request{Namespace: "shop", DestIP: "1.2.3.4", Port: 443},
			want: map[string]uint32{PassthroughCluster: 1},
		},
		{
			name: "Sidecar hides other namespaces", files: bookinfo(mesh), proxy: nodeA,
			req:  request{Namespace: "shop", DestIP: "10.1.0.13", Port: 9080, Host: "reviews.default.svc.cluster.local"},
			want: map[string]uint32{PassthroughCluster: 1},
		},
		{
			name: "namespace without Sidecar sees default", files: bookinfo(mesh), proxy: nodeA,
			req:  request{Namespace: "open", Port: 9080, Host: "reviews.default.svc.cluster.local"},
			want: map[string]uint32{"outbound|9080||reviews.default.svc.cluster.local": 1},
		},
		{
			name: "exportTo dot hides a service from other namespaces", files: bookinfo(mesh), proxy: nodeA,
			req:  request{Namespace: "open", DestIP: "10.96.0.50", Port: 9080, Host: "secret.default.svc.cluster.local"},
			want: map[string]uint32{PassthroughCluster: 1}, route: "allow_any", // not through the mesh's routes
		},
		{
			name: "REGISTRY_ONLY namespace reaches what its Sidecar lists", files: bookinfo(mesh), proxy: nodeA,
			req:  request{Namespace: "locked", DestIP: "10.1.0.13", Port: 9080, Host: "reviews.default:9080"},
			want: map[string]uint32{"outbound|9080||reviews.default.svc.cluster.local": 1},
		},
		{
			name: "REGISTRY_ONLY namespace: unknown HTTP host is not passed through", files: bookinfo(mesh), proxy: nodeA,
			req: request{Namespace: "locked", DestIP: "1.2.3.4", Port: 9080, Host: "example.org"}, wantErr: "no virtual host",
		},
		{
			name: "REGISTRY_ONLY namespace: unknown destination is dropped", files: bookinfo(mesh), proxy: nodeA,
			req:  request{Namespace: "locked", DestIP: "1.2.3.4", Port: 443},
			want: map[string]uint32{BlackHoleCluster: 1},
		},
		{
			name: "ALLOW_ANY namespace: unknown HTTP host passes through", files: bookinfo(mesh), proxy: nodeA,
			req:  request{Namespace: "open", DestIP: "1.2.3.4", Port: 9080, Host: "example.org"},
			want: map[string]uint32{PassthroughCluster: 1}, route: "allow_any",
		},
		{
			name: "exportTo dot keeps the service in its namespace", files: bookinfo(mesh), proxy: nodeA,
			req:  request{Namespace: "default", DestIP: "10.96.0.50", Port: 9080, Host: "secret"},
			want: map[string]uint32{"outbound|9080||secret.default.svc.cluster.local": 1},
		},
		{
			name: "egress ServiceEntry with DNS resolution and port rewrite", files: bookinfo(vsFile("egress-rule-google-apis.yaml")), proxy: nodeA,
			req:  request{Namespace: "default", DestIP: "142.250.0.1", Port: 80, Host: "www.googleapis.com"},
			want: map[string]uint32{"outbound|443||www.googleapis.com": 1},
		},
		{
			name: "ServiceEntry with CIDR address", files: bookinfo(mesh), proxy: nodeA,
			req:  request{Namespace: "open", DestIP: "192.168.50.99", Port: 8080, Host: "legacy.internal:8080"},
			want: map[string]uint32{"outbound|8080||legacy.internal": 1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			nc := mustTranslate(t, load(t, tc.files...), tc.proxy)
			got, err := simulate(nc, tc.req)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("simulate = %+v, %v; want error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("simulate: %v", err)
			}
			if diff := cmp.Diff(tc.want, got.Clusters); diff != "" {
				t.Errorf("clusters (-want +got):\n%s\nresult: %+v", diff, got)
			}
			if tc.route != "" && got.Route != tc.route {
				t.Errorf("route = %q, want %q", got.Route, tc.route)
			}
			for c := range got.Clusters {
				if findCluster(nc, c) == nil {
					t.Errorf("routed to cluster %q that the node does not have", c)
				}
			}
		})
	}
}

func TestEndpoints(t *testing.T) {
	snap := load(t, bookinfo("testdata/behaviour/mesh.yaml")...)
	nc := mustTranslate(t, snap, Proxy{Node: "node-a"})
	tests := []struct {
		cluster string
		want    []string
	}{
		{reviewsV3, []string{"10.2.0.11:9080", "10.2.0.12:9080"}}, // every DestinationRule subset gets a cluster
		{"outbound|9080||reviews.default.svc.cluster.local", []string{"10.1.0.13:9080", "10.2.0.10:9080", "10.2.0.11:9080", "10.2.0.12:9080"}},
		{"outbound|80||web.shop.svc.cluster.local", []string{"10.1.0.20:8080"}},                 // named targetPort
		{"outbound|7070||grpc-api.shop.svc.cluster.local", []string{"10.1.0.30:17070"}},         // EndpointSlice, ready only
		{"outbound|5432|replica|db.shop.svc.cluster.local", []string{"10.2.0.21:5432"}},         // subset labels, running only
		{"outbound|8080||legacy.internal", []string{"192.168.50.7:18080", "192.168.50.8:8080"}}, // ServiceEntry
	}
	for _, tc := range tests {
		t.Run(tc.cluster, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, endpointsOf(nc, tc.cluster)); diff != "" {
				t.Errorf("endpoints (-want +got):\n%s", diff)
			}
		})
	}
	db := findCluster(nc, "outbound|5432|replica|db.shop.svc.cluster.local")
	if db.GetLbPolicy().String() != "LEAST_REQUEST" || db.GetConnectTimeout().AsDuration().String() != "3s" ||
		db.GetCircuitBreakers().GetThresholds()[0].GetMaxConnections().GetValue() != 100 {
		t.Errorf("DestinationRule policy not applied to subset cluster: %v", db)
	}
	if od := db.GetOutlierDetection(); od.GetConsecutive_5Xx().GetValue() != 7 || od.GetEnforcingConsecutive_5Xx().GetValue() != 100 ||
		od.GetInterval().AsDuration().String() != "5s" || od.GetBaseEjectionTime().AsDuration().String() != "30s" || od.GetMaxEjectionPercent().GetValue() != 50 {
		t.Errorf("outlier detection not applied: %v", od)
	}
	dns := findCluster(nc, "outbound|443||www.googleapis.com")
	if dns.GetType().String() != "STRICT_DNS" || len(dns.GetLoadAssignment().GetEndpoints()) != 1 ||
		dns.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetAddress() != "www.googleapis.com" {
		t.Errorf("DNS ServiceEntry: want a STRICT_DNS cluster resolving www.googleapis.com, got %v", dns)
	}
	grpc := mustTranslate(t, snap, Proxy{Kind: ProxylessGRPC, Namespace: "default"})
	if c := findCluster(grpc, "outbound|443||www.googleapis.com"); c.GetType().String() != "LOGICAL_DNS" {
		t.Errorf("DNS ServiceEntry for gRPC: want LOGICAL_DNS, got %v", c)
	}
}

// A Sidecar egress listener with a port lets its hosts through on that
// port only.
func TestSidecarEgressPort(t *testing.T) {
	snap := decode(t, `
apiVersion: v1
kind: Service
metadata: {name: multi, namespace: default}
spec:
  clusterIP: 10.96.3.3
  ports: [{name: http-a, port: 80}, {name: http-b, port: 8080}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: ported}
spec:
  egress:
  - port: {number: 8080, protocol: HTTP, name: http}
    hosts: ["default/*"]
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: ported}
spec: {nodeName: node-a, containers: [{name: c, image: c}]}
status: {phase: Running, podIP: 10.1.0.60}
`, bookinfo()...)
	nc := mustTranslate(t, snap, Proxy{Node: "node-a"})
	got, err := simulate(nc, request{Namespace: "ported", DestIP: "10.96.3.3", Port: 8080, Host: "multi.default:8080"})
	if err != nil || got.only() != "outbound|8080||multi.default.svc.cluster.local" {
		t.Errorf("port 8080: %+v, %v; want the service", got, err)
	}
	got, err = simulate(nc, request{Namespace: "ported", DestIP: "10.96.3.3", Port: 80, Host: "multi.default"})
	if err != nil || got.only() != PassthroughCluster {
		t.Errorf("port 80: %+v, %v; want passthrough (not visible on that port)", got, err)
	}
	got, err = simulate(nc, request{Namespace: "default", DestIP: "10.96.3.3", Port: 80, Host: "multi"})
	if err != nil || got.only() != "outbound|80||multi.default.svc.cluster.local" {
		t.Errorf("from default, port 80: %+v, %v; want the service", got, err)
	}
}
