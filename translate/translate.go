package translate

import (
	"cmp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"

	"github.com/nodemesh/nodemesh/config"
)

// Translate builds everything one proxy gets from a config snapshot. It is
// pure and deterministic, and never fails on user input: problems in user
// objects become Diagnostics and the offending part is left out.
//
// A SharedEnvoy proxy on node N gets, for every namespace with pods on N,
// an outbound and an inbound listener (ports from AllocateNamespacePorts),
// the route configurations of the outbound listener, and the EDS clusters
// and endpoints of every service port (and DestinationRule subset) those
// namespaces can see. A ProxylessGRPC client gets API listeners for the
// services visible to its namespace (see grpc.go).
//
// Translating many proxies of one snapshot is much cheaper through
// Prepare(snap).Translate, which shares the per-namespace work.
func Translate(snap *config.Snapshot, proxy Proxy) *NodeConfig {
	if snap == nil {
		return &NodeConfig{Proxy: proxy}
	}
	return Prepare(snap).Translate(proxy)
}

// Mesh is a snapshot prepared for translation: the model, and per-namespace
// results computed on first use and shared by every proxy translated from
// it. It is safe for concurrent use. NodeConfigs from one Mesh share
// resource messages; treat them as read-only.
type Mesh struct {
	m        *mesh
	mu       sync.Mutex
	outbound map[string]*lazy[*nsOutput] // namespace -> shared Envoy output
	grpc     map[string]*lazy[*nsOutput] // namespace -> proxyless output
	clusters map[string]*lazy[*clusterv3.Cluster]
	clas     map[string]*lazy[*endpointv3.ClusterLoadAssignment]
	// sharedOut: proxy kind and namespace set -> merged output.
	sharedOut map[string]*lazy[*sharedOutput]
	checks    *checkCache // for Mesh.Check
	inputs    routingInputs
	prev      *prevBuild // set by PrepareNext
	nodeLocal localCache // inbound listeners and fixed clusters, by content key
	from      sync.Map   // cluster key, or claFromKey -> builtFrom, for PrepareNext
}

// Prepare builds the model of a snapshot.
func Prepare(snap *config.Snapshot) *Mesh {
	return prepare(snap)
}

func prepare(src source) *Mesh {
	return &Mesh{
		m:         buildMesh(src, &config.Diagnostics{}),
		outbound:  map[string]*lazy[*nsOutput]{},
		grpc:      map[string]*lazy[*nsOutput]{},
		clusters:  map[string]*lazy[*clusterv3.Cluster]{},
		clas:      map[string]*lazy[*endpointv3.ClusterLoadAssignment]{},
		sharedOut: map[string]*lazy[*sharedOutput]{},
		checks:    &checkCache{},
		inputs:    routingInputsOf(src),
	}
}

// nsOutput is what one client namespace contributes to a proxy.
type nsOutput struct {
	listeners []*listenerv3.Listener
	routes    []*routev3.RouteConfiguration
	clusters  []*clusterRef // sorted by name
	diags     []config.Diagnostic
}

// lazy computes a value once.
type lazy[T any] struct {
	once sync.Once
	done atomic.Bool // v is set
	v    T
}

// value returns v if it has been computed.
func (l *lazy[T]) value() (T, bool) {
	if l.done.Load() {
		return l.v, true
	}
	var zero T
	return zero, false
}

func get[T any](mu *sync.Mutex, m map[string]*lazy[T], key string, build func() T) T {
	mu.Lock()
	l := m[key]
	if l == nil {
		l = &lazy[T]{}
		m[key] = l
	}
	mu.Unlock()
	l.once.Do(func() {
		l.v = build()
		l.done.Store(true)
	})
	return l.v
}

