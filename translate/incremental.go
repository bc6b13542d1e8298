package translate

import (
	"maps"
	"slices"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"

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

// PrepareNext is Prepare(snap) that reuses the per-namespace results,
// clusters and check results of prev when snap differs from prev's
// snapshot only in endpoints (Pods, EndpointSlices): then only load
// assignments and inbound listeners are built anew, and the resources that
// did not change are the same messages as in prev's NodeConfigs. With a nil
// prev, or any routing change, it is Prepare(snap).
func PrepareNext(prev *Mesh, snap *config.Snapshot) *Mesh {
	next := Prepare(snap)
	if prev == nil || !prev.inputs.same(next.inputs) {
		return next
	}
	prev.mu.Lock()
	defer prev.mu.Unlock()
	var reused []any // messages whose check results carry over
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
	for k, l := range prev.clusters {
		next.clusters[k] = l
		if c, ok := l.value(); ok {
			reused = append(reused, c)
		}
	}
	// Load assignments of service ports whose endpoints did not change are
	// reused too (the maps, not prev, are kept: no chain of Meshes).
	next.prev = &prevEndpoints{endpoints: prev.m.endpoints, clas: map[string]*endpointv3.ClusterLoadAssignment{}}
	for k, l := range prev.clas {
		if c, ok := l.value(); ok {
			next.prev.clas[k] = c
			reused = append(reused, c)
		}
	}
	// Keep what checking found about reused resources only, so the cache
	// does not grow with every endpoint change.
	for _, k := range reused {
		if v, ok := prev.checks.facts.Load(k); ok {
			next.checks.facts.Store(k, v)
		}
	}
	prev.m.share.mu.Lock()
	next.m.share.byName = maps.Clone(prev.m.share.byName)
	prev.m.share.mu.Unlock()
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

// prevEndpoints is what PrepareNext keeps of the previous Mesh to reuse its
// load assignments.
type prevEndpoints struct {
	endpoints map[endpointKey][]endpoint
	clas      map[string]*endpointv3.ClusterLoadAssignment // by clusterRef key
}

func endpointsEqual(a, b []endpoint) bool {
	return slices.EqualFunc(a, b, func(x, y endpoint) bool {
		return x.Address == y.Address && x.Port == y.Port && maps.Equal(x.Labels, y.Labels)
	})
}
