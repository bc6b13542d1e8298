package secure

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	setfsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/set_filter_state/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netsetfsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/set_filter_state/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tsinputv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/matching/common_inputs/transport_socket/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
)

// reviewsOdd adds a pod of another service account to node-a, so two
// accounts share the node's Envoy and the same destination clusters.
const reviewsOdd = `apiVersion: v1
kind: Pod
metadata: {name: reviews-odd, namespace: default, labels: {app: reviews, version: v1}}
spec: {nodeName: node-a, serviceAccountName: odd-one, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.1.0.99}
`

// owners maps every pod address to its workload identity, computed here
// from the pods themselves.
func owners(t *testing.T, snap *config.Snapshot) map[netip.Addr]string {
	t.Helper()
	owner := map[netip.Addr]string{}
	for _, o := range snap.List(config.KindPod) {
		pod := o.Spec.(*corev1.Pod)
		if pod.Status.PodIP == "" {
			continue
		}
		id, err := WorkloadID(td, o.Namespace, pod.Spec.ServiceAccountName)
		if err != nil {
			t.Fatal(err)
		}
		owner[netip.MustParseAddr(pod.Status.PodIP)] = id.String()
	}
	return owner
}

// A workload's traffic is never sent under another workload's identity.
// This reads the generated config the way Envoy runs it: for every
// outbound filter chain, the source addresses it matches, the identity it
// stores in filter state, and for every cluster it can reach, the
// transport socket that cluster's matcher selects for that identity. The
// certificate that socket presents must be the SVID of every source
// address of the chain, a chain matching any source must select none, and
// the identity must be a hashable object (it keys the connection pool).
func TestNoTrafficUnderAnotherIdentity(t *testing.T) {
	for name, yaml := range goldenCases {
		snap := decode(t, yaml+"---\n"+reviewsOdd)
		owner := owners(t, snap)
		for mode, opts := range goldenModes {
			for _, node := range []string{"node-a", "node-b"} {
				t.Run(mode+"/"+name+"/"+node, func(t *testing.T) {
					nc, _ := securedWith(t, snap, translate.Proxy{Node: node}, opts)
					checked, errs := identityViolations(nc, owner)
					for _, err := range errs {
						t.Error(err)
					}
					if name != "disable" && checked == 0 {
						t.Fatal("no chain reaches a cluster presenting a certificate; the test checked nothing")
					}
				})
			}
		}
	}
}

