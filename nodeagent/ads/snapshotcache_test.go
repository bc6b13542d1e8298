package ads

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
)

// dataplaneSnapshot is a per-node go-control-plane ResourceSnapshot of the
// dataplane types, keyed by the resource names of api/dataplane/v1 with
// content-hash versions. The stock cache.Snapshot refuses types it does not
// know, and would name resources by GetName(); this is the shape the control
// plane needs to serve them from a SnapshotCache (per node), checked here
// against the real client.
type dataplaneSnapshot struct {
	res  map[string]map[string]types.Resource
	vmap map[string]map[string]string
}

func newDataplaneSnapshot(r *Resources) *dataplaneSnapshot {
	s := &dataplaneSnapshot{res: map[string]map[string]types.Resource{}}
	add := func(typ, name string, m proto.Message) {
		if s.res[typ] == nil {
			s.res[typ] = map[string]types.Resource{}
		}
		s.res[typ][name] = m
	}
	for _, typ := range dataplanev1.Types {
		s.res[typ] = map[string]types.Resource{}
	}
	for n, m := range r.Listeners {
		add(dataplanev1.NamespaceListenerType, n, m)
	}
	for n, m := range r.Workloads {
		add(dataplanev1.WorkloadType, n, m)
	}
	for n, m := range r.Services {
		add(dataplanev1.ServiceType, n, m)
	}
	for n, m := range r.Policies {
		add(dataplanev1.PolicyType, n, m)
	}
	return s
}

func (s *dataplaneSnapshot) GetResources(typ string) map[string]types.Resource { return s.res[typ] }

func (s *dataplaneSnapshot) GetResourcesAndTTL(typ string) map[string]types.ResourceWithTTL {
	out := map[string]types.ResourceWithTTL{}
	for n, r := range s.res[typ] {
		out[n] = types.ResourceWithTTL{Resource: r}
	}
	return out
}

func (s *dataplaneSnapshot) ConstructVersionMap() error {
	if s.vmap != nil {
		return nil
	}
	s.vmap = map[string]map[string]string{}
	for typ, m := range s.res {
		s.vmap[typ] = map[string]string{}
		for n, r := range m {
			b, err := cache.MarshalResource(r)
			if err != nil {
				return err
			}
			s.vmap[typ][n] = cache.HashResource(b)
		}
	}
	return nil
}

func (s *dataplaneSnapshot) GetVersionMap(typ string) map[string]string { return s.vmap[typ] }

// GetVersion is used by SotW only; a hash of the type's version map.
func (s *dataplaneSnapshot) GetVersion(typ string) string {
	if err := s.ConstructVersionMap(); err != nil {
		return ""
	}
	b, _ := proto.Marshal(&discovery.DeltaDiscoveryRequest{InitialResourceVersions: s.vmap[typ]})
	return cache.HashResource(b)
}

// TestClientAgainstSnapshotCache runs the client against go-control-plane's
// per-node SnapshotCache serving the dataplane types: the node gets its own
// snapshot only, a single change sends a single resource, and a new server
// with the same snapshot sends nothing new.
func TestClientAgainstSnapshotCache(t *testing.T) {
	snaps := cache.NewSnapshotCache(true, cache.IDHash{}, nil)
	var mu sync.Mutex
	var sent []*discovery.DeltaDiscoveryResponse
	serve := func(at string) (addr string, stop func()) {
		lis, err := net.Listen("tcp", at)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		srv := grpc.NewServer()
		discovery.RegisterAggregatedDiscoveryServiceServer(srv, serverv3.NewServer(ctx, snaps, serverv3.CallbackFuncs{
			StreamDeltaResponseFunc: func(_ int64, _ *discovery.DeltaDiscoveryRequest, r *discovery.DeltaDiscoveryResponse) {
				mu.Lock()
				defer mu.Unlock()
				sent = append(sent, proto.Clone(r).(*discovery.DeltaDiscoveryResponse))
			},
		}))
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.Serve(lis) }()
		return lis.Addr().String(), func() { cancel(); srv.Stop(); <-done }
	}
	sentSince := func(n int) []*discovery.DeltaDiscoveryResponse {
		mu.Lock()
		defer mu.Unlock()
		return append([]*discovery.DeltaDiscoveryResponse(nil), sent[n:]...)
	}

	mine, other := meshResources(), &Resources{Workloads: map[string]*dataplanev1.Workload{"x/y": testWorkload("x", "y", "10.9.9.9", 900)}}
	set := func(node string, r *Resources) {
		t.Helper()
		if err := snaps.SetSnapshot(context.Background(), node, newDataplaneSnapshot(r)); err != nil {
			t.Fatal(err)
		}
	}
	set("node-a", mine)
	set("node-b", other)

	addr, stop := serve("127.0.0.1:0")
	app := &fakeApplier{}
	c, err := New(Config{Node: "node-a", ControlPlane: addr, Applier: app, Logger: slog.New(slog.DiscardHandler),
		Backoff: Backoff{Initial: 20 * time.Millisecond, Max: 100 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()

	waitFor(t, "initial sync", allAcked(c, 1))
	if _, got := app.state(); !cmp.Equal(mine, got, protocmp.Transform()) {
		t.Errorf("node-a applied (-want +got):\n%s", cmp.Diff(mine, got, protocmp.Transform()))
	}

	// One service changes in node-a's next snapshot.
	n := len(sentSince(0))
	next := meshResources()
	next.Services["shop/db:5432/TCP"].Backends = append(next.Services["shop/db:5432/TCP"].Backends, &dataplanev1.Backend{Ip: "10.77.2.11", Port: 5432})
	set("node-a", next)
	waitFor(t, "change acked", acked(c, dataplanev1.ServiceType, 2))
	var names []string
	for _, r := range sentSince(n) {
		for _, res := range r.GetResources() {
			names = append(names, res.GetName())
		}
	}
	if !cmp.Equal(names, []string{"shop/db:5432/TCP"}) {
		t.Errorf("after one change the server sent %v, want only shop/db:5432/TCP", names)
	}
	if _, got := app.state(); !cmp.Equal(next, got, protocmp.Transform()) {
		t.Errorf("node-a after the change (-want +got):\n%s", cmp.Diff(next, got, protocmp.Transform()))
	}

	// A new server over the same cache: the client re-subscribes with its
	// versions and nothing is resent or re-applied.
	calls, _ := app.state()
	stop()
	waitFor(t, "disconnect", func() bool { return !c.Status().Connected })
	n = len(sentSince(0))
	_, stop2 := serve(addr)
	defer stop2()
	waitFor(t, "resync", allAcked(c, 2))
	for _, r := range sentSince(n) {
		if len(r.GetResources())+len(r.GetRemovedResources()) != 0 {
			t.Errorf("restarted server resent %d resources of %s", len(r.GetResources()), r.GetTypeUrl())
		}
	}
	if after, _ := app.state(); after != calls {
		t.Errorf("unchanged snapshot re-applied after reconnect (%d -> %d)", calls, after)
	}
}
