package secure

import (
	"errors"
	"fmt"
	"slices"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/nodemesh/nodemesh/translate"
)

// refs are the names a NodeConfig's resources refer to.
type refs struct {
	routes   map[string]bool
	clusters map[string]bool
	secrets  map[string]bool // only when collected withSecrets
	errs     []error

	withSecrets bool
	seen        map[*anypb.Any]bool // transport socket configs already read (they are shared)
}

func collect(nc *translate.NodeConfig, withSecrets bool) *refs {
	r := &refs{routes: map[string]bool{}, clusters: map[string]bool{}, secrets: map[string]bool{},
		withSecrets: withSecrets, seen: map[*anypb.Any]bool{}}
	for _, l := range nc.Listeners {
		chains := slices.Clone(l.GetFilterChains())
		if d := l.GetDefaultFilterChain(); d != nil {
			chains = append(chains, d)
		}
		for _, fc := range chains {
			r.transport(l.GetName(), fc.GetTransportSocket())
			for _, f := range fc.GetFilters() {
				r.filter(f)
			}
		}
		if api := l.GetApiListener().GetApiListener(); api != nil {
			hcm := &hcmv3.HttpConnectionManager{}
			if api.UnmarshalTo(hcm) == nil && hcm.GetRds() != nil {
				r.routes[hcm.GetRds().GetRouteConfigName()] = true
			}
		}
	}
	for _, rc := range nc.Routes {
		for _, vh := range rc.GetVirtualHosts() {
			for _, rt := range vh.GetRoutes() {
				ra := rt.GetRoute()
				if c := ra.GetCluster(); c != "" {
					r.clusters[c] = true
				}
				for _, w := range ra.GetWeightedClusters().GetClusters() {
					r.clusters[w.GetName()] = true
				}
				for _, mp := range ra.GetRequestMirrorPolicies() {
					r.clusters[mp.GetCluster()] = true
				}
			}
		}
	}
	for _, c := range nc.Clusters {
		r.transport(c.GetName(), c.GetTransportSocket())
		for _, m := range c.GetTransportSocketMatches() {
			r.transport(c.GetName(), m.GetTransportSocket())
		}
	}
	return r
}

func (r *refs) filter(f *listenerv3.Filter) {
	tc := f.GetTypedConfig()
	switch {
	case tc == nil:
	case tc.MessageIs(&tcpv3.TcpProxy{}):
		tp := &tcpv3.TcpProxy{}
		if tc.UnmarshalTo(tp) == nil {
			if c := tp.GetCluster(); c != "" {
				r.clusters[c] = true
			}
			for _, w := range tp.GetWeightedClusters().GetClusters() {
				r.clusters[w.GetName()] = true
			}
		}
	case tc.MessageIs(&hcmv3.HttpConnectionManager{}):
		hcm := &hcmv3.HttpConnectionManager{}
		if tc.UnmarshalTo(hcm) == nil && hcm.GetRds() != nil {
			r.routes[hcm.GetRds().GetRouteConfigName()] = true
		}
	}
}

// transport records the SDS secrets of a TLS transport socket.
func (r *refs) transport(owner string, ts *corev3.TransportSocket) {
	tc := ts.GetTypedConfig()
	if tc == nil || !r.withSecrets || r.seen[tc] {
		return
	}
	r.seen[tc] = true
	var common *tlsv3.CommonTlsContext
	switch {
	case tc.MessageIs(&tlsv3.UpstreamTlsContext{}):
		u := &tlsv3.UpstreamTlsContext{}
		if err := tc.UnmarshalTo(u); err != nil {
			r.errs = append(r.errs, fmt.Errorf("%s: transport socket: %w", owner, err))
			return
		}
		common = u.GetCommonTlsContext()
	case tc.MessageIs(&tlsv3.DownstreamTlsContext{}):
		d := &tlsv3.DownstreamTlsContext{}
		if err := tc.UnmarshalTo(d); err != nil {
			r.errs = append(r.errs, fmt.Errorf("%s: transport socket: %w", owner, err))
			return
		}
		common = d.GetCommonTlsContext()
	default:
		return
	}
	if err := common.Validate(); err != nil {
		r.errs = append(r.errs, fmt.Errorf("%s: tls context: %w", owner, err))
	}
	for _, s := range common.GetTlsCertificateSdsSecretConfigs() {
		r.secrets[s.GetName()] = true
	}
	if s := common.GetValidationContextSdsSecretConfig(); s != nil {
		r.secrets[s.GetName()] = true
	}
	if s := common.GetCombinedValidationContext().GetValidationContextSdsSecretConfig(); s != nil {
		r.secrets[s.GetName()] = true
	}
}

// SecretNames lists, sorted, every SDS secret nc's listeners and clusters
// refer to: what the node must receive over SDS.
func SecretNames(nc *translate.NodeConfig) []string {
	r := collect(nc, true)
	out := make([]string, 0, len(r.secrets))
	for n := range r.secrets {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// CheckSecrets is translate.Check's reference check for SDS: every secret
// nc refers to must be among have (what the node is served), and every TLS
// transport socket must decode and validate. It also checks what
// translate.Check leaves alone: no two filter chains of a listener have the
// same match once source ranges and transport protocols count (Envoy
// rejects such a listener), and the transport socket selection of clusters
// and the identities chains set decode, validate and fit together.
func CheckSecrets(nc *translate.NodeConfig, have []string) error {
	r := collect(nc, true)
	errs := r.errs
	errs = append(errs, uniqueChainMatches(nc)...)
	errs = append(errs, selectionErrors(nc)...)
	got := map[string]bool{}
	for _, h := range have {
		got[h] = true
	}
	for n := range r.secrets {
		if !got[n] {
			errs = append(errs, fmt.Errorf("secret %q is referenced but not served to node %q", n, nc.Proxy.Node))
		}
	}
	return errors.Join(errs...)
}

func uniqueChainMatches(nc *translate.NodeConfig) []error {
	var errs []error
	opts := proto.MarshalOptions{Deterministic: true}
	for _, l := range nc.Listeners {
		seen := map[string]string{}
		for _, fc := range l.GetFilterChains() {
			b, err := opts.Marshal(fc.GetFilterChainMatch())
			if err != nil {
				errs = append(errs, fmt.Errorf("listener %s chain %s: %w", l.GetName(), fc.GetName(), err))
				continue
			}
			if other, dup := seen[string(b)]; dup {
				errs = append(errs, fmt.Errorf("listener %s: filter chains %s and %s have the same match", l.GetName(), other, fc.GetName()))
			}
			seen[string(b)] = fc.GetName()
		}
	}
	return errs
}
