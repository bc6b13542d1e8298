// Package grpcxdstest holds what the proxyless gRPC mTLS tests share: a
// gRPC xDS bootstrap with file_watcher certificates, gRPC-Go's xDS server
// configured by an ADS server of its own (mTLS through
// secure.DownstreamProvider, RBAC allowing one principal), and an echo
// service answering with the caller's SPIFFE ID. Tests only.
package grpcxdstest

import (
	"context"
	"encoding/json"
	"net"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	cachetypes "github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	grpcxds "google.golang.org/grpc/xds"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/nodemesh/nodemesh/translate/secure"
)

// Bootstrap is a gRPC xDS bootstrap: the xDS server (insecure channel
// credentials, or "tls" with ads as its config), node, and the
// file_watcher certificate provider instance translate/secure names,
// reading files.
func Bootstrap(t testing.TB, server string, ads, node, files map[string]any) []byte {
	t.Helper()
	creds := []any{map[string]any{"type": "insecure"}}
	if ads != nil {
		creds = []any{map[string]any{"type": "tls", "config": ads}}
	}
	b, err := json.Marshal(map[string]any{
		"xds_servers": []any{map[string]any{"server_uri": server, "channel_creds": creds, "server_features": []string{"xds_v3"}}},
		"node":        node,
		"certificate_providers": map[string]any{
			secure.DefaultCertProviderInstance: map[string]any{"plugin_name": "file_watcher", "config": files},
		},
		"server_listener_resource_name_template": "grpc/server?xds.resource.listening_address=%s",
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Echo answers with the caller's SPIFFE ID (Hostname) and certificate
// serial (Username), as the server's TLS saw them.
type Echo struct {
	testgrpc.UnimplementedTestServiceServer
}

// UnaryCall implements testgrpc.TestServiceServer.
func (Echo) UnaryCall(ctx context.Context, _ *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Internal, "no peer")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return nil, status.Errorf(codes.Unauthenticated, "no client certificate (auth info %T)", p.AuthInfo)
	}
	id, err := x509svid.IDFromCert(ti.State.PeerCertificates[0])
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	return &testgrpc.SimpleResponse{Hostname: id.String(), Username: ti.State.PeerCertificates[0].SerialNumber.String()}, nil
}

// AnyOf packs m.
func AnyOf(t testing.TB, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// ServerListener is what gRPC's xDS server asks for: named after its
// address, mTLS through secure.DownstreamProvider, RBAC allowing only
// principal, a non-forwarding route.
func ServerListener(t testing.TB, addr *net.TCPAddr, principal spiffeid.ID) *listenerv3.Listener {
	t.Helper()
	rbac := &rbacv3.RBAC{Rules: &rbacconfigv3.RBAC{
		Action: rbacconfigv3.RBAC_ALLOW,
		Policies: map[string]*rbacconfigv3.Policy{"client": {
			Permissions: []*rbacconfigv3.Permission{{Rule: &rbacconfigv3.Permission_Any{Any: true}}},
			Principals: []*rbacconfigv3.Principal{{Identifier: &rbacconfigv3.Principal_Authenticated_{Authenticated: &rbacconfigv3.Principal_Authenticated{
				PrincipalName: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: principal.String()}},
			}}}},
		}},
	}}
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: "inbound",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name: "inbound",
			VirtualHosts: []*routev3.VirtualHost{{Name: "inbound", Domains: []string{"*"}, Routes: []*routev3.Route{{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_NonForwardingAction{NonForwardingAction: &routev3.NonForwardingAction{}},
			}}}},
		}},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: "rbac", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: AnyOf(t, rbac)}},
			{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: AnyOf(t, &routerv3.Router{})}},
		},
	}
	l := &listenerv3.Listener{
		Name: "grpc/server?xds.resource.listening_address=" + addr.String(),
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: addr.IP.String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(addr.Port)}}}},
		FilterChains: []*listenerv3.FilterChain{{
			Name:            "inbound-mtls",
			TransportSocket: secure.DownstreamProvider(secure.DefaultCertProviderInstance),
			Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: AnyOf(t, hcm)}}},
		}},
	}
	if err := l.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	return l
}

// StartServer runs gRPC's xDS server with Echo on lis, its SVID in files,
// configured by a small ADS server of its own holding only
// ServerListener(principal), until the test ends.
func StartServer(t testing.TB, ctx context.Context, lis net.Listener, files map[string]any, principal spiffeid.ID) {
	t.Helper()
	addr := lis.Addr().(*net.TCPAddr)
	nodeID := "grpc-server-" + addr.String()
	cache := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	snap, err := cachev3.NewSnapshot("1", map[resourcev3.Type][]cachetypes.Resource{resourcev3.ListenerType: {ServerListener(t, addr, principal)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := cache.SetSnapshot(ctx, nodeID, snap); err != nil {
		t.Fatal(err)
	}
	adsLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	ads := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(ads, serverv3.NewServer(sctx, cache, nil))
	go ads.Serve(adsLis)
	t.Cleanup(func() { ads.Stop(); cancel() })
	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := grpcxds.NewGRPCServer(grpc.Creds(creds),
		grpcxds.BootstrapContentsForTesting(Bootstrap(t, adsLis.Addr().String(), nil, map[string]any{"id": nodeID}, files)))
	if err != nil {
		t.Fatal(err)
	}
	testgrpc.RegisterTestServiceServer(srv, Echo{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
}
