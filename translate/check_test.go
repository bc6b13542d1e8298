package translate

import (
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	connlimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/connection_limit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/nodemesh/nodemesh/config"
)

// Check must catch each kind of inconsistency a proxy would reject.
func TestCheckFindsBrokenConfig(t *testing.T) {
	snap := load(t, bookinfo("testdata/behaviour/mesh.yaml", vsFile("virtual-service-reviews-80-20.yaml"))...)
	tests := []struct {
		name   string
		proxy  Proxy
		break_ func(nc *NodeConfig)
		want   string
	}{
		{"missing route configuration", Proxy{Node: "node-a"}, func(nc *NodeConfig) { nc.Routes = nc.Routes[1:] }, "route configuration"},
		{"missing route configuration of an API listener", Proxy{Kind: ProxylessGRPC, Namespace: "default"},
			func(nc *NodeConfig) { nc.Routes = nc.Routes[1:] }, "does not exist"},
		{"route to a missing cluster", Proxy{Node: "node-a"}, func(nc *NodeConfig) {
			nc.Clusters = slicesDelete(nc.Clusters, func(c *clusterv3.Cluster) bool { return c.GetName() == reviewsV2 })
			nc.Endpoints = slicesDelete(nc.Endpoints, func(e *endpointv3.ClusterLoadAssignment) bool { return e.GetClusterName() == reviewsV2 })
		}, `cluster "` + reviewsV2 + `" does not exist`},
		{"tcp_proxy to a missing cluster", Proxy{Node: "node-a"}, func(nc *NodeConfig) {
			nc.Clusters = slicesDelete(nc.Clusters, func(c *clusterv3.Cluster) bool { return c.GetName() == PassthroughCluster })
		}, `cluster "PassthroughCluster" does not exist`},
		{"EDS cluster without load assignment", Proxy{Node: "node-a"}, func(nc *NodeConfig) { nc.Endpoints = nc.Endpoints[1:] }, "no load assignment"},
		{"orphan load assignment", Proxy{Node: "node-a"}, func(nc *NodeConfig) {
			nc.Endpoints = append(nc.Endpoints, &endpointv3.ClusterLoadAssignment{ClusterName: "zzz"})
		}, "no EDS cluster uses it"},
		{"duplicate names", Proxy{Node: "node-a"}, func(nc *NodeConfig) {
			nc.Clusters = append(nc.Clusters[:1], nc.Clusters...)
		}, "appears twice"},
		{"unsorted", Proxy{Node: "node-a"}, func(nc *NodeConfig) {
			nc.Listeners[0], nc.Listeners[1] = nc.Listeners[1], nc.Listeners[0]
		}, "not sorted"},
		{"resource that fails Validate", Proxy{Node: "node-a"}, func(nc *NodeConfig) {
			nc.Clusters[0].ConnectTimeout.Seconds = -1
		}, "ConnectTimeout"},
		{"virtual host that fails Validate", Proxy{Node: "node-a"}, func(nc *NodeConfig) {
			nc.Routes[0].VirtualHosts[0].Domains = nil
		}, "Domains"},
		{"router not last", Proxy{Kind: ProxylessGRPC, Namespace: "default"}, func(nc *NodeConfig) {
			hcm := httpConnectionManager("x", nc.Routes[0].GetName())
			hcm.HttpFilters = append(hcm.HttpFilters, proto.Clone(hcm.HttpFilters[0]).(*hcmv3.HttpFilter))
			hcm.HttpFilters[0].Name = "first"
			nc.Listeners[0].ApiListener.ApiListener = mustAny(hcm)
		}, "router must be the last"},
		{"terminal filter not last", Proxy{Node: "node-a"}, func(nc *NodeConfig) {
			fc := findListener(nc, "outbound_shop").DefaultFilterChain
			slices.Reverse(fc.Filters)
		}, "ends with its one terminal filter"},
		{"connection limit of zero", Proxy{Node: "node-a"}, func(nc *NodeConfig) {
			fc := findListener(nc, "inbound_shop").FilterChains[0]
			fc.Filters[0] = &listenerv3.Filter{Name: connectionLimitFilterName, ConfigType: &listenerv3.Filter_TypedConfig{
				TypedConfig: mustAny(&connlimitv3.ConnectionLimit{StatPrefix: "inbound_shop", MaxConnections: wrapperspb.UInt64(0)})}}
		}, "MaxConnections"},
		{"overlapping filter chains", Proxy{Node: "node-a"}, func(nc *NodeConfig) {
			l := findListener(nc, "outbound_shop")
			l.FilterChains = append(l.FilterChains, proto.Clone(l.FilterChains[0]).(*listenerv3.FilterChain))
		}, "both match"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			nc := Translate(snap, tc.proxy) // a fresh, unshared copy
			if err := Check(nc); err != nil {
				t.Fatalf("valid config fails Check: %v", err)
			}
			tc.break_(nc)
			err := Check(nc)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check = %v; want an error containing %q", err, tc.want)
			}
			// Mesh.Check remembers validation per resource but still
			// checks names and references per node. (Resources are
			// immutable, so it is asked about broken content only
			// before it has seen the valid version.)
			m := Prepare(snap)
			nc = m.Translate(tc.proxy)
			// These change a resource's content rather than the set of resources.
			mutates := map[string]bool{"resource that fails Validate": true, "router not last": true, "virtual host that fails Validate": true, "overlapping filter chains": true,
				"terminal filter not last": true, "connection limit of zero": true}
			if !mutates[tc.name] {
				if err := m.Check(nc); err != nil {
					t.Fatalf("valid config fails Mesh.Check: %v", err)
				}
			}
			tc.break_(nc)
			if err := m.Check(nc); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Mesh.Check = %v; want an error containing %q", err, tc.want)
			}
		})
	}
	if err := Check(nil); err == nil {
		t.Error("Check(nil) = nil")
	}
}

func slicesDelete[T any](s []T, del func(T) bool) []T {
	var out []T
	for _, v := range s {
		if !del(v) {
			out = append(out, v)
		}
	}
	return out
}

// Two services claiming the same VIP and port: the first keeps it, the
// second is diagnosed, and the listener stays valid.
func TestSharedVIPDiagnosed(t *testing.T) {
	snap := decode(t, `
apiVersion: v1
kind: Service
metadata: {name: a, namespace: default}
spec: {clusterIP: 10.96.7.7, ports: [{name: tcp, port: 5000}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: default}
spec: {clusterIP: 10.96.7.7, ports: [{name: tcp, port: 5000}]}
`, "testdata/pods.yaml")
	nc := mustTranslate(t, snap, Proxy{Node: "node-a"})
	got, err := simulate(nc, request{Namespace: "default", DestIP: "10.96.7.7", Port: 5000})
	if err != nil || got.only() != "outbound|5000||a.default.svc.cluster.local" {
		t.Errorf("simulate = %+v, %v; want service a", got, err)
	}
	found := false
	for _, d := range nc.Diagnostics {
		if d.Object == (config.Key{Kind: config.KindService, Namespace: "default", Name: "b"}) && d.Severity == config.SeverityWarning &&
			strings.Contains(d.Message, "a.default.svc.cluster.local") {
			found = true
		}
	}
	if !found {
		t.Errorf("no warning on Service/default/b; diagnostics: %v", nc.Diagnostics)
	}
}
