package translate

import (
	"maps"
	"slices"
	"sync"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/proto"

	"github.com/nodemesh/nodemesh/config"
)

// Most changes in a running mesh are endpoint changes: pods come and go,
// EndpointSlices change. Those change load assignments and inbound
// listeners only; outbound listeners, route configurations and clusters
// depend on the routing inputs below. PrepareNext reuses them from the
// previous Mesh when the routing inputs are the very same objects (the
// config store keeps the pointer of an object whose content did not change).

// routingInputs are the objects that listeners, routes and clusters are
// built from, and the namespace set that decides listener ports.
type routingInputs struct {
	objs       []*config.Object
	namespaces []string
}

var routingKinds = []config.Kind{
	config.KindService, config.KindServiceEntry, config.KindVirtualService,
	config.KindDestinationRule, config.KindSidecar,
}

func routingInputsOf(src source) routingInputs {
	var in routingInputs
	for _, k := range routingKinds {
		in.objs = append(in.objs, src.List(k)...)
	}
	in.namespaces = meshNamespaces(src)
	return in
}

func (a routingInputs) same(b routingInputs) bool {
	return slices.Equal(a.objs, b.objs) && slices.Equal(a.namespaces, b.namespaces)
}

// PrepareNext is Prepare(snap) that reuses what it can of prev:
//
//   - clusters built from the very same Service (or ServiceEntry) and
//     DestinationRule objects, and load assignments that also have equal
//     endpoints, whatever else changed (a VirtualService weight change
//     keeps every cluster and load assignment);
//   - when snap differs from prev's snapshot only in endpoints (Pods,
//     EndpointSlices), the per-namespace results too (listeners and route
//     configurations): then only changed load assignments and the inbound
//     listeners are built anew.
//
// Reused resources are the same messages as in prev's NodeConfigs, and
// what Check found about them carries over. With a nil prev it is
// Prepare(snap).
func PrepareNext(prev *Mesh, snap *config.Snapshot) *Mesh {
	next := Prepare(snap)
	if prev == nil {
		return next
	}
	prev.mu.Lock()
	defer prev.mu.Unlock()
	var reused []any // messages whose check results carry over
	// The maps, not prev, are kept: no chain of Meshes.
	next.prev = &prevBuild{endpoints: prev.m.endpoints, clas: map[string]*endpointv3.ClusterLoadAssignment{},
		clusters: map[string]*clusterv3.Cluster{}, from: map[string]builtFrom{}}
	for k, l := range prev.clusters {
		if c, ok := l.value(); ok {
			next.prev.clusters[k] = c
			reused = append(reused, c)
		}
	}
	for k, l := range prev.clas {
		if c, ok := l.value(); ok {
			next.prev.clas[k] = c
			reused = append(reused, c)
		}
	}
	next.nodeLocal.prev = prev.nodeLocal.current()
	next.nodeLocal.prev.Range(func(_, v any) bool {
		reused = append(reused, v)
		return true
	})
	prev.from.Range(func(k, v any) bool {
		next.prev.from[k.(string)] = v.(builtFrom)
		return true
	})
	if prev.inputs.same(next.inputs) {
		for ns, l := range prev.outbound {
			next.outbound[ns] = l
			if o, ok := l.value(); ok {
				reused = append(reused, o.messages()...)
			}
		}
		for ns, l := range prev.grpc {
			next.grpc[ns] = l
			if o, ok := l.value(); ok {
				reused = append(reused, o.messages()...)
			}
		}
		prev.m.share.mu.Lock()
		next.m.share.byName = maps.Clone(prev.m.share.byName)
		prev.m.share.mu.Unlock()
	}
	// Keep what checking found about reusable resources only, so the
	// cache does not grow with every change.
	for _, k := range reused {
		if v, ok := prev.checks.facts.Load(k); ok {
			next.checks.facts.Store(k, v)
		}
	}
	prev.checks.vhosts.Range(func(k, v any) bool {
		next.checks.vhosts.Store(k, v)
		return true
	})
	return next
}

func (o *nsOutput) messages() []any {
	out := make([]any, 0, len(o.listeners)+len(o.routes))
	for _, l := range o.listeners {
		out = append(out, l)
	}
	for _, r := range o.routes {
		out = append(out, r)
	}
	return out
}

// prevBuild is what PrepareNext keeps of the previous Mesh.
type prevBuild struct {
	endpoints map[endpointKey][]endpoint
	clas      map[string]*endpointv3.ClusterLoadAssignment // by clusterRef key
	clusters  map[string]*clusterv3.Cluster                // by Mesh.clusters key
	from      map[string]builtFrom                         // by Mesh.clusters key or claFromKey
}

// claFromKey keys what a load assignment was built from.
func claFromKey(ref *clusterRef) string { return "cla\x00" + ref.key() }

// builtFrom are the objects a cluster and its load assignment are built
// from (besides endpoints). The store keeps the pointer of an object whose
// content did not change, so equal pointers mean equal input.
type builtFrom struct{ svc, dr *config.Object }

func builtFromOf(ref *clusterRef) builtFrom {
	b := builtFrom{svc: ref.svc.obj}
	if ref.dr != nil {
		b.dr = ref.dr.obj
	}
	return b
}

// cluster returns prev's cluster under key if it was built from ref's
// objects. DNS clusters carry their endpoints and are always rebuilt.
func (pb *prevBuild) cluster(key string, ref *clusterRef) (*clusterv3.Cluster, bool) {
	if pb == nil || ref.svc.DNS {
		return nil, false
	}
	c, ok := pb.clusters[key]
	if f, built := pb.from[key]; !ok || !built || f != builtFromOf(ref) {
		return nil, false
	}
	return c, true
}

// loadAssignment returns prev's load assignment of ref if it was built
// from ref's objects and endpoints equal to eps.
func (pb *prevBuild) loadAssignment(ref *clusterRef, eps []endpoint) (*endpointv3.ClusterLoadAssignment, bool) {
	if pb == nil {
		return nil, false
	}
	c, ok := pb.clas[ref.key()]
	if f, built := pb.from[claFromKey(ref)]; !ok || !built || f != builtFromOf(ref) ||
		!endpointsEqual(pb.endpoints[ref.svc.endpointKey(ref.port.Port)], eps) {
		return nil, false
	}
	return c, true
}

func endpointsEqual(a, b []endpoint) bool {
	return slices.EqualFunc(a, b, func(x, y endpoint) bool {
		return x.Address == y.Address && x.Port == y.Port && maps.Equal(x.Labels, y.Labels)
	})
}

// localCache holds the node-specific messages (inbound listeners, the
// original destination and black hole clusters) by a key that determines
// their content, so nodes and generations with the same ones share one
// message (hashed and checked once). prev is the previous generation's
// map: entries used again move over, others are dropped with it.
type localCache struct {
	once sync.Once
	m    *sync.Map // key -> proto.Message
	prev *sync.Map // the map alone, not the Mesh that held it
}

func (c *localCache) current() *sync.Map {
	c.once.Do(func() { c.m = &sync.Map{} })
	return c.m
}

func (c *localCache) get(key string, build func() proto.Message) proto.Message {
	m := c.current()
	if v, ok := m.Load(key); ok {
		return v.(proto.Message)
	}
	if c.prev != nil {
		if v, ok := c.prev.Load(key); ok {
			v, _ = m.LoadOrStore(key, v)
			return v.(proto.Message)
		}
	}
	v, _ := m.LoadOrStore(key, build())
	return v.(proto.Message)
}
