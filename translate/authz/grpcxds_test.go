package authz

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachetypes "github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"
)

// gRPC-Go's xDS server is an independent RBAC evaluator: it fetches its
// inbound Listener from a go-control-plane ADS server holding our filters
// and must admit and reject calls exactly as the AuthorizationPolicy says
// (and as this package's evaluator predicts).

const grpcPolicy = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: grpc-allow, namespace: foo}
spec:
  rules:
  - to: [{operation: {paths: ["/grpc.health.v1.Health/Check"]}}]
  - when:
    - key: "request.headers[x-role]"
      values: ["admin", "ops*"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: grpc-deny, namespace: foo}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/grpc.testing.TestService/EmptyCall"]}}]
  - from: [{source: {notIpBlocks: ["127.0.0.0/8"]}}]
`

type testService struct {
	testgrpc.UnimplementedTestServiceServer
}

func (testService) UnaryCall(context.Context, *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	return &testgrpc.SimpleResponse{}, nil
}

func (testService) EmptyCall(context.Context, *testgrpc.Empty) (*testgrpc.Empty, error) {
	return &testgrpc.Empty{}, nil
}

func TestGRPCXDSServerEnforcesRBAC(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	filters, diags := build(t, decode(t, grpcPolicy), httpbin, Options{})
	if len(diags) > 0 {
		t.Fatal(diags)
	}

	addr := serveWithXDS(t, ctx, filters, nil, nil, insecure.NewCredentials())
	conn, err := grpc.NewClient(addr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc, tc := healthpb.NewHealthClient(conn), testgrpc.NewTestServiceClient(conn)

	// The server serves only once it has the Listener.
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("first Health/Check (server serving after LDS): %v", err)
	}
	calls := []struct {
		name   string
		path   string
		role   string
		call   func(context.Context) error
		expect codes.Code
	}{
		{"Health/Check", "/grpc.health.v1.Health/Check", "", func(ctx context.Context) error {
			_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
			return err
		}, codes.OK},
		{"UnaryCall", "/grpc.testing.TestService/UnaryCall", "", func(ctx context.Context) error {
			_, err := tc.UnaryCall(ctx, &testgrpc.SimpleRequest{})
			return err
		}, codes.PermissionDenied},
		{"UnaryCall as admin", "/grpc.testing.TestService/UnaryCall", "admin", func(ctx context.Context) error {
			_, err := tc.UnaryCall(ctx, &testgrpc.SimpleRequest{})
			return err
		}, codes.OK},
		{"UnaryCall as ops-1 (prefix)", "/grpc.testing.TestService/UnaryCall", "ops-1", func(ctx context.Context) error {
			_, err := tc.UnaryCall(ctx, &testgrpc.SimpleRequest{})
			return err
		}, codes.OK},
		{"UnaryCall as guest", "/grpc.testing.TestService/UnaryCall", "guest", func(ctx context.Context) error {
			_, err := tc.UnaryCall(ctx, &testgrpc.SimpleRequest{})
			return err
		}, codes.PermissionDenied},
		{"EmptyCall as admin (DENY wins)", "/grpc.testing.TestService/EmptyCall", "admin", func(ctx context.Context) error {
			_, err := tc.EmptyCall(ctx, &testgrpc.Empty{})
			return err
		}, codes.PermissionDenied},
	}
	for _, c := range calls {
		cctx := ctx
		headers := map[string]string{"content-type": "application/grpc"}
		if c.role != "" {
			cctx = metadata.AppendToOutgoingContext(ctx, "x-role", c.role)
			headers["x-role"] = c.role
		}
		got := status.Code(c.call(cctx))
		if got != c.expect {
			t.Errorf("%s: gRPC xDS server answered %v, want %v", c.name, got, c.expect)
		}
		// Our evaluator predicts the same.
		r := request{sourceIP: "127.0.0.1", destIP: "127.0.0.1", port: uint32(addr.Port), method: "POST", path: c.path,
			host: addr.String(), headers: headers}
		if v := evalHTTP(t, filters, r); v.allowed != (c.expect == codes.OK) {
			t.Errorf("%s: evaluator allowed=%v (%s), gRPC says %v", c.name, v.allowed, v.by, got)
		}
	}
}

// serveWithXDS starts a go-control-plane ADS server holding the inbound
// Listener (filters, and transport on its filter chain when not nil) and a
// gRPC xDS server (health + TestService) configured from it; it returns the
// server's address. extra is merged into the bootstrap.
func serveWithXDS(t *testing.T, ctx context.Context, filters []*hcmv3.HttpFilter, transport *corev3.TransportSocket,
	extra map[string]any, creds credentials.TransportCredentials) *net.TCPAddr {
	t.Helper()
	// The server's listening socket comes first: its address names the
	// Listener resource.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().(*net.TCPAddr)
	l := inboundListener(addr, filters)
	l.FilterChains[0].TransportSocket = transport
	if err := l.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	nodeID := "authz-grpc-server-" + t.Name()
	cache := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	snap, err := cachev3.NewSnapshot("1", map[resource.Type][]cachetypes.Resource{resource.ListenerType: {l}})
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Consistent(); err != nil {
		t.Fatal(err)
	}
	if err := cache.SetSnapshot(ctx, nodeID, snap); err != nil {
		t.Fatal(err)
	}
	cpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cp := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(cp, serverv3.NewServer(ctx, cache, nil))
	go cp.Serve(cpLis)
	t.Cleanup(cp.Stop)
	b := map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri":      cpLis.Addr().String(),
			"channel_creds":   []any{map[string]any{"type": "insecure"}},
			"server_features": []string{"xds_v3"},
		}},
		"node":                                   map[string]any{"id": nodeID},
		"server_listener_resource_name_template": "grpc/server?xds.resource.listening_address=%s",
	}
	for k, v := range extra {
		b[k] = v
	}
	bootstrap, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := xds.NewGRPCServer(grpc.Creds(creds), xds.BootstrapContentsForTesting(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	healthpb.RegisterHealthServer(srv, health.NewServer())
	testgrpc.RegisterTestServiceServer(srv, testService{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return addr
}

// inboundListener is the Listener gRPC's xDS server asks for: named after
// its listening address, one filter chain with an HCM whose route is
// non-forwarding, and the filters under test before the router.
func inboundListener(addr *net.TCPAddr, filters []*hcmv3.HttpFilter) *listenerv3.Listener {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: "inbound",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name: "inbound",
			VirtualHosts: []*routev3.VirtualHost{{
				Name: "inbound", Domains: []string{"*"},
				Routes: []*routev3.Route{{
					Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
					Action: &routev3.Route_NonForwardingAction{NonForwardingAction: &routev3.NonForwardingAction{}},
				}},
			}},
		}},
		HttpFilters: append(append([]*hcmv3.HttpFilter{}, filters...), &hcmv3.HttpFilter{
			Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})}}),
	}
	return &listenerv3.Listener{
		Name: fmt.Sprintf("grpc/server?xds.resource.listening_address=%s", addr.String()),
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: addr.IP.String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(addr.Port)}}}},
		FilterChains: []*listenerv3.FilterChain{{
			Name: "inbound-http",
			Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)}}},
		}},
	}
}