// The check above fails when the mapping from source to certificate is
// broken on purpose: a cluster's matcher sending one account's identity to
// another account's socket, a chain claiming another account's identity,
// or an identity object that is not hashable.
func TestIdentityCheckCatchesBrokenMappings(t *testing.T) {
	snap := decode(t, reviewsOdd)
	owner := owners(t, snap)
	reviews, odd := sa(t, "bookinfo-reviews"), sa(t, "odd-one")
	for _, tc := range []struct {
		name   string
		break_ func(t *testing.T, nc *translate.NodeConfig)
		want   string
	}{
		{"matcher swaps two accounts", func(t *testing.T, nc *translate.NodeConfig) {
			editClusters(t, nc, func(c *clusterv3.Cluster) bool {
				m := c.GetTransportSocketMatcher().GetMatcherTree().GetExactMatchMap().GetMap()
				if m[reviews] == nil || m[odd] == nil {
					return false
				}
				m[reviews], m[odd] = m[odd], m[reviews]
				return true
			})
		}, "would be sent as " + odd},
		{"socket renamed to another account's", func(t *testing.T, nc *translate.NodeConfig) {
			editClusters(t, nc, func(c *clusterv3.Cluster) bool {
				for _, tm := range c.GetTransportSocketMatches() {
					if tm.GetName() == "default/odd-one" {
						tm.TransportSocket = upstreamSDS(mustID(t, reviews), peerMatcher{prefix: "spiffe://cluster.local/"})
						return true
					}
				}
				return false
			})
		}, "would be sent as " + reviews},
		{"chain claims another identity", func(t *testing.T, nc *translate.NodeConfig) {
			editIdentity(t, nc, odd, func(v *setfsv3.FilterStateValue) {
				v.Value = &setfsv3.FilterStateValue_FormatString{FormatString: &corev3.SubstitutionFormatString{
					Format: &corev3.SubstitutionFormatString_TextFormatSource{TextFormatSource: &corev3.DataSource{
						Specifier: &corev3.DataSource_InlineString{InlineString: reviews}}}}}
			})
		}, "would be sent as " + reviews},
		{"identity not hashable", func(t *testing.T, nc *translate.NodeConfig) {
			editIdentity(t, nc, odd, func(v *setfsv3.FilterStateValue) { v.FactoryKey = "envoy.string" })
		}, "not part of the connection pool key"},
		{"identity not shared with the upstream", func(t *testing.T, nc *translate.NodeConfig) {
			editIdentity(t, nc, odd, func(v *setfsv3.FilterStateValue) { v.SharedWithUpstream = setfsv3.FilterStateValue_NONE })
		}, "not shared with the upstream"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc, _ := secured(t, snap, translate.Proxy{Node: "node-a"})
			if _, errs := identityViolations(nc, owner); len(errs) != 0 {
				t.Fatalf("the unbroken config already fails: %v", errors.Join(errs...))
			}
			tc.break_(t, nc)
			_, errs := identityViolations(nc, owner)
			if err := errors.Join(errs...); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("broken mapping: got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func mustID(t *testing.T, s string) spiffeid.ID {
	t.Helper()
	id, err := spiffeid.FromString(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// editClusters replaces the clusters edit changes with edited copies (the
// originals are shared) and fails when it changed none.
func editClusters(t *testing.T, nc *translate.NodeConfig, edit func(*clusterv3.Cluster) bool) {
	t.Helper()
	n := 0
	for i, c := range nc.Clusters {
		cp := proto.Clone(c).(*clusterv3.Cluster)
		if edit(cp) {
			nc.Clusters[i] = cp
			n++
		}
	}
	if n == 0 {
		t.Fatal("nothing to break")
	}
}

// editIdentity edits the identity value of the outbound chains of account
// id.
func editIdentity(t *testing.T, nc *translate.NodeConfig, id string, edit func(*setfsv3.FilterStateValue)) {
	t.Helper()
	n := 0
	for i, l := range nc.Listeners {
		if l.GetTrafficDirection() != corev3.TrafficDirection_OUTBOUND {
			continue
		}
		l = proto.Clone(l).(*listenerv3.Listener)
		nc.Listeners[i] = l
		for _, fc := range l.GetFilterChains() {
			f := fc.GetFilters()[0]
			cfg := &netsetfsv3.Config{}
			if f.GetName() != SetFilterStateFilter || f.GetTypedConfig().UnmarshalTo(cfg) != nil {
				continue
			}
			if v := cfg.GetOnNewConnection()[0]; inline(v) == id {
				edit(v)
				f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(cfg)}
				n++
			}
		}
	}
	if n == 0 {
		t.Fatalf("no chain of %s", id)
	}
}

func inline(v *setfsv3.FilterStateValue) string {
	return v.GetFormatString().GetTextFormatSource().GetInlineString()
}

// identityViolations checks every outbound chain of nc (see
// TestNoTrafficUnderAnotherIdentity) and counts the chain-cluster pairs
// that present a certificate.
func identityViolations(nc *translate.NodeConfig, owner map[netip.Addr]string) (int, []error) {
	clusters := map[string]*clusterv3.Cluster{}
	for _, c := range nc.Clusters {
		clusters[c.GetName()] = c
	}
	routes := map[string]*routev3.RouteConfiguration{}
	for _, r := range nc.Routes {
		routes[r.GetName()] = r
	}
	var errs []error
	checked := 0
	for _, l := range nc.Listeners {
		if l.GetTrafficDirection() != corev3.TrafficDirection_OUTBOUND {
			continue
		}
		chains := append([]*listenerv3.FilterChain{l.GetDefaultFilterChain()}, l.GetFilterChains()...)
		for _, fc := range chains {
			if fc == nil {
				continue
			}
			var sources []string
			for _, r := range fc.GetFilterChainMatch().GetSourcePrefixRanges() {
				p := netip.PrefixFrom(netip.MustParseAddr(r.GetAddressPrefix()), int(r.GetPrefixLen().GetValue()))
				if !p.IsSingleIP() {
					errs = append(errs, fmt.Errorf("chain %s matches source range %s, wider than one pod", fc.GetName(), p))
				}
				sources = append(sources, owner[p.Addr()])
			}
			state, err := chainIdentity(fc)
			if err != nil {
				errs = append(errs, err)
			}
			cls, err := reachable(fc, routes)
			if err != nil {
				errs = append(errs, err)
			}
			for _, cl := range cls {
				c := clusters[cl]
				if c == nil {
					errs = append(errs, fmt.Errorf("chain %s reaches missing cluster %s", fc.GetName(), cl))
					continue
				}
				secret, err := selected(c, state)
				if err != nil {
					errs = append(errs, err)
				}
				if secret == "" {
					continue
				}
				checked++
				if len(sources) == 0 {
					errs = append(errs, fmt.Errorf("chain %s matches any source but cluster %s presents %s", fc.GetName(), cl, secret))
				}
				for i, s := range sources {
					if s != secret {
						errs = append(errs, fmt.Errorf("chain %s: source %s (%s) would be sent as %s through %s", fc.GetName(),
							fc.GetFilterChainMatch().GetSourcePrefixRanges()[i].GetAddressPrefix(), s, secret, cl))
					}
				}
			}
		}
	}
	return checked, errs
}

// chainIdentity is the identity a chain stores for the upstream ("" when
// none), and an error when it is stored in a way that is not safe: not
// shared with the upstream connection (the matcher would not see it) or
// not hashable (the connection pool would not be keyed by it, so a
// connection opened with one identity's certificate could carry another
// identity's requests).
func chainIdentity(fc *listenerv3.FilterChain) (string, error) {
	id := ""
	for i, f := range fc.GetFilters() {
		cfg := &netsetfsv3.Config{}
		if !f.GetTypedConfig().MessageIs(cfg) {
			continue
		}
		if err := f.GetTypedConfig().UnmarshalTo(cfg); err != nil {
			return "", fmt.Errorf("chain %s: %w", fc.GetName(), err)
		}
		if i != 0 {
			return "", fmt.Errorf("chain %s: set_filter_state is filter %d, not the first", fc.GetName(), i)
		}
		if len(cfg.GetOnDownstreamTlsHandshake())+len(cfg.GetOnDownstreamData()) > 0 {
			return "", fmt.Errorf("chain %s: filter state set after the connection is accepted", fc.GetName())
		}
		for _, v := range cfg.GetOnNewConnection() {
			if v.GetObjectKey() != SourceIdentityKey {
				continue
			}
			if id != "" {
				return "", fmt.Errorf("chain %s sets %s twice", fc.GetName(), SourceIdentityKey)
			}
			id = inline(v)
			if id == "" || strings.Contains(id, "%") {
				return "", fmt.Errorf("chain %s: identity %q is not a constant", fc.GetName(), id)
			}
			if v.GetSharedWithUpstream() == setfsv3.FilterStateValue_NONE {
				return "", fmt.Errorf("chain %s: identity is not shared with the upstream connection", fc.GetName())
			}
			if v.GetFactoryKey() != HashableStringFactory {
				return "", fmt.Errorf("chain %s: identity built by %q is not part of the connection pool key", fc.GetName(), v.GetFactoryKey())
			}
		}
	}
	return id, nil
}

// selected evaluates c's transport socket selection for a connection
// carrying identity ("" for none) as Envoy does and returns the secret the
// chosen socket presents ("" for none or plaintext).
func selected(c *clusterv3.Cluster, identity string) (string, error) {
	m := c.GetTransportSocketMatcher()
	if m == nil {
		return presents(c.GetName(), c.GetTransportSocket())
	}
	tree := m.GetMatcherTree()
	in := &tsinputv3.FilterStateInput{}
	if tree.GetInput().GetTypedConfig().UnmarshalTo(in) != nil || in.GetKey() != SourceIdentityKey {
		return "", fmt.Errorf("cluster %s: matcher input is not the filter state %s", c.GetName(), SourceIdentityKey)
	}
	if tree.GetExactMatchMap() == nil {
		return "", fmt.Errorf("cluster %s: matcher is no exact match map", c.GetName())
	}
	onMatch := m.GetOnNoMatch()
	if identity != "" {
		if om, ok := tree.GetExactMatchMap().GetMap()[identity]; ok {
			onMatch = om
		}
	}
	if onMatch == nil {
		return presents(c.GetName(), c.GetTransportSocket())
	}
	action := &tsinputv3.TransportSocketNameAction{}
	if err := onMatch.GetAction().GetTypedConfig().UnmarshalTo(action); err != nil {
		return "", fmt.Errorf("cluster %s: action: %w", c.GetName(), err)
	}
	for _, tm := range c.GetTransportSocketMatches() {
		if tm.GetName() == action.GetName() {
			return presents(c.GetName(), tm.GetTransportSocket())
		}
	}
	// Envoy falls back to the default socket, with a warning.
	return presents(c.GetName(), c.GetTransportSocket())
}

// presents is the SDS secret a transport socket presents as its client
// certificate ("" for none or plaintext).
func presents(cluster string, ts *corev3.TransportSocket) (string, error) {
	tc := ts.GetTypedConfig()
	u := &tlsv3.UpstreamTlsContext{}
	if tc == nil || !tc.MessageIs(u) {
		return "", nil
	}
	if err := tc.UnmarshalTo(u); err != nil {
		return "", fmt.Errorf("cluster %s: %w", cluster, err)
	}
	certs := u.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs()
	switch len(certs) {
	case 0:
		return "", nil
	case 1:
		return certs[0].GetName(), nil
	}
	return "", fmt.Errorf("cluster %s presents %d certificates", cluster, len(certs))
}

// reachable lists the clusters a filter chain can send to.
func reachable(fc *listenerv3.FilterChain, routes map[string]*routev3.RouteConfiguration) ([]string, error) {
	var out []string
	for _, f := range fc.GetFilters() {
		tc := f.GetTypedConfig()
		switch {
		case tc.MessageIs(&tcpv3.TcpProxy{}):
			tp := &tcpv3.TcpProxy{}
			if err := tc.UnmarshalTo(tp); err != nil {
				return nil, err
			}
			if tp.GetCluster() != "" {
				out = append(out, tp.GetCluster())
			}
			for _, w := range tp.GetWeightedClusters().GetClusters() {
				out = append(out, w.GetName())
			}
		case tc.MessageIs(&hcmv3.HttpConnectionManager{}):
			hcm := &hcmv3.HttpConnectionManager{}
			if err := tc.UnmarshalTo(hcm); err != nil {
				return nil, err
			}
			rc := routes[hcm.GetRds().GetRouteConfigName()]
			if rc == nil {
				return nil, fmt.Errorf("chain %s: route configuration %q missing", fc.GetName(), hcm.GetRds().GetRouteConfigName())
			}
			for _, vh := range rc.GetVirtualHosts() {
				for _, r := range vh.GetRoutes() {
					if c := r.GetRoute().GetCluster(); c != "" {
						out = append(out, c)
					}
					for _, w := range r.GetRoute().GetWeightedClusters().GetClusters() {
						out = append(out, w.GetName())
					}
					for _, mp := range r.GetRoute().GetRequestMirrorPolicies() {
						out = append(out, mp.GetCluster())
					}
				}
			}
		}
	}
	return out, nil
}