// Translate builds the NodeConfig of one proxy; see the package function.
func (p *Mesh) Translate(proxy Proxy) *NodeConfig {
	nc := &NodeConfig{Proxy: proxy}
	var sh *sharedOutput
	switch proxy.Kind {
	case SharedEnvoy:
		sh = p.sharedEnvoy(proxy.Node, nc)
	case ProxylessGRPC:
		sh = p.shared(proxy.Kind, []string{proxy.Namespace})
	default:
		return nc
	}
	// The node's own resources (inbound listeners, original destination
	// clusters) join the shared ones.
	nc.Listeners = append(nc.Listeners, sh.listeners...)
	nc.Clusters = append(nc.Clusters, sh.clusters...)
	nc.Routes = slices.Clone(sh.routes)
	nc.Endpoints = slices.Clone(sh.endpoints)
	nc.Diagnostics = slices.Clone(sh.diags)
	sortByName(nc.Listeners, (*listenerv3.Listener).GetName)
	sortByName(nc.Clusters, (*clusterv3.Cluster).GetName)
	return nc
}

// sharedOutput is what every proxy serving the same set of namespaces
// gets, sorted by name.
type sharedOutput struct {
	listeners []*listenerv3.Listener
	routes    []*routev3.RouteConfiguration
	clusters  []*clusterv3.Cluster
	endpoints []*endpointv3.ClusterLoadAssignment
	diags     []config.Diagnostic
}

// shared merges (once per Mesh and set of namespaces) the per-namespace
// outputs. Clusters: the first namespace (sorted) that wants a name
// decides it.
func (p *Mesh) shared(kind ProxyKind, namespaces []string) *sharedOutput {
	key := string(rune('0'+kind)) + strings.Join(namespaces, ",")
	return get(&p.mu, p.sharedOut, key, func() *sharedOutput {
		out := &sharedOutput{}
		diags := &config.Diagnostics{}
		diags.Append(p.m.diags.List()...)
		refs := map[string]*clusterRef{}
		routeNames := map[string]bool{}
		for _, ns := range namespaces {
			var o *nsOutput
			if kind == ProxylessGRPC {
				o = get(&p.mu, p.grpc, ns, func() *nsOutput { return p.buildProxyless(ns) })
			} else {
				o = get(&p.mu, p.outbound, ns, func() *nsOutput { return p.buildOutbound(ns, p.m.ports[ns].Outbound) })
			}
			out.listeners = append(out.listeners, o.listeners...)
			for _, r := range o.routes {
				if !routeNames[r.GetName()] { // shared by namespaces of one view
					routeNames[r.GetName()] = true
					out.routes = append(out.routes, r)
				}
			}
			diags.Append(o.diags...)
			for _, r := range o.clusters {
				if _, ok := refs[r.Name]; !ok {
					refs[r.Name] = r
				}
			}
		}
		for _, name := range sortedKeys(refs) {
			ref := refs[name]
			out.clusters = append(out.clusters, p.cluster(ref, kind))
			if !ref.svc.DNS {
				out.endpoints = append(out.endpoints, p.loadAssignment(ref))
			}
		}
		sortByName(out.listeners, (*listenerv3.Listener).GetName)
		sortByName(out.routes, (*routev3.RouteConfiguration).GetName)
		out.diags = diags.Sorted()
		return out
	})
}

// cluster builds (once per Mesh) the cluster of a ref. Its content depends
// only on routing inputs (services, DestinationRules), never on endpoints.
func (p *Mesh) cluster(ref *clusterRef, kind ProxyKind) *clusterv3.Cluster {
	key := ref.key() + "\x00" + string(rune('0'+kind))
	return get(&p.mu, p.clusters, key, func() *clusterv3.Cluster {
		p.from.Store(key, builtFromOf(ref))          // what built this very message
		if old, ok := p.prev.cluster(key, ref); ok { // PrepareNext: keep what did not change
			return old
		}
		if ref.svc.DNS {
			return dnsCluster(ref, loadAssignment(ref, p.m.endpoints[ref.svc.endpointKey(ref.port.Port)]), kind)
		}
		return edsCluster(ref, kind)
	})
}

