package xds

import (
	"fmt"
	"sync"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
)

// fakeSource is a hand-written Source: a mesh of one service whose
// endpoints the test sets. broken makes the route point at a missing
// cluster, which the check must refuse.
type fakeSource struct {
	mu      sync.Mutex
	gen     uint64
	ips     []string
	broken  bool
	changed chan struct{}
	calls   map[translate.Proxy]int
}

func newFakeSource(ips ...string) *fakeSource {
	return &fakeSource{gen: 1, ips: ips, changed: make(chan struct{}, 1), calls: map[translate.Proxy]int{}}
}

func (f *fakeSource) Changed() <-chan struct{} { return f.changed }

func (f *fakeSource) Current() View {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fakeView{src: f, gen: f.gen, ips: append([]string(nil), f.ips...), broken: f.broken}
}

// set changes the mesh and signals, as config.Store does.
func (f *fakeSource) set(broken bool, ips ...string) {
	f.mu.Lock()
	f.gen++
	f.ips, f.broken = ips, broken
	f.mu.Unlock()
	select {
	case f.changed <- struct{}{}:
	default:
	}
}

// touch signals a change that changes nothing.
func (f *fakeSource) touch() {
	f.mu.Lock()
	ips, broken := f.ips, f.broken
	f.mu.Unlock()
	f.set(broken, ips...)
}

func (f *fakeSource) translations(p translate.Proxy) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[p]
}

type fakeView struct {
	src    *fakeSource
	gen    uint64
	ips    []string
	broken bool
}

func (v fakeView) Generation() uint64 { return v.gen }

const (
	fakeListener = "echo.default.svc.cluster.local:8080"
	fakeRoute    = "echo.default.svc.cluster.local:8080"
	fakeCluster  = "outbound|8080||echo.default.svc.cluster.local"
)

func (v fakeView) Translate(p translate.Proxy) *translate.NodeConfig {
	v.src.mu.Lock()
	v.src.calls[p]++
	v.src.mu.Unlock()
	target := fakeCluster
	if v.broken {
		target = "outbound|8080||missing"
	}
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{
		StatPrefix:     "echo",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: fakeRoute, ConfigSource: adsSource()}},
		HttpFilters:    []*hcmv3.HttpFilter{routerFilter()},
	})
	if err != nil {
		panic(err)
	}
	var lbs []*endpointv3.LbEndpoint
	for _, ip := range v.ips {
		lbs = append(lbs, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8080}}}},
		}}})
	}
	return &translate.NodeConfig{
		Proxy:     p,
		Listeners: []*listenerv3.Listener{{Name: fakeListener, ApiListener: &listenerv3.ApiListener{ApiListener: hcm}}},
		Routes: []*routev3.RouteConfiguration{{Name: fakeRoute, VirtualHosts: []*routev3.VirtualHost{{
			Name: "echo", Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: target}}},
			}},
		}}}},
		Clusters: []*clusterv3.Cluster{{
			Name: fakeCluster, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource()},
		}},
		Endpoints: []*endpointv3.ClusterLoadAssignment{{
			ClusterName: fakeCluster, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}},
		}},
		Diagnostics: []config.Diagnostic{{
			Severity: config.SeverityWarning, Object: config.Key{Kind: config.KindService, Namespace: "default", Name: "echo"},
			Message: fmt.Sprintf("fake diagnostic for %s", ProxyKindString(p.Kind)),
		}},
	}
}

func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
}

func routerFilter() *hcmv3.HttpFilter {
	r, err := anypb.New(&routerv3.Router{})
	if err != nil {
		panic(err)
	}
	return &hcmv3.HttpFilter{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: r}}
}
