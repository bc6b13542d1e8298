package translate

import (
	"errors"
	"fmt"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// validator is what go-control-plane's generated resources implement.
type validator interface{ Validate() error }

// Check verifies a NodeConfig before it is served: every resource (and
// every typed config inside it) passes its generated Validate(), names are
// unique and sorted, and every name referenced exists in nc: RDS names of
// listeners (API listeners included, which go-control-plane's
// Snapshot.Consistent misses), clusters of tcp_proxy filters and routes,
// and the load assignment of every EDS cluster. It returns all problems
// joined; nil means the config is consistent.
func Check(nc *NodeConfig) error {
	if nc == nil {
		return errors.New("nil NodeConfig")
	}
	c := &checker{routes: map[string]bool{}, clusters: map[string]bool{}, cla: map[string]bool{}}
	c.names("listener", len(nc.Listeners), func(i int) string { return nc.Listeners[i].GetName() }, nil)
	c.names("route configuration", len(nc.Routes), func(i int) string { return nc.Routes[i].GetName() }, c.routes)
	c.names("cluster", len(nc.Clusters), func(i int) string { return nc.Clusters[i].GetName() }, c.clusters)
	c.names("load assignment", len(nc.Endpoints), func(i int) string { return nc.Endpoints[i].GetClusterName() }, c.cla)
	for _, l := range nc.Listeners {
		c.validate("listener "+l.GetName(), l)
		c.listener(l)
	}
	for _, r := range nc.Routes {
		c.validate("route configuration "+r.GetName(), r)
		c.routeConfig(r)
	}
	eds := map[string]bool{}
	for _, cl := range nc.Clusters {
		c.validate("cluster "+cl.GetName(), cl)
		for k, a := range cl.GetTypedExtensionProtocolOptions() {
			c.validateAny(fmt.Sprintf("cluster %s protocol options %s", cl.GetName(), k), a)
		}
		if cl.GetType() == clusterv3.Cluster_EDS {
			name := cl.GetEdsClusterConfig().GetServiceName()
			if name == "" {
				name = cl.GetName()
			}
			eds[name] = true
			if !c.cla[name] {
				c.errorf("cluster %s: no load assignment %q", cl.GetName(), name)
			}
		}
	}
	for _, e := range nc.Endpoints {
		c.validate("load assignment "+e.GetClusterName(), e)
		if !eds[e.GetClusterName()] {
			c.errorf("load assignment %s: no EDS cluster uses it", e.GetClusterName())
		}
	}
	return errors.Join(c.errs...)
}

type checker struct {
	errs     []error
	routes   map[string]bool
	clusters map[string]bool
	cla      map[string]bool
}

func (c *checker) errorf(format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf(format, args...))
}

// names checks that names are non-empty, unique and sorted, and records them.
func (c *checker) names(what string, n int, name func(int) string, into map[string]bool) {
	for i := range n {
		switch {
		case name(i) == "":
			c.errorf("%s #%d has no name", what, i)
		case i > 0 && name(i-1) == name(i):
			c.errorf("%s %s appears twice", what, name(i))
		case i > 0 && name(i-1) > name(i):
			c.errorf("%ss are not sorted by name: %s before %s", what, name(i-1), name(i))
		}
		if into != nil {
			into[name(i)] = true
		}
	}
}

func (c *checker) validate(what string, v validator) {
	if err := v.Validate(); err != nil {
		c.errorf("%s: %w", what, err)
	}
}

// validateAny unpacks a typed config and validates it; it returns the
// message, or nil when it cannot be unpacked.
func (c *checker) validateAny(what string, a *anypb.Any) any {
	if a == nil {
		c.errorf("%s: missing typed config", what)
		return nil
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		c.errorf("%s: unpack %s: %w", what, a.GetTypeUrl(), err)
		return nil
	}
	if v, ok := m.(validator); ok {
		c.validate(what, v)
	}
	return m
}

