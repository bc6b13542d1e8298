package inboundauthz

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	corev1 "k8s.io/api/core/v1"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
	"github.com/nodemesh/nodemesh/translate/authz"
)

// Names of translate's per-namespace inbound resources.
const (
	listenerPrefix = "inbound_"
	clusterPrefix  = "inbound|"
)

// ClusterName is translate's original destination cluster of a
// namespace's inbound listener; RouteName is the route configuration the
// inbound HTTP connection managers of that namespace use.
func ClusterName(ns string) string { return clusterPrefix + ns }

// RouteName: see ClusterName.
func RouteName(ns string) string { return clusterPrefix + ns }

// pod is a local pod some policy selects.
type pod struct {
	ns, name string
	ips      []string // canonical addresses
	filters  authz.Filters
	http     map[uint32]bool // HTTP/gRPC target ports
}

// Apply adds authorization to the inbound listeners of nc, translated from
// snap for nc.Proxy (see the package documentation). It returns the
// diagnostics of the policies that apply to the node's pods. ProxylessGRPC
// configs are left alone: a gRPC server gets its RBAC with its own
// listener.
func Apply(nc *translate.NodeConfig, snap *config.Snapshot, opts authz.Options) []config.Diagnostic {
	if nc == nil || snap == nil || nc.Proxy.Kind != translate.SharedEnvoy {
		return nil
	}
	byNS, diags := selectedPods(snap, nc.Proxy.Node, opts)
	if len(byNS) == 0 {
		return diags
	}
	httpNS := map[string]bool{}
	for i, l := range nc.Listeners {
		ns, ok := strings.CutPrefix(l.GetName(), listenerPrefix)
		if !ok || l.GetTrafficDirection() != corev3.TrafficDirection_INBOUND || len(byNS[ns]) == 0 {
			continue
		}
		out, usesHTTP, d := rewrite(l, ns, byNS[ns])
		nc.Listeners[i] = out
		diags = append(diags, d...)
		if usesHTTP {
			httpNS[ns] = true
		}
	}
	addHTTPResources(nc, httpNS)
	addJWKSClusters(nc, byNS)
	return append(diags, missingExtAuthz(nc, byNS)...)
}

// selectedPods builds the filters of every running pod on node and keeps
// those some policy selects, by namespace, sorted by name. Diagnostics are
// reported once even when a policy selects many pods.
func selectedPods(snap *config.Snapshot, node string, opts authz.Options) (map[string][]*pod, []config.Diagnostic) {
	byNS := map[string][]*pod{}
	if len(snap.List(config.KindAuthorizationPolicy))+len(snap.List(config.KindRequestAuthentication))+
		len(snap.List(config.KindTrafficTarget)) == 0 {
		return byNS, nil // nothing can select a pod: skip building per pod
	}
	var diags []config.Diagnostic
	seen := map[config.Diagnostic]bool{}
	for _, o := range snap.PodsOnNode(node) {
		p, ok := o.Spec.(*corev1.Pod)
		if !ok || p == nil || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		ips := podIPs(p)
		if len(ips) == 0 {
			continue
		}
		f := authz.Build(snap, authz.Workload{Namespace: o.Namespace, Name: o.Name, Labels: o.Labels,
			ServiceAccount: p.Spec.ServiceAccountName}, opts)
		for _, d := range f.Diagnostics {
			if !seen[d] {
				seen[d] = true
				diags = append(diags, d)
			}
		}
		if len(f.HTTP) == 0 && len(f.TCP) == 0 {
			continue
		}
		w := &pod{ns: o.Namespace, name: o.Name, ips: ips, filters: f, http: map[uint32]bool{}}
		for _, port := range httpPorts(snap, o, p) {
			w.http[port] = true
		}
		byNS[o.Namespace] = append(byNS[o.Namespace], w)
	}
	return byNS, diags
}

// podIPs are the pod's addresses as translate writes them in prefix ranges.
func podIPs(p *corev1.Pod) []string {
	var out []string
	add := func(s string) {
		if a, err := netip.ParseAddr(s); err == nil && !slices.Contains(out, a.Unmap().String()) {
			out = append(out, a.Unmap().String())
		}
	}
	add(p.Status.PodIP)
	for _, ip := range p.Status.PodIPs {
		add(ip.IP)
	}
	return out
}

// addHTTPResources adds the route configuration of each namespace with an
// inbound HTTP connection manager, and lets its original destination
// cluster speak the downstream's protocol (gRPC needs HTTP/2 upstream).
func addHTTPResources(nc *translate.NodeConfig, httpNS map[string]bool) {
	if len(httpNS) == 0 {
		return
	}
	for _, ns := range slices.Sorted(maps.Keys(httpNS)) {
		nc.Routes = append(nc.Routes, routeConfig(ns))
	}
	slices.SortStableFunc(nc.Routes, func(a, b *routev3.RouteConfiguration) int { return cmp.Compare(a.GetName(), b.GetName()) })
	for i, c := range nc.Clusters {
		if ns, ok := strings.CutPrefix(c.GetName(), clusterPrefix); ok && httpNS[ns] {
			nc.Clusters[i] = downstreamProtocol(c)
		}
	}
}

// addJWKSClusters adds the clusters remote JWKS are fetched through,
// unless nc has them already (a mesh service's outbound cluster).
func addJWKSClusters(nc *translate.NodeConfig, byNS map[string][]*pod) {
	have := map[string]bool{}
	for _, c := range nc.Clusters {
		have[c.GetName()] = true
	}
	added := false
	for _, ns := range slices.Sorted(maps.Keys(byNS)) {
		for _, p := range byNS[ns] {
			for _, j := range p.filters.JWKSClusters {
				if !have[j.Name] {
					have[j.Name] = true
					nc.Clusters = append(nc.Clusters, jwksCluster(j))
					added = true
				}
			}
		}
	}
	if added {
		slices.SortStableFunc(nc.Clusters, func(a, b *clusterv3.Cluster) int { return cmp.Compare(a.GetName(), b.GetName()) })
	}
}

// missingExtAuthz reports ext_authz services whose cluster the node does
// not have (the filter then fails closed: requests it checks are denied).
func missingExtAuthz(nc *translate.NodeConfig, byNS map[string][]*pod) []config.Diagnostic {
	have := map[string]bool{}
	for _, c := range nc.Clusters {
		have[c.GetName()] = true
	}
	var out []config.Diagnostic
	for _, ns := range slices.Sorted(maps.Keys(byNS)) {
		for _, p := range byNS[ns] {
			for _, f := range p.filters.HTTP {
				var cfg extauthzv3.ExtAuthz
				if !f.GetTypedConfig().MessageIs(&cfg) || f.GetTypedConfig().UnmarshalTo(&cfg) != nil {
					continue
				}
				for _, c := range []string{cfg.GetGrpcService().GetEnvoyGrpc().GetClusterName(), cfg.GetHttpService().GetServerUri().GetCluster()} {
					if c != "" && !have[c] {
						have[c] = true // once
						out = append(out, config.Diagnostic{Severity: config.SeverityWarning,
							Object:  config.Key{Kind: config.KindPod, Namespace: p.ns, Name: p.name},
							Message: fmt.Sprintf("ext_authz cluster %q does not exist on node %s: requests sent to the CUSTOM provider are denied", c, nc.Proxy.Node)})
					}
				}
			}
		}
	}
	return out
}
