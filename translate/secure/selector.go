package secure

import (
	xdscorev3 "github.com/cncf/xds/go/xds/core/v3"
	xdsmatcherv3 "github.com/cncf/xds/go/xds/type/matcher/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	setfsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/set_filter_state/v3"
	netsetfsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/set_filter_state/v3"
	tsinputv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/matching/common_inputs/transport_socket/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
)

// How a split outbound chain tells the one shared cluster of a destination
// whose certificate to present (see the package documentation for why this
// is safe):
const (
	// SourceIdentityKey is the filter state object every split outbound
	// chain sets to the SPIFFE ID of its source service account, shared
	// with the upstream connection.
	SourceIdentityKey = "io.nodemesh.source_identity"
	// HashableStringFactory builds the object: a string that implements
	// Envoy's Hashable, so the value is part of the upstream connection
	// pool key (envoy.string is not, and would let a connection opened
	// with one account's certificate carry another account's requests).
	HashableStringFactory = "envoy.hashable_string"
	// SetFilterStateFilter is the network filter that sets it.
	SetFilterStateFilter = "envoy.filters.network.set_filter_state"
	// FilterStateInput reads it in a cluster's transport_socket_matcher.
	FilterStateInput = "envoy.matching.inputs.transport_socket_filter_state"
	// SocketNameAction names the transport socket the matcher picks.
	SocketNameAction = "envoy.matching.action.transport_socket.name"
	// PlaintextSocket is the transport socket match of accounts whose
	// namespace reaches the destination in plaintext (a DestinationRule).
	PlaintextSocket = "plaintext"
)

// SocketName is the name of the transport socket match presenting id's
// SVID: "<namespace>/<service account>".
func SocketName(id spiffeid.ID) string {
	ns, sa := nsSA(id)
	return ns + "/" + sa
}

// setIdentityFilter is the first filter of a split chain of account id.
func setIdentityFilter(id spiffeid.ID) *listenerv3.Filter {
	cfg := &netsetfsv3.Config{OnNewConnection: []*setfsv3.FilterStateValue{{
		Key:        &setfsv3.FilterStateValue_ObjectKey{ObjectKey: SourceIdentityKey},
		FactoryKey: HashableStringFactory,
		Value: &setfsv3.FilterStateValue_FormatString{FormatString: &corev3.SubstitutionFormatString{
			// A SPIFFE ID has no '%': the format string is the ID itself.
			Format: &corev3.SubstitutionFormatString_TextFormatSource{TextFormatSource: &corev3.DataSource{
				Specifier: &corev3.DataSource_InlineString{InlineString: id.String()},
			}},
		}},
		SharedWithUpstream: setfsv3.FilterStateValue_ONCE,
	}}}
	return &listenerv3.Filter{Name: SetFilterStateFilter, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(cfg)}}
}

// socketChoice is how one account reaches a destination: its own SVID, or
// plaintext.
type socketChoice struct {
	id        spiffeid.ID
	plaintext bool
}

// selectingCluster is orig with one transport socket match per account
// and a matcher picking it by the source identity. A connection that
// carries no (or an unknown) identity gets the cluster's default socket:
// TLS that presents no certificate, which mesh servers refuse.
func (m *nodeModel) selectingCluster(orig *clusterv3.Cluster, d destination, choices []socketChoice) *clusterv3.Cluster {
	c := proto.Clone(orig).(*clusterv3.Cluster)
	c.TransportSocket = m.shared.socket("none|"+d.key, func() *corev3.TransportSocket { return upstreamNoIdentity(m.opts.TrustDomain, d.peers) })
	tree := map[string]*xdsmatcherv3.Matcher_OnMatch{}
	plain := false
	for _, ch := range choices {
		if ch.plaintext {
			tree[ch.id.String()] = m.shared.action(PlaintextSocket)
			plain = true
			continue
		}
		name := SocketName(ch.id)
		tree[ch.id.String()] = m.shared.action(name)
		c.TransportSocketMatches = append(c.TransportSocketMatches, &clusterv3.Cluster_TransportSocketMatch{
			Name: name, TransportSocket: m.upstreamSocket(ch.id, d),
		})
	}
	if plain {
		c.TransportSocketMatches = append(c.TransportSocketMatches, &clusterv3.Cluster_TransportSocketMatch{
			Name: PlaintextSocket, TransportSocket: m.shared.socket(PlaintextSocket, rawBuffer),
		})
	}
	c.TransportSocketMatcher = &xdsmatcherv3.Matcher{MatcherType: &xdsmatcherv3.Matcher_MatcherTree_{MatcherTree: &xdsmatcherv3.Matcher_MatcherTree{
		Input: &xdscorev3.TypedExtensionConfig{Name: FilterStateInput, TypedConfig: m.shared.input()},
		TreeType: &xdsmatcherv3.Matcher_MatcherTree_ExactMatchMap{ExactMatchMap: &xdsmatcherv3.Matcher_MatcherTree_MatchMap{
			Map: tree,
		}},
	}}}
	return c
}

func rawBuffer() *corev3.TransportSocket {
	return &corev3.TransportSocket{
		Name:       "envoy.transport_sockets.raw_buffer",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(&rawbufferv3.RawBuffer{})},
	}
}

// upstreamNoIdentity checks the server like upstreamSDS but presents no
// certificate.
func upstreamNoIdentity(td spiffeid.TrustDomain, match peerMatcher) *corev3.TransportSocket {
	return transportSocket(&tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: match.typed()},
				ValidationContextSdsSecretConfig: sds(BundleSecretName(td)),
			},
		},
	}})
}

func filterStateInput() *tsinputv3.FilterStateInput {
	return &tsinputv3.FilterStateInput{Key: SourceIdentityKey}
}

func socketAction(name string) *xdsmatcherv3.Matcher_OnMatch {
	return &xdsmatcherv3.Matcher_OnMatch{OnMatch: &xdsmatcherv3.Matcher_OnMatch_Action{Action: &xdscorev3.TypedExtensionConfig{
		Name: SocketNameAction, TypedConfig: mustAny(&tsinputv3.TransportSocketNameAction{Name: name}),
	}}}
}
