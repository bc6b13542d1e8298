package secure

import (
	"cmp"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"github.com/nodemesh/nodemesh/translate"
)

// The per-account copies (Options.PerAccountClusters): every cluster an
// account reaches over mTLS, and every route configuration naming one, is
// copied for the account ("<name>~<ns>/<sa>") with the account's SVID.
// Safe on any Envoy, but it multiplies the clusters by the accounts of the
// node (see the package documentation).

// copies rewrites one node's outbound listeners for the per-account copies.
type copies struct {
	m        *nodeModel
	clusters map[string]*clusterv3.Cluster          // original clusters by name
	routes   map[string]*routev3.RouteConfiguration // original route configurations by name
	newCl    map[string]*clusterv3.Cluster          // per-account clusters added
	newRC    map[string]*routev3.RouteConfiguration // per-account route configurations added
}

type accountKey[T any] struct {
	orig *T
	id   string
}

// routeEntry is an account's copy of a route configuration (nil when no
// route needed an identity) and the account clusters it names.
type routeEntry struct {
	rc       *routev3.RouteConfiguration
	clusters []*clusterv3.Cluster
}

func applyCopies(nc *translate.NodeConfig, m *nodeModel) {
	o := &copies{m: m, clusters: map[string]*clusterv3.Cluster{}, routes: map[string]*routev3.RouteConfiguration{},
		newCl: map[string]*clusterv3.Cluster{}, newRC: map[string]*routev3.RouteConfiguration{}}
	for _, c := range nc.Clusters {
		o.clusters[c.GetName()] = c
	}
	for _, rc := range nc.Routes {
		o.routes[rc.GetName()] = rc
	}
	m.listeners(nc, o.listener)
	for _, rc := range o.newRC {
		nc.Routes = append(nc.Routes, rc)
	}
	for _, c := range o.newCl {
		nc.Clusters = append(nc.Clusters, c)
	}
	o.prune(nc)
	slices.SortStableFunc(nc.Routes, func(a, b *routev3.RouteConfiguration) int { return cmp.Compare(a.GetName(), b.GetName()) })
	slices.SortStableFunc(nc.Clusters, func(a, b *clusterv3.Cluster) int { return cmp.Compare(a.GetName(), b.GetName()) })
}

// prune drops route configurations no listener uses any more and the
// plaintext originals of clusters that now exist per account, unless
// something still refers to them.
func (o *copies) prune(nc *translate.NodeConfig) {
	r := collect(nc, false)
	nc.Routes = slices.DeleteFunc(nc.Routes, func(rc *routev3.RouteConfiguration) bool { return !r.routes[rc.GetName()] })
	r = collect(nc, false) // clusters of the routes that are left
	replaced := map[string]bool{}
	for _, c := range o.newCl {
		if svc := c.GetEdsClusterConfig().GetServiceName(); svc != "" {
			replaced[svc] = true
		}
	}
	nc.Clusters = slices.DeleteFunc(nc.Clusters, func(c *clusterv3.Cluster) bool {
		return replaced[c.GetName()] && !r.clusters[c.GetName()]
	})
}

// secureCluster returns the cluster a chain of account id should use
// instead of name ("" if name needs no identity).
func (o *copies) secureCluster(name string, id spiffeid.ID) string {
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
	o.newCl[n] = once(&o.m.shared.mu, o.m.shared.copies, accountKey[clusterv3.Cluster]{orig, id.String()}, func() *clusterv3.Cluster {
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
func (o *copies) listener(l *listenerv3.Listener, accounts []*account) *listenerv3.Listener {
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
func (o *copies) filter(f *listenerv3.Filter, id spiffeid.ID) *listenerv3.Filter {
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
func (o *copies) route(name string, id spiffeid.ID) string {
	orig := o.routes[name]
	if orig == nil {
		return name
	}
	n := name + AccountSuffix(id)
	if _, ok := o.newRC[n]; ok {
		return n
	}
	key := accountKey[routev3.RouteConfiguration]{orig, id.String()}
	e := once(&o.m.shared.mu, o.m.shared.routeCopies, key, func() *routeEntry { return o.buildRoute(orig, n, id) })
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
func (o *copies) buildRoute(orig *routev3.RouteConfiguration, n string, id spiffeid.ID) *routeEntry {
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
