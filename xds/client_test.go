package xds

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
)

// testServer is a Server on a real gRPC listener on 127.0.0.1:0, with its
// debug handler on an httptest server.
type testServer struct {
	*Server
	addr  string
	debug *httptest.Server
}

func startServer(t *testing.T, src Source) *testServer {
	t.Helper()
	s, err := NewServer(Config{Source: src, Debounce: 5 * time.Millisecond, Workers: 2,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	s.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served, ran := make(chan struct{}), make(chan struct{})
	go func() { defer close(served); _ = g.Serve(lis) }()
	go func() { defer close(ran); _ = s.Run(ctx) }()
	debug := httptest.NewServer(s.DebugHandler())
	t.Cleanup(func() {
		debug.Close()
		cancel()
		s.Shutdown()
		g.Stop()
		<-served
		<-ran
	})
	return &testServer{Server: s, addr: lis.Addr().String(), debug: debug}
}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func envoyNode(id string) *corev3.Node { return &corev3.Node{Id: id} }

func grpcNode(id, ns string) *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{MetaProxy: ProxyValueGRPC, MetaNamespace: ns})
	return &corev3.Node{Id: id, Metadata: md}
}

// sotwClient is a minimal SotW ADS client: it sends what the test says
// and hands received responses over a channel.
type sotwClient struct {
	t      *testing.T
	stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node   *corev3.Node
	resps  chan *discoveryv3.DiscoveryResponse
	errs   chan error
}

func newSotwClient(t *testing.T, addr string, node *corev3.Node) *sotwClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(dial(t, addr)).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &sotwClient{t: t, stream: stream, node: node, resps: make(chan *discoveryv3.DiscoveryResponse, 16), errs: make(chan error, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			r, err := stream.Recv()
			if err != nil {
				c.errs <- err
				return
			}
			c.resps <- r
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func (c *sotwClient) send(typeURL, version, nonce string, nack *statuspb.Status, names ...string) {
	c.t.Helper()
	err := c.stream.Send(&discoveryv3.DiscoveryRequest{
		Node: c.node, TypeUrl: typeURL, VersionInfo: version, ResponseNonce: nonce,
		ResourceNames: names, ErrorDetail: nack,
	})
	if err != nil {
		c.t.Fatalf("send %s: %v", typeShort(typeURL), err)
	}
}

func (c *sotwClient) recv(wait time.Duration) *discoveryv3.DiscoveryResponse {
	c.t.Helper()
	select {
	case r := <-c.resps:
		return r
	case err := <-c.errs:
		c.t.Fatalf("stream ended: %v", err)
	case <-time.After(wait):
		c.t.Fatalf("no response within %v", wait)
	}
	return nil
}

// expectNothing fails if a response arrives within wait.
func (c *sotwClient) expectNothing(wait time.Duration) {
	c.t.Helper()
	select {
	case r := <-c.resps:
		c.t.Fatalf("unexpected push: %s version %s", typeShort(r.GetTypeUrl()), r.GetVersionInfo())
	case err := <-c.errs:
		c.t.Fatalf("stream ended: %v", err)
	case <-time.After(wait):
	}
}

// deltaClient is the same for Delta ADS.
type deltaClient struct {
	t      *testing.T
	stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	node   *corev3.Node
	resps  chan *discoveryv3.DeltaDiscoveryResponse
	errs   chan error
}

func newDeltaClient(t *testing.T, addr string, node *corev3.Node) *deltaClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(dial(t, addr)).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &deltaClient{t: t, stream: stream, node: node, resps: make(chan *discoveryv3.DeltaDiscoveryResponse, 16), errs: make(chan error, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			r, err := stream.Recv()
			if err != nil {
				c.errs <- err
				return
			}
			c.resps <- r
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func (c *deltaClient) send(r *discoveryv3.DeltaDiscoveryRequest) {
	c.t.Helper()
	if err := c.stream.Send(r); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

func (c *deltaClient) recv(wait time.Duration) *discoveryv3.DeltaDiscoveryResponse {
	c.t.Helper()
	select {
	case r := <-c.resps:
		return r
	case err := <-c.errs:
		c.t.Fatalf("stream ended: %v", err)
	case <-time.After(wait):
		c.t.Fatalf("no delta response within %v", wait)
	}
	return nil
}

func (c *deltaClient) expectNothing(wait time.Duration) {
	c.t.Helper()
	select {
	case r := <-c.resps:
		c.t.Fatalf("unexpected delta push: %s version %s", typeShort(r.GetTypeUrl()), r.GetSystemVersionInfo())
	case err := <-c.errs:
		c.t.Fatalf("stream ended: %v", err)
	case <-time.After(wait):
	}
}
