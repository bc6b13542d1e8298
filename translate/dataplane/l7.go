package dataplane

import (
	"slices"
	"strings"

	networking "istio.io/api/networking/v1alpha3"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
)

// When a service port is l7.
//
// A TCP service port is l7 (connects to it are redirected to the client
// namespace's listener on the node proxy) when any of these holds:
//
//  1. a VirtualService bound to the mesh (no gateways, or "mesh" among
//     them) names the service's host: its FQDN, its short name in the
//     VirtualService's namespace, or a wildcard ("*", "*.suffix") matching
//     the FQDN; whatever the VirtualService routes (http, tcp or tls);
//  2. the port is HTTP (appProtocol, or a name prefix http, http2, grpc,
//     grpc-web, h2c, as translate reads it) and a DestinationRule for the
//     host asks for something only a proxy does on HTTP: connectionPool.http,
//     outlierDetection or a consistentHash load balancer, at the top level,
//     in portLevelSettings for this port, or in any subset;
//  3. a backend pod of the service is a workload whose authorization the
//     node proxy enforces (policy.go: an ALLOW set with L7 rules, a DENY
//     with L7 rules, a CUSTOM policy, or a policy selecting only some pods
//     of an identity).
//
// UDP ports are never l7: the node proxy does not carry UDP.

// markL7 decides l7 for every service port and builds its resource.
func (m *Mesh) markL7() {
	vsHosts, vsWild := m.virtualServiceHosts()
	drs := m.destinationRules()
	for _, s := range m.services {
		routed := vsHosts[s.host] || slices.ContainsFunc(vsWild, func(p string) bool { return hostMatches(p, s.host) })
		for _, sp := range s.ports {
			if sp.proto == dataplanev1.Protocol_TCP {
				sp.l7 = routed || sp.http && drNeedsProxy(drs, s.host, sp.port) ||
					slices.ContainsFunc(sp.workloads, func(w *workload) bool { return m.kernel[w.identity] != nil && m.kernel[w.identity].proxy })
			}
			sp.msg = &dataplanev1.Service{Namespace: s.ns, Name: s.name, Vips: s.vips, Port: sp.port,
				Protocol: sp.proto, Backends: sp.backends, L7: sp.l7}
		}
	}
}

// virtualServiceHosts returns the exact hosts and the wildcard patterns of
// the VirtualServices bound to the mesh.
func (m *Mesh) virtualServiceHosts() (map[string]bool, []string) {
	exact := map[string]bool{}
	var wild []string
	for _, o := range m.src.List(config.KindVirtualService) {
		vs, ok := o.Spec.(*networking.VirtualService)
		if !ok {
			continue // translate reports it
		}
		if len(vs.GetGateways()) > 0 && !slices.Contains(vs.GetGateways(), "mesh") {
			continue
		}
		for _, h := range vs.GetHosts() {
			h = resolveHost(h, o.Namespace)
			if strings.HasPrefix(h, "*") {
				wild = append(wild, h)
			} else {
				exact[h] = true
			}
		}
	}
	return exact, wild
}

type drEntry struct {
	host string
	dr   *networking.DestinationRule
}

func (m *Mesh) destinationRules() []drEntry {
	var out []drEntry
	for _, o := range m.src.List(config.KindDestinationRule) {
		dr, ok := o.Spec.(*networking.DestinationRule)
		if !ok {
			continue // translate reports it
		}
		out = append(out, drEntry{host: resolveHost(dr.GetHost(), o.Namespace), dr: dr})
	}
	return out
}

// drNeedsProxy reports whether a DestinationRule for host asks for an HTTP
// feature on port (rule 2 above).
func drNeedsProxy(drs []drEntry, host string, port uint32) bool {
	for _, e := range drs {
		if !hostMatches(e.host, host) {
			continue
		}
		policies := []*networking.TrafficPolicy{e.dr.GetTrafficPolicy()}
		for _, s := range e.dr.GetSubsets() {
			policies = append(policies, s.GetTrafficPolicy())
		}
		for _, tp := range policies {
			if httpFeatures(tp.GetConnectionPool(), tp.GetOutlierDetection(), tp.GetLoadBalancer()) {
				return true
			}
			for _, pl := range tp.GetPortLevelSettings() {
				if pl.GetPort().GetNumber() == port && httpFeatures(pl.GetConnectionPool(), pl.GetOutlierDetection(), pl.GetLoadBalancer()) {
					return true
				}
			}
		}
	}
	return false
}

func httpFeatures(cp *networking.ConnectionPoolSettings, od *networking.OutlierDetection, lb *networking.LoadBalancerSettings) bool {
	return cp.GetHttp() != nil || od != nil || lb.GetConsistentHash() != nil
}

// resolveHost makes a short host of namespace ns an FQDN, as Istio does.
func resolveHost(h, ns string) string {
	if h == "" || strings.HasPrefix(h, "*") || strings.Contains(h, ".") {
		return h
	}
	return h + "." + ns + ".svc." + translate.DomainSuffix
}

// hostMatches matches "*", "*.suffix" or an exact host.
func hostMatches(pattern, host string) bool {
	switch {
	case pattern == "*":
		return true
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(host, pattern[1:])
	}
	return pattern == host
}
