package translate

import (
	"net/netip"
	"strconv"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// routeConfiguration builds one RouteConfiguration. Domains already used by
// an earlier virtual host are dropped (Envoy rejects duplicates), so the
// first service in hostname order keeps a shared VIP.
func routeConfiguration(g virtualHostGroup) *routev3.RouteConfiguration {
	name, vhosts := g.Name, g.VirtualHosts
	if g.AllowAny {
		vhosts = append(vhosts[:len(vhosts):len(vhosts)], virtualHost{
			Name: "allow_any", Domains: []string{"*"},
			Routes: []httpRoute{{Name: "allow_any", Clusters: []weightedCluster{{Cluster: PassthroughCluster, Weight: 1}}}},
		})
	}
	rc := &routev3.RouteConfiguration{Name: name, ValidateClusters: wrapperspb.Bool(false)}
	used := map[string]bool{}
	for _, vh := range vhosts {
		var domains []string
		for _, d := range vh.Domains {
			if !used[d] {
				used[d] = true
				domains = append(domains, d)
			}
		}
		if len(domains) == 0 {
			continue
		}
		evh := &routev3.VirtualHost{Name: vh.Name, Domains: domains}
		for _, r := range vh.Routes {
			evh.Routes = append(evh.Routes, envoyRoutes(r)...)
		}
		rc.VirtualHosts = append(rc.VirtualHosts, evh)
	}
	return rc
}

// domains lists the names a client in namespace clientNS may use for a
// service port, as Istio does: the FQDN, name.ns.svc, name.ns, the short
// name from the same namespace, and the VIPs, each with and without port.
func domains(svc *service, port uint32, clientNS string) []string {
	hosts := []string{svc.Hostname}
	if !svc.ServiceEntry {
		hosts = append(hosts, svc.Name+"."+svc.Namespace+".svc", svc.Name+"."+svc.Namespace)
		if clientNS == svc.Namespace {
			hosts = append(hosts, svc.Name)
		}
	}
	for _, v := range svc.VIPs {
		if a, err := netip.ParseAddr(v); err == nil {
			if a.Is6() {
				v = "[" + v + "]"
			}
			hosts = append(hosts, v)
		}
	}
	p := ":" + strconv.FormatUint(uint64(port), 10)
	out := make([]string, 0, 2*len(hosts))
	for _, h := range hosts {
		out = append(out, h, h+p)
	}
	return out
}

// envoyRoutes turns a model route into one Envoy route per match clause.
func envoyRoutes(r httpRoute) []*routev3.Route {
	action := routeAction(r)
	matches := r.Matches
	if len(matches) == 0 {
		matches = []routeMatch{{}}
	}
	out := make([]*routev3.Route, 0, len(matches))
	for _, m := range matches {
		er := &routev3.Route{
			Name:   r.Name,
			Match:  envoyRouteMatch(m),
			Action: &routev3.Route_Route{Route: action},
		}
		if answerAction(er, r) {
			er.RequestHeadersToAdd, er.ResponseHeadersToAdd = headerOptions(r.Request), headerOptions(r.Response)
		} else {
			applyRoutePolicies(er, r)
		}
		out = append(out, er)
	}
	return out
}

func envoyRouteMatch(m routeMatch) *routev3.RouteMatch {
	rm := &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}
	if p := m.Path; p != nil {
		switch p.Kind {
		case matchExact:
			rm.PathSpecifier = &routev3.RouteMatch_Path{Path: p.Value}
		case matchPrefix:
			rm.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: p.Value}
		case matchRegex:
			rm.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: p.Value}}
		}
	}
	for _, h := range m.Headers {
		hm := &routev3.HeaderMatcher{Name: h.Name}
		if h.Kind == matchPrefix && h.Value == "" {
			hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}
		} else {
			hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: stringMatcher(h.stringMatch)}
		}
		rm.Headers = append(rm.Headers, hm)
	}
	return rm
}

func stringMatcher(m stringMatch) *matcherv3.StringMatcher {
	switch m.Kind {
	case matchPrefix:
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: m.Value}}
	case matchRegex:
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: m.Value}}}
	default:
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: m.Value}}
	}
}

func routeAction(r httpRoute) *routev3.RouteAction {
	a := &routev3.RouteAction{}
	if len(r.Clusters) == 1 {
		a.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: r.Clusters[0].Cluster}
	} else {
		wc := &routev3.WeightedCluster{}
		for _, c := range r.Clusters {
			wc.Clusters = append(wc.Clusters, &routev3.WeightedCluster_ClusterWeight{Name: c.Cluster, Weight: wrapperspb.UInt32(c.Weight)})
		}
		a.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: wc}
	}
	// As Istio: no route timeout unless the VirtualService sets one
	// (Envoy's default of 15s would cut long-lived streams).
	a.Timeout = durationpb.New(0)
	if r.Timeout != nil {
		a.Timeout = durationpb.New(*r.Timeout)
	}
	if r.Hash != nil {
		a.HashPolicy = []*routev3.RouteAction_HashPolicy{hashPolicy(r.Hash)}
	}
	if r.PrefixRewrite != "" {
		a.PrefixRewrite = r.PrefixRewrite
	}
	if r.AuthorityRewrite != "" {
		a.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: r.AuthorityRewrite}
	}
	return a
}