func (c *checker) listener(l *listenerv3.Listener) {
	what := "listener " + l.GetName()
	if api := l.GetApiListener(); api != nil {
		c.networkFilter(what+" api_listener", api.GetApiListener())
		return
	}
	for _, lf := range l.GetListenerFilters() {
		c.validateAny(what+" listener filter "+lf.GetName(), lf.GetTypedConfig())
	}
	chains := l.GetFilterChains()
	if dc := l.GetDefaultFilterChain(); dc != nil {
		chains = append(chains[:len(chains):len(chains)], dc)
	}
	if len(chains) == 0 {
		c.errorf("%s: no filter chains", what)
	}
	c.uniqueMatches(what, l.GetFilterChains())
	for _, fc := range chains {
		for _, f := range fc.GetFilters() {
			c.networkFilter(what+" chain "+fc.GetName()+" filter "+f.GetName(), f.GetTypedConfig())
		}
	}
}

func (c *checker) networkFilter(what string, a *anypb.Any) {
	switch m := c.validateAny(what, a).(type) {
	case *hcmv3.HttpConnectionManager:
		rds := m.GetRds()
		if rds == nil {
			c.errorf("%s: HttpConnectionManager without RDS", what)
		} else if !c.routes[rds.GetRouteConfigName()] {
			c.errorf("%s: route configuration %q does not exist", what, rds.GetRouteConfigName())
		}
		if rds.GetConfigSource().GetAds() == nil {
			c.errorf("%s: RDS config source is not ADS", what)
		}
		hf := m.GetHttpFilters()
		for i, f := range hf {
			cfg := c.validateAny(what+" http filter "+f.GetName(), f.GetTypedConfig())
			if _, isRouter := cfg.(*routerv3.Router); isRouter != (i == len(hf)-1) {
				c.errorf("%s: the router must be the last HTTP filter", what)
			}
		}
		if len(hf) == 0 {
			c.errorf("%s: no HTTP filters (the router is required)", what)
		}
	case *tcpv3.TcpProxy:
		c.cluster(what, m.GetCluster())
		for _, w := range m.GetWeightedClusters().GetClusters() {
			c.cluster(what, w.GetName())
		}
	case nil:
	default:
		c.errorf("%s: unexpected network filter %T", what, m)
	}
}

func (c *checker) cluster(what, name string) {
	if name != "" && !c.clusters[name] {
		c.errorf("%s: cluster %q does not exist", what, name)
	}
}

func (c *checker) routeConfig(rc *routev3.RouteConfiguration) {
	for _, vh := range rc.GetVirtualHosts() {
		for i, r := range vh.GetRoutes() {
			what := fmt.Sprintf("route configuration %s virtual host %s route #%d", rc.GetName(), vh.GetName(), i)
			for name, cfg := range r.GetTypedPerFilterConfig() {
				c.validateAny(what+" filter config "+name, cfg)
			}
			a := r.GetRoute()
			if a == nil {
				continue
			}
			c.cluster(what, a.GetCluster())
			for _, w := range a.GetWeightedClusters().GetClusters() {
				c.cluster(what, w.GetName())
			}
		}
	}
}

// uniqueMatches reports filter chains whose matches overlap exactly on a
// destination port and address, which Envoy rejects.
func (c *checker) uniqueMatches(what string, chains []*listenerv3.FilterChain) {
	seen := map[string]string{}
	for _, fc := range chains {
		m := fc.GetFilterChainMatch()
		if len(m.GetServerNames())+len(m.GetApplicationProtocols())+len(m.GetSourcePrefixRanges())+len(m.GetDirectSourcePrefixRanges()) > 0 ||
			m.GetTransportProtocol() != "" || len(m.GetSourcePorts()) > 0 {
			continue // finer matches are not produced here; do not guess
		}
		ranges := m.GetPrefixRanges()
		keys := []string{""}
		if len(ranges) > 0 {
			keys = keys[:0]
			for _, r := range ranges {
				keys = append(keys, fmt.Sprintf("%s/%d", r.GetAddressPrefix(), r.GetPrefixLen().GetValue()))
			}
		}
		for _, k := range keys {
			k = fmt.Sprintf("%d|%s", m.GetDestinationPort().GetValue(), k)
			if other, dup := seen[k]; dup {
				c.errorf("%s: filter chains %s and %s both match %s", what, other, fc.GetName(), k)
			}
			seen[k] = fc.GetName()
		}
	}
}
