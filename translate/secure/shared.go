package secure

import (
	"sync"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
)

// Prepared applies the pass to many nodes of one snapshot, sharing what
// does not depend on the node: the per-account clusters, route
// configurations and TLS sockets. A service account with pods on ten nodes
// has its copies built once, and the nodes share the messages (so the xds
// server hashes them once too). NodeConfigs passed to Apply must come from
// one translate.Mesh of the same snapshot (resources are keyed by message
// identity). Safe for concurrent use.
type Prepared struct {
	snap *config.Snapshot
	opts Options
	c    *sharedCache
}

// Prepare readies snap for Apply with opts.
func Prepare(snap *config.Snapshot, opts Options) *Prepared {
	return &Prepared{snap: snap, opts: opts, c: newSharedCache()}
}

// Apply is the package's Apply, sharing work with the other nodes of p.
func (p *Prepared) Apply(nc *translate.NodeConfig) []config.Diagnostic {
	return apply(nc, p.snap, p.opts, p.c)
}

type accountKey[T any] struct {
	orig *T
	id   string
}

// routeEntry is an account's copy of a route configuration (nil when no
// route needed an identity) and the account clusters it names.
type routeEntry struct {
	rc       *routev3.RouteConfiguration
	clusters []*clusterv3.Cluster
}

type sharedCache struct {
	mu       sync.Mutex
	clusters map[accountKey[clusterv3.Cluster]]*clusterv3.Cluster
	routes   map[accountKey[routev3.RouteConfiguration]]*routeEntry
	sockets  map[string]*corev3.TransportSocket // SPIFFE ID + "|" + destination key
}

func newSharedCache() *sharedCache {
	return &sharedCache{
		clusters: map[accountKey[clusterv3.Cluster]]*clusterv3.Cluster{},
		routes:   map[accountKey[routev3.RouteConfiguration]]*routeEntry{},
		sockets:  map[string]*corev3.TransportSocket{},
	}
}

func (c *sharedCache) cluster(k accountKey[clusterv3.Cluster], build func() *clusterv3.Cluster) *clusterv3.Cluster {
	c.mu.Lock()
	v := c.clusters[k]
	c.mu.Unlock()
	if v != nil {
		return v
	}
	v = build()
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.clusters[k]; old != nil {
		return old // another node built it meanwhile: share one message
	}
	c.clusters[k] = v
	return v
}

func (c *sharedCache) route(k accountKey[routev3.RouteConfiguration]) (*routeEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.routes[k]
	return e, ok
}

func (c *sharedCache) putRoute(k accountKey[routev3.RouteConfiguration], e *routeEntry) *routeEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.routes[k]; ok {
		return old
	}
	c.routes[k] = e
	return e
}

func (c *sharedCache) socket(k string, build func() *corev3.TransportSocket) *corev3.TransportSocket {
	c.mu.Lock()
	v := c.sockets[k]
	c.mu.Unlock()
	if v != nil {
		return v
	}
	v = build()
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.sockets[k]; old != nil {
		return old
	}
	c.sockets[k] = v
	return v
}
