package kube

import (
	"fmt"
	"slices"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"

	"github.com/nodemesh/nodemesh/config"
)

// customKind is a custom resource kind the Source reads, with the versions
// config's decoder accepts (kinds.go and decode_smi.go in package config).
type customKind struct {
	group, kind, resource string
	versions              []string
}

var (
	networkingVersions = []string{"v1", "v1beta1", "v1alpha3"}
	securityVersions   = []string{"v1", "v1beta1"}
)

// customKinds are read when the server serves them.
var customKinds = []customKind{
	{"networking.istio.io", string(config.KindVirtualService), "virtualservices", networkingVersions},
	{"networking.istio.io", string(config.KindDestinationRule), "destinationrules", networkingVersions},
	{"networking.istio.io", string(config.KindGateway), "gateways", networkingVersions},
	{"networking.istio.io", string(config.KindServiceEntry), "serviceentries", networkingVersions},
	{"networking.istio.io", string(config.KindSidecar), "sidecars", networkingVersions},
	{"security.istio.io", string(config.KindPeerAuthentication), "peerauthentications", securityVersions},
	{"security.istio.io", string(config.KindAuthorizationPolicy), "authorizationpolicies", securityVersions},
	{"security.istio.io", string(config.KindRequestAuthentication), "requestauthentications", securityVersions},
	{"split.smi-spec.io", string(config.KindTrafficSplit), "trafficsplits", []string{"v1alpha2", "v1alpha3", "v1alpha4"}},
	{"access.smi-spec.io", string(config.KindTrafficTarget), "traffictargets", []string{"v1alpha2", "v1alpha3"}},
	{"specs.smi-spec.io", string(config.KindHTTPRouteGroup), "httproutegroups", []string{"v1alpha2", "v1alpha3", "v1alpha4"}},
	{"specs.smi-spec.io", string(config.KindTCPRoute), "tcproutes", []string{"v1alpha2", "v1alpha3", "v1alpha4"}},
	{"specs.smi-spec.io", string(config.KindUDPRoute), "udproutes", []string{"v1alpha4"}},
}

// discovered is the outcome of discovery: the resources to watch, and the
// kinds that are not served (for an Info log).
type discovered struct {
	gvrs    []schema.GroupVersionResource
	missing []string // "group/Kind"
}

// discover picks, for every custom kind, the server's most preferred version
// that config can decode. Groups the server does not serve are missing, not
// errors: a cluster without SMI (or without Istio) is normal.
func discover(dc discovery.DiscoveryInterface) (discovered, error) {
	groups, err := dc.ServerGroups()
	if err != nil {
		return discovered{}, fmt.Errorf("discover API groups: %w", err)
	}
	// The server lists each group's versions from most to least preferred.
	versions := map[string][]string{}
	for _, g := range groups.Groups {
		for _, v := range g.Versions {
			versions[g.Name] = append(versions[g.Name], v.Version)
		}
	}
	served := map[schema.GroupVersion]map[string]bool{} // resources per group version
	var d discovered
	for _, ck := range customKinds {
		gvr, ok := schema.GroupVersionResource{}, false
		for _, v := range versions[ck.group] {
			if !slices.Contains(ck.versions, v) {
				continue
			}
			gv := schema.GroupVersion{Group: ck.group, Version: v}
			res, seen := served[gv]
			if !seen {
				list, err := dc.ServerResourcesForGroupVersion(gv.String())
				if err != nil {
					return discovered{}, fmt.Errorf("discover %s: %w", gv, err)
				}
				res = map[string]bool{}
				for _, r := range list.APIResources {
					res[r.Name] = true
				}
				served[gv] = res
			}
			if res[ck.resource] {
				gvr, ok = gv.WithResource(ck.resource), true
				break
			}
		}
		if ok {
			d.gvrs = append(d.gvrs, gvr)
		} else {
			d.missing = append(d.missing, ck.group+"/"+ck.kind)
		}
	}
	return d, nil
}

// coreResources are the typed kinds the Source watches.
var coreResources = []schema.GroupResource{
	{Resource: "namespaces"}, {Resource: "services"}, {Resource: "pods"}, {Resource: "serviceaccounts"},
	{Group: "discovery.k8s.io", Resource: "endpointslices"},
}

// WatchedResources lists every resource a Source may get, list and watch
// (the custom ones only when served): what meshd's RBAC must allow. Writes
// are Events (create) and the leader election Lease.
func WatchedResources() []schema.GroupResource {
	out := slices.Clone(coreResources)
	for _, ck := range customKinds {
		out = append(out, schema.GroupResource{Group: ck.group, Resource: ck.resource})
	}
	return out
}
