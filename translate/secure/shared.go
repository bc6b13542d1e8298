package secure

import (
	"sync"

	xdsmatcherv3 "github.com/cncf/xds/go/xds/type/matcher/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
)

// Prepared applies the pass to many nodes of one snapshot, sharing what
// does not depend on the node: the TLS sockets per account and
// destination, the filters setting an account's identity, and the
// clusters with socket selection of nodes whose accounts reach a
// destination alike. The nodes share these messages (so the xds server
// hashes them once too). NodeConfigs passed to Apply must come from
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

// selKey names a cluster with transport socket selection: the original
// message and the accounts' choices, in order.
type selKey struct {
	orig    *clusterv3.Cluster
	choices string
}

type sharedCache struct {
	mu       sync.Mutex
	clusters map[selKey]*clusterv3.Cluster
	sockets  map[string]*corev3.TransportSocket // SPIFFE ID + "|" + destination key, and defaults
	filters  map[string]*listenerv3.Filter      // set_filter_state per SPIFFE ID
	actions  map[string]*xdsmatcherv3.Matcher_OnMatch
	in       *anypb.Any

	copies      map[accountKey[clusterv3.Cluster]]*clusterv3.Cluster // Options.PerAccountClusters
	routeCopies map[accountKey[routev3.RouteConfiguration]]*routeEntry
}

func newSharedCache() *sharedCache {
	return &sharedCache{
		clusters: map[selKey]*clusterv3.Cluster{},
		sockets:  map[string]*corev3.TransportSocket{},
		filters:  map[string]*listenerv3.Filter{},
		actions:  map[string]*xdsmatcherv3.Matcher_OnMatch{},
		in:       mustAny(filterStateInput()),

		copies:      map[accountKey[clusterv3.Cluster]]*clusterv3.Cluster{},
		routeCopies: map[accountKey[routev3.RouteConfiguration]]*routeEntry{},
	}
}

// once returns m[k], built (outside the lock) when missing; when two
// nodes build it at once, both get the first one stored.
func once[K comparable, V any](mu *sync.Mutex, m map[K]*V, k K, build func() *V) *V {
	mu.Lock()
	v := m[k]
	mu.Unlock()
	if v != nil {
		return v
	}
	v = build()
	mu.Lock()
	defer mu.Unlock()
	if old := m[k]; old != nil {
		return old
	}
	m[k] = v
	return v
}

func (c *sharedCache) cluster(k selKey, build func() *clusterv3.Cluster) *clusterv3.Cluster {
	return once(&c.mu, c.clusters, k, build)
}

func (c *sharedCache) socket(k string, build func() *corev3.TransportSocket) *corev3.TransportSocket {
	return once(&c.mu, c.sockets, k, build)
}

func (c *sharedCache) filter(id spiffeid.ID) *listenerv3.Filter {
	return once(&c.mu, c.filters, id.String(), func() *listenerv3.Filter { return setIdentityFilter(id) })
}

func (c *sharedCache) action(name string) *xdsmatcherv3.Matcher_OnMatch {
	return once(&c.mu, c.actions, name, func() *xdsmatcherv3.Matcher_OnMatch { return socketAction(name) })
}

func (c *sharedCache) input() *anypb.Any { return c.in }
