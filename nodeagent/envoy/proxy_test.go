package envoy

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// upstreamCP is a real go-control-plane ADS server (SnapshotCache, Envoy
// types) on 127.0.0.1 recording the requests it receives.
type upstreamCP struct {
	t     *testing.T
	cache cache.SnapshotCache
	addr  string
	srv   *grpc.Server
	stop  func()

	mu       sync.Mutex
	sotw     []*discovery.DiscoveryRequest
	delta    []*discovery.DeltaDiscoveryRequest
	closed   int
	stopOnce sync.Once
}

func newUpstreamCP(t *testing.T) *upstreamCP {
	t.Helper()
	u := &upstreamCP{t: t, cache: cache.NewSnapshotCache(true, cache.IDHash{}, nil)}
	ctx, cancel := context.WithCancel(context.Background())
	cb := serverv3.CallbackFuncs{
		StreamRequestFunc: func(_ int64, r *discovery.DiscoveryRequest) error {
			u.mu.Lock()
			defer u.mu.Unlock()
			u.sotw = append(u.sotw, proto.Clone(r).(*discovery.DiscoveryRequest))
			return nil
		},
		StreamDeltaRequestFunc: func(_ int64, r *discovery.DeltaDiscoveryRequest) error {
			u.mu.Lock()
			defer u.mu.Unlock()
			u.delta = append(u.delta, proto.Clone(r).(*discovery.DeltaDiscoveryRequest))
			return nil
		},
		StreamClosedFunc: func(int64, *corev3.Node) {
			u.mu.Lock()
			defer u.mu.Unlock()
			u.closed++
		},
		DeltaStreamClosedFunc: func(int64, *corev3.Node) {
			u.mu.Lock()
			defer u.mu.Unlock()
			u.closed++
		},
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.addr = lis.Addr().String()
	u.srv = grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(u.srv, serverv3.NewServer(ctx, u.cache, cb))
	done := make(chan struct{})
	go func() { defer close(done); _ = u.srv.Serve(lis) }()
	u.stop = func() {
		u.stopOnce.Do(func() {
			cancel()
			u.srv.Stop()
			<-done
		})
	}
	t.Cleanup(u.stop)
	return u
}

func (u *upstreamCP) setClusters(version string, names ...string) {
	u.t.Helper()
	var res []types.Resource
	for _, n := range names {
		res = append(res, &clusterv3.Cluster{
			Name:                 n,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			ConnectTimeout:       durationpb.New(time.Second),
			EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			}},
		})
	}
	snap, err := cache.NewSnapshot(version, map[resource.Type][]types.Resource{resource.ClusterType: res})
	if err != nil {
		u.t.Fatal(err)
	}
	if err := u.cache.SetSnapshot(context.Background(), "node-a", snap); err != nil {
		u.t.Fatal(err)
	}
}

func (u *upstreamCP) requests() ([]*discovery.DiscoveryRequest, []*discovery.DeltaDiscoveryRequest, int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]*discovery.DiscoveryRequest(nil), u.sotw...), append([]*discovery.DeltaDiscoveryRequest(nil), u.delta...), u.closed
}

