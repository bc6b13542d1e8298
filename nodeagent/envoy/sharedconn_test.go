package envoy

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/nodeagent/ads"
)

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// TestAgentSharesOneConnection wires the agent as mesh-agent does: one
// connection to the control plane, used by the ADS client (dataplane types)
// and by the xDS proxy (Envoy's stream), against one go-control-plane
// server serving both.
func TestAgentSharesOneConnection(t *testing.T) {
	// Control plane: dataplane types from linear caches, Envoy types from a
	// snapshot cache, one ADS server.
	mux := &cache.MuxCache{Caches: map[string]cache.Cache{}}
	linear := map[string]*cache.LinearCache{}
	for _, typ := range dataplanev1.Types {
		linear[typ] = cache.NewLinearCache(typ)
		mux.Caches[typ] = linear[typ]
	}
	snapshots := cache.NewSnapshotCache(true, cache.IDHash{}, nil)
	mux.Caches["envoy"] = snapshots
	classify := func(typ string) string {
		if _, ok := linear[typ]; ok {
			return typ
		}
		return "envoy"
	}
	mux.Classify = func(r *cache.Request) string { return classify(r.GetTypeUrl()) }
	mux.ClassifyDelta = func(r *cache.DeltaRequest) string { return classify(r.GetTypeUrl()) }

	if err := linear[dataplanev1.WorkloadType].UpdateResource("shop/web-0", &dataplanev1.Workload{Namespace: "shop", Name: "web-0", Ips: []string{"10.77.1.10"}, Identity: 100, Node: "node-a"}); err != nil {
		t.Fatal(err)
	}
	snap, err := cache.NewSnapshot("v1", map[resource.Type][]types.Resource{resource.ClusterType: {&clusterv3.Cluster{
		Name: "outbound|80||web.shop", ConnectTimeout: durationpb.New(time.Second),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := snapshots.SetSnapshot(context.Background(), "node-a", snap); err != nil {
		t.Fatal(err)
	}

	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lis := &countingListener{Listener: inner}
	srvCtx, srvCancel := context.WithCancel(context.Background())
	srv := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(srv, serverv3.NewServer(srvCtx, mux, nil))
	var served sync.WaitGroup
	served.Go(func() { _ = srv.Serve(lis) })
	defer func() { srvCancel(); srv.Stop(); served.Wait() }()

	// The agent: one connection, two users.
	conn, err := ads.Dial(inner.Addr().String(), ads.Backoff{Initial: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	applied := make(chan *ads.Resources, 1)
	client, err := ads.New(ads.Config{
		Node: "node-a", Conn: conn, Logger: slog.New(slog.DiscardHandler),
		Applier: ads.ApplierFunc(func(_ context.Context, r *ads.Resources) error {
			select {
			case applied <- r:
			default:
			}
			return nil
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() { _ = client.Run(ctx) })
	sock := filepath.Join(t.TempDir(), "xds.sock")
	proxy, err := NewProxy(ProxyConfig{Socket: sock, Node: "node-a", Upstream: conn, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() { _ = proxy.Run(ctx) })

	// "Envoy" on the unix socket.
	envoyConn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer envoyConn.Close()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(envoyConn).DeltaAggregatedResources(ctx, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: resource.ClusterType, ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResources()) != 1 || resp.GetResources()[0].GetName() != "outbound|80||web.shop" {
		t.Errorf("envoy got %v, want cluster outbound|80||web.shop", resp.GetResources())
	}

	select {
	case r := <-applied:
		if r.Workloads["shop/web-0"].GetIdentity() != 100 {
			t.Errorf("agent applied %v, want workload shop/web-0", r.Workloads)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the ADS client applied nothing")
	}
	if n := lis.n.Load(); n != 1 {
		t.Errorf("control plane accepted %d connections from the agent, want 1 shared", n)
	}
}
