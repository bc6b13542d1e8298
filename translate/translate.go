package translate

import (
	"cmp"
	"slices"

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
// and endpoints those routes and TCP chains use. A ProxylessGRPC client
// gets API listeners for the services visible to its namespace.
func Translate(snap *config.Snapshot, proxy Proxy) *NodeConfig {
	if snap == nil {
		return &NodeConfig{Proxy: proxy}
	}
	return translate(snap, proxy)
}

func translate(src source, proxy Proxy) *NodeConfig {
	d := &diagnostics{}
	m := buildMesh(src, d)
	cs := newClusterSet()
	nc := &NodeConfig{Proxy: proxy}
	var groups []virtualHostGroup
	switch proxy.Kind {
	case SharedEnvoy:
		groups = sharedEnvoy(m, cs, proxy.Node, nc)
	case ProxylessGRPC:
		sc := m.scope(proxy.Namespace, cs)
		sc.wantAllClusters()
		nc.Listeners, groups = sc.proxyless()
	}
	for _, g := range groups {
		nc.Routes = append(nc.Routes, routeConfiguration(g.Name, g.VirtualHosts))
	}
	refs := make([]*clusterRef, 0, len(cs.byName))
	for _, r := range cs.byName {
		refs = append(refs, r)
	}
	slices.SortFunc(refs, func(a, b *clusterRef) int { return cmp.Compare(a.Name, b.Name) })
	for _, r := range refs {
		nc.Clusters = append(nc.Clusters, edsCluster(r, proxy.Kind))
		nc.Endpoints = append(nc.Endpoints, loadAssignment(r, m.endpointsFor(r.svc, r.port)))
	}
	sortByName(nc.Listeners, (*listenerv3.Listener).GetName)
	sortByName(nc.Routes, (*routev3.RouteConfiguration).GetName)
	sortByName(nc.Clusters, (*clusterv3.Cluster).GetName)
	sortByName(nc.Endpoints, (*endpointv3.ClusterLoadAssignment).GetClusterName)
	nc.Diagnostics = d.sorted()
	return nc
}

// sharedEnvoy adds the per-namespace listeners of node to nc and returns
// the route configurations they use.
func sharedEnvoy(m *mesh, cs *clusterSet, node string, nc *NodeConfig) []virtualHostGroup {
	local := map[string][]string{} // namespace -> pod IPs on this node
	for _, o := range m.src.PodsOnNode(node) {
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
	var groups []virtualHostGroup
	for _, ns := range sortedKeys(local) {
		ports, ok := m.ports[ns]
		if !ok {
			continue // more namespaces than slots
		}
		sc := m.scope(ns, cs)
		sc.wantAllClusters()
		l, gs := sc.outboundListener(ports.Outbound)
		nc.Listeners = append(nc.Listeners, l)
		groups = append(groups, gs...)
		if ips := local[ns]; len(ips) > 0 {
			slices.Sort(ips)
			nc.Listeners = append(nc.Listeners, inboundListener(ns, ports.Inbound, slices.Compact(ips)))
			nc.Clusters = append(nc.Clusters, originalDstCluster(inboundClusterName(ns)))
		}
	}
	if len(local) > 0 {
		nc.Clusters = append(nc.Clusters, originalDstCluster(PassthroughCluster))
	}
	return groups
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