// startProxy runs a Proxy on a unix socket, upstream to u over a real
// client connection, and returns a gRPC client connection to the socket
// standing in for Envoy.
func startProxy(t *testing.T, u *upstreamCP) (*Proxy, *grpc.ClientConn) {
	t.Helper()
	up, err := grpc.NewClient(u.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "xds.sock")
	p, err := NewProxy(ProxyConfig{Socket: sock, Node: "node-a", Upstream: up, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	envoy, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		envoy.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("proxy Run: %v", err)
		}
		up.Close()
	})
	return p, envoy
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestProxySotWResourcesDownAcksUp(t *testing.T) {
	u := newUpstreamCP(t)
	u.setClusters("v1", "shop/web")
	p, conn := startProxy(t, u)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetVersionInfo() != "v1" || len(resp.GetResources()) != 1 {
		t.Fatalf("got version %q with %d resources, want v1 with 1 cluster", resp.GetVersionInfo(), len(resp.GetResources()))
	}
	var c clusterv3.Cluster
	if err := resp.GetResources()[0].UnmarshalTo(&c); err != nil || c.GetName() != "shop/web" {
		t.Fatalf("cluster = %v (%v), want shop/web", c.GetName(), err)
	}
	// ACK goes up.
	if err := stream.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ClusterType, VersionInfo: "v1", ResponseNonce: resp.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "ack upstream", func() bool {
		sotw, _, _ := u.requests()
		for _, r := range sotw {
			if r.GetResponseNonce() == resp.GetNonce() && r.GetVersionInfo() == "v1" && r.GetErrorDetail() == nil {
				return true
			}
		}
		return false
	})

	// A push reaches the live stream; a NACK of it goes up with its detail.
	u.setClusters("v2", "shop/web", "shop/db")
	resp2, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if resp2.GetVersionInfo() != "v2" || len(resp2.GetResources()) != 2 {
		t.Fatalf("push: version %q with %d resources, want v2 with 2", resp2.GetVersionInfo(), len(resp2.GetResources()))
	}
	const detail = "cluster shop/db: bad thing"
	if err := stream.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ClusterType, VersionInfo: "v1", ResponseNonce: resp2.GetNonce(),
		ErrorDetail: &status.Status{Code: int32(codes.InvalidArgument), Message: detail}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "nack upstream", func() bool {
		sotw, _, _ := u.requests()
		for _, r := range sotw {
			if r.GetResponseNonce() == resp2.GetNonce() && r.GetErrorDetail().GetMessage() == detail {
				return true
			}
		}
		return false
	})
	if got := p.Stats(); got.Open != 1 || got.Total != 1 {
		t.Errorf("proxy stats = %+v, want 1 open of 1", got)
	}

	// Envoy hanging up closes the upstream stream too.
	cancel()
	waitFor(t, "upstream stream closed", func() bool { _, _, closed := u.requests(); return closed == 1 })
	waitFor(t, "proxy stream closed", func() bool { return p.Stats().Open == 0 })
}

func TestProxyDeltaForcesNodeID(t *testing.T) {
	u := newUpstreamCP(t)
	u.setClusters("v1", "shop/web")
	_, conn := startProxy(t, u)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	// The snapshot exists only for node-a: getting it proves the proxy
	// replaced the node id.
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "impostor"}, TypeUrl: resource.ClusterType, ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResources()) != 1 || resp.GetResources()[0].GetName() != "shop/web" {
		t.Fatalf("delta response resources = %v, want shop/web", resp.GetResources())
	}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: resp.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "delta ack upstream", func() bool {
		_, delta, _ := u.requests()
		return len(delta) == 2 && delta[1].GetResponseNonce() == resp.GetNonce()
	})
	_, delta, _ := u.requests()
	if got := delta[0].GetNode().GetId(); got != "node-a" {
		t.Errorf("upstream saw node id %q, want node-a", got)
	}
}

func TestProxyControlPlaneDownIsUnavailable(t *testing.T) {
	u := newUpstreamCP(t)
	u.setClusters("v1", "shop/web")
	_, conn := startProxy(t, u)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	u.stop()
	_, err = stream.Recv()
	if grpcstatus.Code(err) != codes.Unavailable {
		t.Fatalf("after the control plane stopped, Recv() = %v, want Unavailable", err)
	}
}

func TestProxyConfigValidate(t *testing.T) {
	if err := (ProxyConfig{}).Validate(); err == nil {
		t.Fatal("empty config validated")
	}
	for _, want := range []string{"socket is required", "node is required", "upstream connection is required"} {
		if err := (ProxyConfig{}).Validate(); !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to mention %q", err, want)
		}
	}
}

// TestProxyLargeResponse passes a response above gRPC's 4 MiB default
// message size from the control plane to Envoy.
func TestProxyLargeResponse(t *testing.T) {
	u := newUpstreamCP(t)
	var names []string
	for i := range 50 {
		names = append(names, fmt.Sprintf("%d-%s", i, strings.Repeat("x", 100_000)))
	}
	u.setClusters("v1", names...)
	_, conn := startProxy(t, u)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx, grpc.WaitForReady(true), grpc.MaxCallRecvMsgSize(64<<20))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	if size := proto.Size(resp); len(resp.GetResources()) != 50 || size <= 4<<20 {
		t.Errorf("got %d clusters in %d bytes, want 50 in more than 4 MiB", len(resp.GetResources()), size)
	}
}
