package translate

import (
	"slices"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/nodemesh/nodemesh/config"
)

// scope is the mesh as one client namespace sees it: the services it may
// reach and the VirtualServices and DestinationRules that apply to it.
type scope struct {
	m        *mesh
	ns       string
	diags    *config.Diagnostics // problems found while building for this namespace
	services []*service          // sorted by hostname
	byHost   map[string]*service
	clusters *clusterSet
}

func (m *mesh) scope(ns string) *scope {
	s := &scope{m: m, ns: ns, diags: &config.Diagnostics{}, services: m.visibleServices(ns), byHost: map[string]*service{}, clusters: newClusterSet()}
	for _, svc := range s.services {
		s.byHost[svc.Hostname] = svc
	}
	return s
}

// virtualServiceFor returns the VirtualService that routes host for this
// namespace: one in the client's namespace first, then one in the host's
// namespace, then any other exported here (by namespace and name); exact
// hosts beat wildcards.
func (s *scope) virtualServiceFor(svc *service) (*config.Object, *networking.VirtualService) {
	var best *vsEntry
	bestRank := 1 << 30
	consider := func(e *vsEntry, wildcard bool) {
		if e.obj.Namespace != s.ns && !e.export.visibleTo(s.ns) {
			return
		}
		rank := 2
		switch e.obj.Namespace {
		case s.ns:
			rank = 0
		case svc.Namespace:
			rank = 1
		}
		if wildcard {
			rank += 3
		}
		if rank < bestRank {
			best, bestRank = e, rank
		}
	}
	for _, e := range s.m.vsByHost[svc.Hostname] {
		consider(e, false)
	}
	for _, e := range s.m.vsWildcard {
		if slices.ContainsFunc(e.hosts, func(h string) bool { return hostMatches(h, svc.Hostname) }) {
			consider(e, true)
		}
	}
	if best == nil {
		return nil, nil
	}
	return best.obj, best.spec
}

// defaultRoute sends everything to the service port's cluster.
func (s *scope) defaultRoute(svc *service, sp servicePort) httpRoute {
	clusters := []weightedCluster{{Cluster: s.clusters.want(s, svc, sp, ""), Weight: 100}}
	return httpRoute{Name: "default", Clusters: clusters, Hash: s.routeHash(clusters)}
}

// httpRoutes returns the routes of one HTTP service port: those of its
// VirtualService if one applies (bad routes are skipped and diagnosed),
// else a single default route.
func (s *scope) httpRoutes(svc *service, sp servicePort) []httpRoute {
	o, vs := s.virtualServiceFor(svc)
	if vs == nil || len(vs.GetHttp()) == 0 {
		return []httpRoute{s.defaultRoute(svc, sp)}
	}
	var out []httpRoute
	for i, hr := range vs.GetHttp() {
		if r, ok := s.convertHTTPRoute(o, i, hr, sp); ok {
			out = append(out, r)
		}
	}
	return out
}

// virtualHost is one HTTP service port as this namespace sees it.
func (s *scope) virtualHost(svc *service, sp servicePort) virtualHost {
	return virtualHost{
		Name:    svc.Hostname + ":" + portString(sp.Port),
		Domains: domains(svc, sp.Port, s.ns),
		Routes:  s.httpRoutes(svc, sp),
	}
}

// wantAllClusters adds, for every service port this namespace can see, the
// service's cluster and one per subset of the DestinationRule that applies
// here, as Istio does, so routes can be changed without new clusters.
func (s *scope) wantAllClusters() {
	for _, svc := range s.services {
		dr := s.m.destinationRuleFor(svc.Hostname, svc.Namespace, s.ns)
		for _, sp := range svc.Ports {
			s.clusters.want(s, svc, sp, "")
			if dr == nil {
				continue
			}
			for _, sub := range dr.Subsets {
				s.clusters.want(s, svc, sp, sub.Name)
			}
		}
	}
}
