package xds

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
)

// snapshotStore is the part of the go-control-plane cache the reconciler
// writes to; the ADS server reads the same cache through cachev3.Cache.
type snapshotStore interface {
	SetSnapshot(ctx context.Context, node string, snap cachev3.ResourceSnapshot) error
	ClearSnapshot(node string)
}

// Server is the nodemesh ADS server: per-node snapshots built from a
// Source, served over SotW and Delta ADS, with ACK/NACK tracking.
type Server struct {
	cfg     Config
	log     *slog.Logger
	cache   snapshotStore
	ads     serverv3.Server
	acks    *ackTracker
	metrics *metrics

	ctx    context.Context // ends every stream when cancelled
	cancel context.CancelFunc

	memoMu sync.Mutex
	memo   *hashMemo // resource hashes of the newest generation

	mu      sync.Mutex
	nodes   map[string]*nodeState
	streams map[streamKey]string // stream -> node id
}

// nodeState is one connected node (one xDS node.id).
type nodeState struct {
	id          string
	proxy       translate.Proxy
	streams     int // open streams; guarded by Server.mu
	connectedAt time.Time

	mu          sync.Mutex // serialises snapshot updates; guards what follows
	removed     bool
	generation  uint64
	versions    Versions
	served      *translate.NodeConfig
	servedExtra []TypedResources
	err         error // last build or check error; the previous snapshot is kept
	errAt       time.Time
	diagnostics []config.Diagnostic
}

// NewServer builds a Server. Register it on a gRPC server and call Run.
func NewServer(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	// ads=false: a proxyless gRPC client asks for some listeners by name,
	// not all of them; ADS mode would hold such responses back.
	cache := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, gcpLogger{cfg.Logger})
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:     cfg,
		log:     cfg.Logger,
		cache:   cache,
		acks:    newAckTracker(cfg.Now),
		metrics: newMetrics(),
		ctx:     ctx,
		cancel:  cancel,
		nodes:   make(map[string]*nodeState),
		streams: make(map[streamKey]string),
	}
	s.ads = serverv3.NewServer(ctx, cache, callbacks{s})
	return s, nil
}

// Register adds the ADS service (SotW and Delta) to g.
func (s *Server) Register(g *grpc.Server) {
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, s.ads)
}

// Shutdown ends every open stream; call it after grpc.Server.GracefulStop
// has begun so that clients cannot reconnect.
func (s *Server) Shutdown() { s.cancel() }

// Run rebuilds every connected node after each change of the Source, until
// ctx ends.
func (s *Server) Run(ctx context.Context) error {
	changed := s.cfg.Source.Changed()
	s.rebuildAll(s.cfg.Source.Current())
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
		t := time.NewTimer(s.cfg.Debounce)
	debounce:
		for {
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-changed:
			case <-t.C:
				break debounce
			}
		}
		s.rebuildAll(s.cfg.Source.Current())
	}
}

// streamNode returns the node id of a stream, registering the stream with
// the node found in its first request. A new node gets its snapshot built
// before this returns, so that its first watch is answered at once.
func (s *Server) streamNode(key streamKey, req requestInfo) (string, error) {
	s.mu.Lock()
	if id, ok := s.streams[key]; ok {
		s.mu.Unlock()
		return id, nil
	}
	if req.node == nil {
		s.mu.Unlock()
		return "", fmt.Errorf("first request on an xds stream must carry the node")
	}
	proxy, err := ProxyForNode(req.node)
	if err != nil {
		s.mu.Unlock()
		return "", err
	}
	id := req.node.GetId()
	ns, existed := s.nodes[id]
	if existed && ns.proxy != proxy {
		if ns.streams > 0 {
			// Another client holds this id with other metadata (e.g. a
			// workload claiming a node's id as a gRPC client): serving it
			// the node's snapshot would hand it the node's secrets.
			s.mu.Unlock()
			return "", status.Errorf(codes.PermissionDenied, "xds node %q is connected as %s; a stream as %s is refused",
				id, ProxyKindString(ns.proxy.Kind), ProxyKindString(proxy.Kind))
		}
		existed = false // the node came back as something else: serve what it is now
	}
	if !existed {
		if _, known := s.nodes[id]; !known {
			s.metrics.nodes.Add(1)
		}
		ns = &nodeState{id: id, proxy: proxy, connectedAt: s.cfg.Now()}
		s.nodes[id] = ns
	}
	ns.streams++
	s.streams[key] = id
	s.mu.Unlock()

	s.log.Info("xds stream opened", "node", id, "kind", ProxyKindString(proxy.Kind), "namespace", proxy.Namespace, "delta", key.delta)
	if !existed {
		view := s.cfg.Source.Current()
		s.apply(ns, view.Generation(), s.build(view, ns.proxy, nil))
	}
	return id, nil
}

// streamClosed unregisters a stream; the last stream of a node removes the
// node and its snapshot.
func (s *Server) streamClosed(key streamKey) {
	s.acks.closed(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.streams[key]
	if !ok {
		return
	}
	delete(s.streams, key)
	ns := s.nodes[id]
	ns.streams--
	if ns.streams > 0 {
		return
	}
	delete(s.nodes, id)
	s.metrics.nodes.Add(-1)
	ns.mu.Lock()
	ns.removed = true
	s.cache.ClearSnapshot(id)
	ns.mu.Unlock()
	s.acks.forget(id)
	s.log.Info("xds node disconnected", "node", id)
}
