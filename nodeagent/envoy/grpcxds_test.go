package envoy

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// TestProxyServesGRPCXDSClient puts a real xDS client that nobody here
// wrote, gRPC-Go's, on the proxy's unix socket in Envoy's place: it resolves
// a listener, route, cluster and endpoints from the upstream control plane
// through the proxy, ACKs each, and its RPC reaches the backend.
func TestProxyServesGRPCXDSClient(t *testing.T) {
	// The backend: a real gRPC health server.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	backend := grpc.NewServer()
	healthpb.RegisterHealthServer(backend, health.NewServer())
	var wg sync.WaitGroup
	wg.Go(func() { _ = backend.Serve(lis) })
	defer func() { backend.Stop(); wg.Wait() }()

	u := newUpstreamCP(t)
	setEchoSnapshot(t, u, lis.Addr().(*net.TCPAddr).Port)
	p, _ := startProxy(t, u)

	bootstrap := fmt.Sprintf(`{
		"xds_servers": [{"server_uri": "unix://%s", "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
		"node": {"id": "node-a"}
	}`, p.cfg.Socket)
	rb, err := xds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///echo", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(rb))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// The client converges on the config in steps (listener, route,
	// cluster, endpoints); an RPC in between may fail Unavailable, so retry
	// until the deadline.
	var resp *healthpb.HealthCheckResponse
	for {
		resp, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("RPC through xds:///echo: %v", err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health = %v, want SERVING", resp.GetStatus())
	}

	// Every type is ACKed upstream through the proxy (the last ACK may
	// trail the RPC).
	types := []string{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType}
	ackedAll := func() (map[string]bool, bool) {
		acked := map[string]bool{}
		sotw, _, _ := u.requests()
		for _, r := range sotw {
			if r.GetVersionInfo() == "v1" && r.GetResponseNonce() != "" && r.GetErrorDetail() == nil {
				acked[r.GetTypeUrl()] = true
			}
		}
		for _, typ := range types {
			if !acked[typ] {
				return acked, false
			}
		}
		return acked, true
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		acked, ok := ackedAll()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not every type was ACKed to the control plane: %v", acked)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// setEchoSnapshot serves xds:///echo -> route -> cluster -> 127.0.0.1:port.
func setEchoSnapshot(t *testing.T, u *upstreamCP, port int) {
	t.Helper()
	router, _ := anypb.New(&routerv3.Router{})
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: "route-echo",
			ConfigSource:    &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
		}},
		HttpFilters: []*hcmv3.HttpFilter{{Name: "router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ads := &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	snap, err := cache.NewSnapshot("v1", map[resource.Type][]types.Resource{
		resource.ListenerType: {&listenerv3.Listener{Name: "echo", ApiListener: &listenerv3.ApiListener{ApiListener: hcm}}},
		resource.RouteType: {&routev3.RouteConfiguration{Name: "route-echo", VirtualHosts: []*routev3.VirtualHost{{
			Name: "echo", Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: ""}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "cluster-echo"}}},
			}},
		}}}},
		resource.ClusterType: {&clusterv3.Cluster{
			Name: "cluster-echo", ConnectTimeout: durationpb.New(time.Second),
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads},
		}},
		resource.EndpointType: {&endpointv3.ClusterLoadAssignment{
			ClusterName: "cluster-echo",
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				Locality: &corev3.Locality{Region: "r1", Zone: "z1"}, LoadBalancingWeight: wrapperspb.UInt32(1),
				LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: socketAddress("127.0.0.1", uint32(port)),
				}}}},
			}},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := u.cache.SetSnapshot(context.Background(), "node-a", snap); err != nil {
		t.Fatal(err)
	}
}
