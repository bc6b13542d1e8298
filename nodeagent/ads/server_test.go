package ads

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
)

// controlPlane is a real go-control-plane ADS server on 127.0.0.1 serving the
// dataplane types from one LinearCache per type (named resources, versions
// are content hashes in Delta), and recording what goes over the wire through
// the server callbacks.
type controlPlane struct {
	t      *testing.T
	addr   string
	caches map[string]*cache.LinearCache

	srv    *grpc.Server
	cancel context.CancelFunc
	done   chan struct{}

	mu        sync.Mutex
	responses []*discovery.DeltaDiscoveryResponse
	requests  []*discovery.DeltaDiscoveryRequest
	opened    int
}

func newControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	cp := &controlPlane{t: t, addr: "127.0.0.1:0", caches: map[string]*cache.LinearCache{}}
	for _, typ := range dataplanev1.Types {
		cp.caches[typ] = cache.NewLinearCache(typ)
	}
	cp.start()
	t.Cleanup(cp.stop)
	return cp
}

func (cp *controlPlane) start() {
	cp.t.Helper()
	lis, err := net.Listen("tcp", cp.addr)
	if err != nil {
		cp.t.Fatalf("listen %s: %v", cp.addr, err)
	}
	cp.addr = lis.Addr().String()
	mux := &cache.MuxCache{
		Classify:      func(r *cache.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        map[string]cache.Cache{},
	}
	for typ, c := range cp.caches {
		mux.Caches[typ] = c
	}
	ctx, cancel := context.WithCancel(context.Background())
	cb := serverv3.CallbackFuncs{
		DeltaStreamOpenFunc: func(context.Context, int64, string) error {
			cp.mu.Lock()
			defer cp.mu.Unlock()
			cp.opened++
			return nil
		},
		StreamDeltaRequestFunc: func(_ int64, req *discovery.DeltaDiscoveryRequest) error {
			cp.mu.Lock()
			defer cp.mu.Unlock()
			cp.requests = append(cp.requests, proto.Clone(req).(*discovery.DeltaDiscoveryRequest))
			return nil
		},
		StreamDeltaResponseFunc: func(_ int64, _ *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
			cp.mu.Lock()
			defer cp.mu.Unlock()
			cp.responses = append(cp.responses, proto.Clone(resp).(*discovery.DeltaDiscoveryResponse))
		},
	}
	xds := serverv3.NewServer(ctx, mux, cb)
	cp.srv = grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(cp.srv, xds)
	cp.cancel = cancel
	cp.done = make(chan struct{})
	go func() {
		defer close(cp.done)
		_ = cp.srv.Serve(lis)
	}()
}

// stop kills the server (all streams break). Safe to call twice.
func (cp *controlPlane) stop() {
	if cp.srv == nil {
		return
	}
	cp.cancel()
	cp.srv.Stop()
	<-cp.done
	cp.srv = nil
}

// restart simulates a control plane restart: a new server and new caches
// with the same content, on the same address.
func (cp *controlPlane) restart() {
	cp.t.Helper()
	cp.stop()
	for typ, c := range cp.caches {
		cp.caches[typ] = cache.NewLinearCache(typ, cache.WithInitialResources(c.GetResources()))
	}
	cp.start()
}

func (cp *controlPlane) set(typ, name string, res types.Resource) {
	cp.t.Helper()
	if err := cp.caches[typ].UpdateResource(name, res); err != nil {
		cp.t.Fatalf("update %s %s: %v", typ, name, err)
	}
}

func (cp *controlPlane) del(typ, name string) {
	cp.t.Helper()
	if err := cp.caches[typ].DeleteResource(name); err != nil {
		cp.t.Fatalf("delete %s %s: %v", typ, name, err)
	}
}

// sent returns copies of the responses and requests seen so far.
func (cp *controlPlane) seen() (resps []*discovery.DeltaDiscoveryResponse, reqs []*discovery.DeltaDiscoveryRequest, opened int) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return append([]*discovery.DeltaDiscoveryResponse(nil), cp.responses...),
		append([]*discovery.DeltaDiscoveryRequest(nil), cp.requests...), cp.opened
}

// waitFor polls cond until it holds or 10s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitForWithin(t, 10*time.Second, what, cond)
}

// waitForWithin polls cond until it holds or d passes.
func waitForWithin(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
