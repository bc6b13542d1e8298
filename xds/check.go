package xds

import (
	"errors"
	"fmt"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/nodemesh/nodemesh/translate"
)

// CheckNodeConfig is the default check: every resource passes its
// generated Validate(), names are unique per type, and every route
// configuration, cluster and endpoint assignment referenced exists. Unlike
// go-control-plane's Snapshot.Consistent it looks inside API listeners
// (proxyless gRPC), whose RDS names Consistent misses.
func CheckNodeConfig(nc *translate.NodeConfig) error {
	var errs []error
	have := map[string]map[string]bool{}
	for typeURL, rs := range envoyResources(nc) {
		names := map[string]bool{}
		for _, nr := range rs {
			name, r := nr.name, nr.res
			if names[name] {
				errs = append(errs, fmt.Errorf("%s %q: duplicate name", typeShort(typeURL), name))
			}
			names[name] = true
			if v, ok := r.(interface{ ValidateAll() error }); ok {
				if err := v.ValidateAll(); err != nil {
					errs = append(errs, fmt.Errorf("%s %q: %w", typeShort(typeURL), name, err))
				}
			}
		}
		have[typeShort(typeURL)] = names
	}
	ref := func(from, kind, name string) {
		if !have[kind][name] {
			errs = append(errs, fmt.Errorf("%s references %s %q, which is missing", from, kind, name))
		}
	}
	for _, l := range nc.Listeners {
		for _, rds := range listenerRouteNames(l) {
			ref(fmt.Sprintf("LDS %q", l.GetName()), "RDS", rds)
		}
	}
	for _, rc := range nc.Routes {
		for _, c := range routeClusterNames(rc) {
			ref(fmt.Sprintf("RDS %q", rc.GetName()), "CDS", c)
		}
	}
	for _, c := range nc.Clusters {
		if c.GetType() == clusterv3.Cluster_EDS {
			name := c.GetEdsClusterConfig().GetServiceName()
			if name == "" {
				name = c.GetName()
			}
			ref(fmt.Sprintf("CDS %q", c.GetName()), "EDS", name)
		}
	}
	return errors.Join(errs...)
}

// listenerRouteNames lists the RDS names a listener's HTTP connection
// managers use, in its API listener and its filter chains.
func listenerRouteNames(l *listenerv3.Listener) []string {
	var out []string
	addHCM := func(h *hcmv3.HttpConnectionManager) {
		if rds := h.GetRds(); rds != nil {
			out = append(out, rds.GetRouteConfigName())
		}
	}
	if api := l.GetApiListener().GetApiListener(); api != nil {
		h := &hcmv3.HttpConnectionManager{}
		if api.UnmarshalTo(h) == nil {
			addHCM(h)
		}
	}
	chains := append([]*listenerv3.FilterChain{l.GetDefaultFilterChain()}, l.GetFilterChains()...)
	for _, fc := range chains {
		for _, f := range fc.GetFilters() {
			if tc := f.GetTypedConfig(); tc != nil {
				h := &hcmv3.HttpConnectionManager{}
				if tc.UnmarshalTo(h) == nil {
					addHCM(h)
				}
			}
		}
	}
	return out
}

// routeClusterNames lists the clusters a route configuration sends to.
func routeClusterNames(rc *routev3.RouteConfiguration) []string {
	var out []string
	for _, vh := range rc.GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			a := r.GetRoute()
			if c := a.GetCluster(); c != "" {
				out = append(out, c)
			}
			for _, wc := range a.GetWeightedClusters().GetClusters() {
				out = append(out, wc.GetName())
			}
		}
	}
	return out
}
