package translate

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
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
	checks   *checkCache // for Mesh.Check
	inputs   routingInputs
}

// Prepare builds the model of a snapshot.
func Prepare(snap *config.Snapshot) *Mesh {
	return prepare(snap)
}

func prepare(src source) *Mesh {
	return &Mesh{
		m:        buildMesh(src, &diagnostics{}),
		outbound: map[string]*lazy[*nsOutput]{},
		grpc:     map[string]*lazy[*nsOutput]{},
		clusters: map[string]*lazy[*clusterv3.Cluster]{},
		clas:     map[string]*lazy[*endpointv3.ClusterLoadAssignment]{},
		checks:   &checkCache{},
		inputs:   routingInputsOf(src),
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
	diags := &diagnostics{list: p.m.diags.list}
	var outs []*nsOutput
	switch proxy.Kind {
	case SharedEnvoy:
		outs = p.sharedEnvoy(proxy.Node, nc)
	case ProxylessGRPC:
		outs = []*nsOutput{get(&p.mu, p.grpc, proxy.Namespace, func() *nsOutput { return p.buildProxyless(proxy.Namespace) })}
	}
	// Clusters: the first namespace (sorted) that wants a name decides it.
	refs := map[string]*clusterRef{}
	for _, o := range outs {
		nc.Listeners = append(nc.Listeners, o.listeners...)
		nc.Routes = append(nc.Routes, o.routes...)
		diags.list = append(diags.list, o.diags...)
		for _, r := range o.clusters {
			if _, ok := refs[r.Name]; !ok {
				refs[r.Name] = r
			}
		}
	}
	for _, name := range sortedKeys(refs) {
		ref := refs[name]
		nc.Clusters = append(nc.Clusters, p.cluster(ref, proxy.Kind))
		if !ref.svc.DNS {
			nc.Endpoints = append(nc.Endpoints, p.loadAssignment(ref))
		}
	}
	sortByName(nc.Listeners, (*listenerv3.Listener).GetName)
	sortByName(nc.Routes, (*routev3.RouteConfiguration).GetName)
	sortByName(nc.Clusters, (*clusterv3.Cluster).GetName)
	sortByName(nc.Endpoints, (*endpointv3.ClusterLoadAssignment).GetClusterName)
	nc.Diagnostics = diags.sorted()
	return nc
}

// cluster builds (once per Mesh) the cluster of a ref. Its content depends
// only on routing inputs (services, DestinationRules), never on endpoints.
func (p *Mesh) cluster(ref *clusterRef, kind ProxyKind) *clusterv3.Cluster {
	return get(&p.mu, p.clusters, ref.key()+"\x00"+string(rune('0'+kind)), func() *clusterv3.Cluster {
		if ref.svc.DNS {
			return dnsCluster(ref, loadAssignment(ref, p.m.endpoints[ref.svc.endpointKey(ref.port.Port)]), kind)
		}
		return edsCluster(ref, kind)
	})
}

// loadAssignment builds (once per Mesh) the endpoints of an EDS cluster.
func (p *Mesh) loadAssignment(ref *clusterRef) *endpointv3.ClusterLoadAssignment {
	return get(&p.mu, p.clas, ref.key(), func() *endpointv3.ClusterLoadAssignment {
		return loadAssignment(ref, p.m.endpoints[ref.svc.endpointKey(ref.port.Port)])
	})
}

// sharedEnvoy adds the node-specific parts (inbound listeners and their
// clusters) to nc and returns the shared outputs of the node's namespaces.
func (p *Mesh) sharedEnvoy(node string, nc *NodeConfig) []*nsOutput {
	local := map[string][]string{} // namespace -> pod IPs on this node
	for _, o := range p.m.src.PodsOnNode(node) {
		pod, ok := o.Spec.(*corev1.Pod)
		if !ok || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		ips := local[o.Namespace]
		if cidrRange(pod.Status.PodIP) != nil {
			ips = append(ips, pod.Status.PodIP)
		}
		local[o.Namespace] = ips
	}
	var outs []*nsOutput
	for _, ns := range sortedKeys(local) {
		ports, ok := p.m.ports[ns]
		if !ok {
			continue // more namespaces than slots
		}
		outs = append(outs, get(&p.mu, p.outbound, ns, func() *nsOutput { return p.buildOutbound(ns, ports.Outbound) }))
		if ips := local[ns]; len(ips) > 0 {
			slices.Sort(ips)
			nc.Listeners = append(nc.Listeners, inboundListener(ns, ports.Inbound, slices.Compact(ips)))
			nc.Clusters = append(nc.Clusters, originalDstCluster(inboundClusterName(ns)))
		}
	}
	if len(local) > 0 {
		nc.Clusters = append(nc.Clusters, originalDstCluster(PassthroughCluster), blackHoleCluster())
	}
	return outs
}

func (p *Mesh) buildOutbound(ns string, port uint32) *nsOutput {
	s := p.m.scope(ns)
	s.wantAllClusters()
	l, groups := s.outboundListener(port)
	return s.output([]*listenerv3.Listener{l}, groups)
}

func (p *Mesh) buildProxyless(ns string) *nsOutput {
	s := p.m.scope(ns)
	s.wantAllClusters()
	ls, groups := s.proxyless()
	return s.output(ls, groups)
}

func (s *scope) output(ls []*listenerv3.Listener, groups []virtualHostGroup) *nsOutput {
	out := &nsOutput{listeners: ls, diags: s.diags.list}
	for _, g := range groups {
		out.routes = append(out.routes, routeConfiguration(g))
	}
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
