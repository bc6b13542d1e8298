package translate

import (
	"errors"
	"fmt"
	"sync"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	connlimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/connection_limit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	setfilterstatev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/set_filter_state/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// validator is what go-control-plane's generated resources implement.
type validator interface{ Validate() error }

// Check verifies a NodeConfig before it is served: every resource (and
// every typed config inside it) passes its generated Validate(), names are
// unique and sorted, filter chain matches do not overlap, and every name
// referenced exists in nc: RDS names of listeners (API listeners included,
// which go-control-plane's Snapshot.Consistent misses), clusters of
// tcp_proxy filters and routes, and the load assignment of every EDS
// cluster (and an EDS cluster for every load assignment). It returns all
// problems joined; nil means the config is consistent.
func Check(nc *NodeConfig) error {
	return check(nc, nil)
}

// Check is Check for NodeConfigs translated from this Mesh: the validation
// of each resource is remembered, so resources shared by many nodes are
// validated once (Validate is the expensive part); names and references
// are still checked per node.
func (p *Mesh) Check(nc *NodeConfig) error {
	return check(nc, p.checks)
}

// checkCache remembers what checking found: per resource message, and per
// virtual host content (the same service's virtual host recurs in the
// route configurations of many namespaces).
type checkCache struct {
	facts  sync.Map // proto message pointer -> *resourceFacts
	vhosts sync.Map // deterministic bytes of a VirtualHost -> error
}

// resourceFacts is what checking one resource found, independent of the
// node it is served to.
type resourceFacts struct {
	errs     []error
	routes   []ref // RDS names it needs
	clusters []ref // clusters it needs
}

type ref struct{ what, name string }

func check(nc *NodeConfig, cache *checkCache) error {
	if nc == nil {
		return errors.New("nil NodeConfig")
	}
	c := &checker{routes: map[string]bool{}, clusters: map[string]bool{}, cla: map[string]bool{}}
	c.names("listener", len(nc.Listeners), func(i int) string { return nc.Listeners[i].GetName() }, nil)
	c.names("route configuration", len(nc.Routes), func(i int) string { return nc.Routes[i].GetName() }, c.routes)
	c.names("cluster", len(nc.Clusters), func(i int) string { return nc.Clusters[i].GetName() }, c.clusters)
	c.names("load assignment", len(nc.Endpoints), func(i int) string { return nc.Endpoints[i].GetClusterName() }, c.cla)
	use := func(key any, compute func(f *resourceFacts)) {
		var f *resourceFacts
		if cache != nil {
			if v, ok := cache.facts.Load(key); ok {
				f = v.(*resourceFacts)
			}
		}
		if f == nil {
			f = &resourceFacts{}
			compute(f)
			if cache != nil {
				cache.facts.Store(key, f)
			}
		}
		c.errs = append(c.errs, f.errs...)
		for _, r := range f.routes {
			if !c.routes[r.name] {
				c.errorf("%s: route configuration %q does not exist", r.what, r.name)
			}
		}
		for _, r := range f.clusters {
			if !c.clusters[r.name] {
				c.errorf("%s: cluster %q does not exist", r.what, r.name)
			}
		}
	}
	for _, l := range nc.Listeners {
		use(l, func(f *resourceFacts) { listenerFacts(f, l) })
	}
	for _, r := range nc.Routes {
		use(r, func(f *resourceFacts) { routeFacts(f, r, cache) })
	}
	eds := map[string]bool{}
	for _, cl := range nc.Clusters {
		use(cl, func(f *resourceFacts) { clusterFacts(f, cl) })
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
		use(e, func(f *resourceFacts) { validate(f, "load assignment "+e.GetClusterName(), e) })
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

func (f *resourceFacts) errorf(format string, args ...any) {
	f.errs = append(f.errs, fmt.Errorf(format, args...))
}

func validate(f *resourceFacts, what string, v validator) {
	if err := v.Validate(); err != nil {
		f.errorf("%s: %w", what, err)
	}
}

// validateAny unpacks a typed config and validates it; it returns the
// message, or nil when it cannot be unpacked.
func validateAny(f *resourceFacts, what string, a *anypb.Any) any {
	if a == nil {
		f.errorf("%s: missing typed config", what)
		return nil
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		f.errorf("%s: unpack %s: %w", what, a.GetTypeUrl(), err)
		return nil
	}
	if v, ok := m.(validator); ok {
		validate(f, what, v)
	}
	return m
}

func clusterFacts(f *resourceFacts, cl *clusterv3.Cluster) {
	validate(f, "cluster "+cl.GetName(), cl)
	for k, a := range cl.GetTypedExtensionProtocolOptions() {
		validateAny(f, fmt.Sprintf("cluster %s protocol options %s", cl.GetName(), k), a)
	}
}

func listenerFacts(f *resourceFacts, l *listenerv3.Listener) {
	what := "listener " + l.GetName()
	validate(f, what, l)
	if api := l.GetApiListener(); api != nil {
		networkFilter(f, what+" api_listener", api.GetApiListener())
		return
	}
	for _, lf := range l.GetListenerFilters() {
		validateAny(f, what+" listener filter "+lf.GetName(), lf.GetTypedConfig())
	}
	chains := l.GetFilterChains()
	if dc := l.GetDefaultFilterChain(); dc != nil {
		chains = append(chains[:len(chains):len(chains)], dc)
	}
	if len(chains) == 0 {
		f.errorf("%s: no filter chains", what)
	}
	uniqueMatches(f, what, l.GetFilterChains())
	for _, fc := range chains {
		nfs := fc.GetFilters()
		for i, nf := range nfs {
			fw := what + " chain " + fc.GetName() + " filter " + nf.GetName()
			if networkFilter(f, fw, nf.GetTypedConfig()) != (i == len(nfs)-1) {
				f.errorf("%s: a chain ends with its one terminal filter (HTTP connection manager or TCP proxy)", fw)
			}
		}
	}
}

// networkFilter checks one network filter and reports whether it is a
// terminal filter.
func networkFilter(f *resourceFacts, what string, a *anypb.Any) (terminal bool) {
	switch m := validateAny(f, what, a).(type) {
	case *connlimitv3.ConnectionLimit, *setfilterstatev3.Config:
		return false
	case *hcmv3.HttpConnectionManager:
		rds := m.GetRds()
		if rds == nil {
			f.errorf("%s: HttpConnectionManager without RDS", what)
		} else {
			f.routes = append(f.routes, ref{what, rds.GetRouteConfigName()})
		}
		if rds.GetConfigSource().GetAds() == nil {
			f.errorf("%s: RDS config source is not ADS", what)
		}
		hf := m.GetHttpFilters()
		for i, h := range hf {
			cfg := validateAny(f, what+" http filter "+h.GetName(), h.GetTypedConfig())
			if _, isRouter := cfg.(*routerv3.Router); isRouter != (i == len(hf)-1) {
				f.errorf("%s: the router must be the last HTTP filter", what)
			}
		}
		if len(hf) == 0 {
			f.errorf("%s: no HTTP filters (the router is required)", what)
		}
	case *tcpv3.TcpProxy:
		if c := m.GetCluster(); c != "" {
			f.clusters = append(f.clusters, ref{what, c})
		}
		for _, w := range m.GetWeightedClusters().GetClusters() {
			f.clusters = append(f.clusters, ref{what, w.GetName()})
		}
	case nil:
	default:
		f.errorf("%s: unexpected network filter %T", what, m)
	}
	return true
}

func routeFacts(f *resourceFacts, rc *routev3.RouteConfiguration, cache *checkCache) {
	what := "route configuration " + rc.GetName()
	if cache == nil {
		validate(f, what, rc)
	} else {
		validateRouteConfig(f, what, rc, cache)
	}
	for _, vh := range rc.GetVirtualHosts() {
		for i, r := range vh.GetRoutes() {
			what := fmt.Sprintf("%s virtual host %s route #%d", what, vh.GetName(), i)
			for name, cfg := range r.GetTypedPerFilterConfig() {
				validateAny(f, what+" filter config "+name, cfg)
			}
			a := r.GetRoute()
			if a == nil {
				continue
			}
			if c := a.GetCluster(); c != "" {
				f.clusters = append(f.clusters, ref{what, c})
			}
			for _, w := range a.GetWeightedClusters().GetClusters() {
				f.clusters = append(f.clusters, ref{what, w.GetName()})
			}
		}
	}
}

// uniqueMatches reports filter chains whose matches overlap exactly on a
// destination port and address, which Envoy rejects.
func uniqueMatches(f *resourceFacts, what string, chains []*listenerv3.FilterChain) {
	seen := map[string]string{}
	for _, fc := range chains {
		m := fc.GetFilterChainMatch()
		if len(m.GetServerNames())+len(m.GetApplicationProtocols())+len(m.GetSourcePrefixRanges())+len(m.GetDirectSourcePrefixRanges()) > 0 ||
			m.GetTransportProtocol() != "" || len(m.GetSourcePorts()) > 0 {
			continue // finer matches are not produced here; do not guess
		}
		keys := []string{""}
		if ranges := m.GetPrefixRanges(); len(ranges) > 0 {
			keys = keys[:0]
			for _, r := range ranges {
				keys = append(keys, fmt.Sprintf("%s/%d", r.GetAddressPrefix(), r.GetPrefixLen().GetValue()))
			}
		}
		for _, k := range keys {
			k = fmt.Sprintf("%d|%s", m.GetDestinationPort().GetValue(), k)
			if other, dup := seen[k]; dup {
				f.errorf("%s: filter chains %s and %s both match %s", what, other, fc.GetName(), k)
			}
			seen[k] = fc.GetName()
		}
	}
}

// validateRouteConfig is rc.Validate() with each virtual host validated
// once per content; the route configuration's own fields are validated on
// a copy without virtual hosts.
func validateRouteConfig(f *resourceFacts, what string, rc *routev3.RouteConfiguration, cache *checkCache) {
	shallow := proto.Clone(rc).(*routev3.RouteConfiguration)
	shallow.VirtualHosts = nil
	validate(f, what, shallow)
	opts := proto.MarshalOptions{Deterministic: true}
	for _, vh := range rc.GetVirtualHosts() {
		b, err := opts.Marshal(vh)
		if err != nil {
			f.errorf("%s virtual host %s: %w", what, vh.GetName(), err)
			continue
		}
		v, ok := cache.vhosts.Load(string(b))
		if !ok {
			v = vh.Validate()
			if v == nil {
				v = error(nil)
			}
			cache.vhosts.Store(string(b), v)
		}
		if err, _ := v.(error); err != nil {
			f.errorf("%s virtual host %s: %w", what, vh.GetName(), err)
		}
	}
}
