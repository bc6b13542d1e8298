package secure

import (
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// AccountSuffix is appended to the names of clusters and route
// configurations that speak for one service account: "~<ns>/<sa>".
func AccountSuffix(id spiffeid.ID) string {
	ns, sa := nsSA(id)
	return "~" + ns + "/" + sa
}

func nsSA(id spiffeid.ID) (string, string) {
	segs := splitPath(id.Path())
	if len(segs) == 4 {
		return segs[1], segs[3]
	}
	return "", ""
}

func splitPath(p string) []string {
	var out []string
	start := 1
	for i := 1; i <= len(p); i++ {
		if i == len(p) || p[i] == '/' {
			out = append(out, p[start:i])
			start = i + 1
		}
	}
	return out
}

// outbound rewrites one namespace's outbound listener for the service
// accounts of its pods on the node.
type outbound struct {
	m        *nodeModel
	clusters map[string]*clusterv3.Cluster          // original clusters by name
	routes   map[string]*routev3.RouteConfiguration // original route configurations by name
	newCl    map[string]*clusterv3.Cluster          // per-account clusters added
	newRC    map[string]*routev3.RouteConfiguration // per-account route configurations added
}

// secureCluster returns the cluster a chain of account id should use
// instead of name ("" if name needs no identity).
func (o *outbound) secureCluster(name string, id spiffeid.ID) string {
	ns, _ := nsSA(id)
	d := o.m.destinationOf(name, ns)
	orig := o.clusters[name]
	if !d.mesh || d.plaintext || orig == nil {
		return ""
	}
	n := name + AccountSuffix(id)
	if _, ok := o.newCl[n]; ok {
		return n
	}
	o.newCl[n] = o.m.shared.cluster(accountKey[clusterv3.Cluster]{orig, id.String()}, func() *clusterv3.Cluster {
		c := proto.Clone(orig).(*clusterv3.Cluster)
		c.Name = n
		if c.GetEdsClusterConfig() != nil && c.EdsClusterConfig.ServiceName == "" {
			c.EdsClusterConfig.ServiceName = name // share the original's endpoints
		}
		c.TransportSocket = o.m.upstreamSocket(id, d)
		return c
	})
	return n
}

// listener splits l's chains per account; l is replaced by a copy.
func (o *outbound) listener(l *listenerv3.Listener, accounts []*account) *listenerv3.Listener {
	out := proto.Clone(l).(*listenerv3.Listener)
	out.FilterChains = nil
	for _, fc := range l.GetFilterChains() {
		for _, a := range accounts {
			c := proto.Clone(fc).(*listenerv3.FilterChain)
			c.Name = fc.GetName() + AccountSuffix(a.id)
			if c.FilterChainMatch == nil {
				c.FilterChainMatch = &listenerv3.FilterChainMatch{}
			}
			c.FilterChainMatch.SourcePrefixRanges = nil
			for _, ip := range a.ips {
				c.FilterChainMatch.SourcePrefixRanges = append(c.FilterChainMatch.SourcePrefixRanges, hostRange(ip))
			}
			for i, f := range c.Filters {
				c.Filters[i] = o.filter(f, a.id)
			}
			out.FilterChains = append(out.FilterChains, c)
		}
	}
	return out
}

// filter points a tcp_proxy or HTTP connection manager at the account's
// clusters or route configuration.
func (o *outbound) filter(f *listenerv3.Filter, id spiffeid.ID) *listenerv3.Filter {
	tc := f.GetTypedConfig()
	if tc == nil {
		return f
	}
	switch {
	case tc.MessageIs(&tcpv3.TcpProxy{}):
		tp := &tcpv3.TcpProxy{}
		if tc.UnmarshalTo(tp) != nil {
			return f
		}
		if c := tp.GetCluster(); c != "" {
			if n := o.secureCluster(c, id); n != "" {
				tp.ClusterSpecifier = &tcpv3.TcpProxy_Cluster{Cluster: n}
			}
		}
		for _, w := range tp.GetWeightedClusters().GetClusters() {
			if n := o.secureCluster(w.Name, id); n != "" {
				w.Name = n
			}
		}
		return &listenerv3.Filter{Name: f.Name, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(tp)}}
	case tc.MessageIs(&hcmv3.HttpConnectionManager{}):
		hcm := &hcmv3.HttpConnectionManager{}
		if tc.UnmarshalTo(hcm) != nil || hcm.GetRds() == nil {
			return f
		}
		hcm.GetRds().RouteConfigName = o.route(hcm.GetRds().GetRouteConfigName(), id)
		return &listenerv3.Filter{Name: f.Name, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)}}
	}
	return f
}

// route returns the account's copy of a route configuration, or name
// itself when no route of it needs an identity.
func (o *outbound) route(name string, id spiffeid.ID) string {
	orig := o.routes[name]
	if orig == nil {
		return name
	}
	n := name + AccountSuffix(id)
	if _, ok := o.newRC[n]; ok {
		return n
	}
	key := accountKey[routev3.RouteConfiguration]{orig, id.String()}
	e, ok := o.m.shared.route(key)
	if !ok {
		e = o.m.shared.putRoute(key, o.buildRoute(orig, n, id))
	}
	for _, c := range e.clusters {
		o.newCl[c.GetName()] = c
	}
	if e.rc == nil {
		return name
	}
	o.newRC[n] = e.rc
	return n
}

// buildRoute copies orig for account id, named n, with its clusters
// swapped for the account's; rc is nil when nothing changed.
func (o *outbound) buildRoute(orig *routev3.RouteConfiguration, n string, id spiffeid.ID) *routeEntry {
	rc := proto.Clone(orig).(*routev3.RouteConfiguration)
	changed := false
	e := &routeEntry{}
	swap := func(c *string) {
		if s := o.secureCluster(*c, id); s != "" {
			*c, changed = s, true
			e.clusters = append(e.clusters, o.newCl[s])
		}
	}
	for _, vh := range rc.GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			ra := r.GetRoute()
			if ra == nil {
				continue
			}
			if c, ok := ra.ClusterSpecifier.(*routev3.RouteAction_Cluster); ok {
				swap(&c.Cluster)
			}
			for _, w := range ra.GetWeightedClusters().GetClusters() {
				swap(&w.Name)
			}
			for _, mp := range ra.GetRequestMirrorPolicies() {
				swap(&mp.Cluster)
			}
		}
	}
	if changed {
		rc.Name = n
		e.rc = rc
	}
	return e
}

func hostRange(ip string) *corev3.CidrRange {
	bits := uint32(32)
	if slices.Contains([]byte(ip), ':') {
		bits = 128
	}
	return &corev3.CidrRange{AddressPrefix: ip, PrefixLen: wrapperspb.UInt32(bits)}
}