// loadAssignment builds (once per Mesh) the endpoints of an EDS cluster.
func (p *Mesh) loadAssignment(ref *clusterRef) *endpointv3.ClusterLoadAssignment {
	return get(&p.mu, p.clas, ref.key(), func() *endpointv3.ClusterLoadAssignment {
		p.from.Store(claFromKey(ref), builtFromOf(ref))
		eps := p.m.endpoints[ref.svc.endpointKey(ref.port.Port)]
		if old, ok := p.prev.loadAssignment(ref, eps); ok { // PrepareNext: keep what did not change
			return old
		}
		return loadAssignment(ref, eps)
	})
}

// sharedEnvoy adds the node-specific parts (inbound listeners and their
// clusters) to nc and returns the shared output of the node's namespaces.
func (p *Mesh) sharedEnvoy(node string, nc *NodeConfig) *sharedOutput {
	local := map[string][]string{} // namespace -> pod IPs on this node
	for _, o := range p.m.src.PodsOnNode(node) {
		pod, ok := o.Spec.(*corev1.Pod)
		if !ok || pod == nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		ips := local[o.Namespace]
		if cidrRange(pod.Status.PodIP) != nil {
			ips = append(ips, pod.Status.PodIP)
		}
		local[o.Namespace] = ips
	}
	var namespaces []string
	for _, ns := range sortedKeys(local) {
		ports, ok := p.m.ports[ns]
		if !ok {
			continue // more namespaces than slots
		}
		namespaces = append(namespaces, ns)
		if ips := local[ns]; len(ips) > 0 {
			slices.Sort(ips)
			ips = slices.Compact(ips)
			nc.Listeners = append(nc.Listeners, p.nodeLocal.get("l\x00"+ns+"\x00"+portString(ports.Inbound)+"\x00"+strings.Join(ips, ","),
				func() proto.Message { return inboundListener(ns, ports.Inbound, ips) }).(*listenerv3.Listener))
			nc.Clusters = append(nc.Clusters, p.nodeLocal.get("c\x00"+inboundClusterName(ns),
				func() proto.Message { return originalDstCluster(inboundClusterName(ns)) }).(*clusterv3.Cluster))
		}
	}
	if len(namespaces) > 0 {
		nc.Clusters = append(nc.Clusters,
			p.nodeLocal.get("c\x00"+PassthroughCluster, func() proto.Message { return originalDstCluster(PassthroughCluster) }).(*clusterv3.Cluster),
			p.nodeLocal.get("c\x00"+BlackHoleCluster, func() proto.Message { return blackHoleCluster() }).(*clusterv3.Cluster))
	}
	return p.shared(SharedEnvoy, namespaces)
}

func (p *Mesh) buildOutbound(ns string, port uint32) *nsOutput {
	s := p.m.scope(ns)
	s.wantAllClusters()
	l, routes := s.outboundListener(port)
	return s.output([]*listenerv3.Listener{l}, routes)
}

func (p *Mesh) buildProxyless(ns string) *nsOutput {
	s := p.m.scope(ns)
	s.wantAllClusters()
	ls, groups := s.proxyless()
	var routes []*routev3.RouteConfiguration
	for _, g := range groups {
		routes = append(routes, routeConfiguration(g))
	}
	return s.output(ls, routes)
}

func (s *scope) output(ls []*listenerv3.Listener, routes []*routev3.RouteConfiguration) *nsOutput {
	out := &nsOutput{listeners: ls, routes: routes, diags: s.diags.List()}
	for _, name := range sortedKeys(s.clusters.byName) {
		out.clusters = append(out.clusters, s.clusters.byName[name])
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func sortByName[T any](s []T, name func(T) string) {
	slices.SortStableFunc(s, func(a, b T) int { return cmp.Compare(name(a), name(b)) })
}
