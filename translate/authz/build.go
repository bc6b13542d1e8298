package authz

import (
	"slices"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	corev1 "k8s.io/api/core/v1"

	"github.com/nodemesh/nodemesh/config"
)

// Filters is everything authz adds to one workload's inbound listener.
type Filters struct {
	// HTTP goes into the inbound HTTP connection manager, in this order,
	// before the router: jwt_authn (when a RequestAuthentication applies),
	// then AUDIT, CUSTOM, DENY, ALLOW and SMI ALLOW filters.
	HTTP []*hcmv3.HttpFilter
	// TCP goes before tcp_proxy in the inbound filter chains of ports that
	// are not HTTP.
	TCP []*listenerv3.Filter
	// JWKSClusters must exist for remote JWKS to be fetched.
	JWKSClusters []JWKSCluster
	Diagnostics  []config.Diagnostic
}

// Build selects the AuthorizationPolicies, RequestAuthentications and SMI
// TrafficTargets of the snapshot that apply to the workload and builds its
// filters. Without opts.ServiceSelector, targetRefs are resolved against
// the snapshot's Services.
func Build(snap *config.Snapshot, w Workload, opts Options) Filters {
	if opts.ServiceSelector == nil {
		opts.ServiceSelector = func(ns, name string) (map[string]string, bool) {
			o, ok := snap.Get(config.Key{Kind: config.KindService, Namespace: ns, Name: name})
			if !ok {
				return nil, false
			}
			svc, ok := o.Spec.(*corev1.Service)
			return svc.Spec.Selector, ok
		}
	}
	var f Filters
	jwt, clusters, diags := BuildJWT(snap.List(config.KindRequestAuthentication), w, opts)
	f.Diagnostics = append(f.Diagnostics, diags...)
	f.JWKSClusters = clusters
	ps, diags := SelectAuthorizationPolicies(snap.List(config.KindAuthorizationPolicy), w, opts)
	f.Diagnostics = append(f.Diagnostics, diags...)
	smi, diags := SMIPolicies(snap, opts)
	selected := SelectSMI(smi, w)
	for _, d := range diags { // only those of the TrafficTargets of this workload
		if slices.ContainsFunc(selected, func(p *Policy) bool { return p.Object.Key == d.Object }) {
			f.Diagnostics = append(f.Diagnostics, d)
		}
	}
	ps = append(ps, selected...)
	http, diags := HTTPFilters(ps, opts)
	f.Diagnostics = append(f.Diagnostics, diags...)
	if jwt != nil {
		f.HTTP = append(f.HTTP, jwt)
	}
	f.HTTP = append(f.HTTP, http...)
	tcp, diags := TCPFilters(ps, opts)
	f.TCP = tcp
	for _, d := range diags { // the TCP pass repeats HTTP's diagnostics
		if !containsDiag(f.Diagnostics, d) {
			f.Diagnostics = append(f.Diagnostics, d)
		}
	}
	return f
}

func containsDiag(list []config.Diagnostic, d config.Diagnostic) bool {
	for _, x := range list {
		if x == d {
			return true
		}
	}
	return false
}
