package secure

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func mustAny(m proto.Message) *anypb.Any {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic("secure: marshal " + string(m.ProtoReflect().Descriptor().FullName()) + ": " + err.Error())
	}
	return &anypb.Any{TypeUrl: "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName()), Value: b}
}

func adsConfigSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}

func sds(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: adsConfigSource()}
}

func transportSocket(m proto.Message) *corev3.TransportSocket {
	return &corev3.TransportSocket{
		Name:       wellknown.TransportSocketTLS,
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(m)},
	}
}

// peerMatcher accepts SPIFFE IDs: exactly one of ids, or (when ids is
// empty) any ID under prefix.
type peerMatcher struct {
	ids    []spiffeid.ID
	prefix string
}

func (p peerMatcher) typed() []*tlsv3.SubjectAltNameMatcher {
	var out []*tlsv3.SubjectAltNameMatcher
	for _, m := range p.strings() {
		out = append(out, &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: m})
	}
	return out
}

func (p peerMatcher) strings() []*matcherv3.StringMatcher {
	if len(p.ids) == 0 {
		return []*matcherv3.StringMatcher{{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: p.prefix}}}
	}
	var out []*matcherv3.StringMatcher
	for _, id := range p.ids {
		out = append(out, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id.String()}})
	}
	return out
}

// trustDomainPrefix matches every ID of td ("spiffe://td/").
func trustDomainPrefix(td spiffeid.TrustDomain) string { return td.IDString() + "/" }

// namespacePrefix matches every service account of a namespace
// ("spiffe://td/ns/<ns>/sa/"), built from a typed ID.
func namespacePrefix(td spiffeid.TrustDomain, ns string) string {
	id, err := spiffeid.FromSegments(td, "ns", ns, "sa")
	if err != nil {
		return trustDomainPrefix(td) // unreachable for valid namespaces
	}
	return id.String() + "/"
}

// sdsCommon presents id's SVID and validates the peer against the trust
// bundle and match, all over SDS (Envoy).
func sdsCommon(id spiffeid.ID, match peerMatcher) *tlsv3.CommonTlsContext {
	return &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sds(SecretName(id))},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: match.typed()},
				ValidationContextSdsSecretConfig: sds(BundleSecretName(id.TrustDomain())),
			},
		},
	}
}

// upstreamSDS is the client side of a mesh connection from a shared Envoy
// speaking for workload id.
func upstreamSDS(id spiffeid.ID, match peerMatcher) *corev3.TransportSocket {
	return transportSocket(&tlsv3.UpstreamTlsContext{CommonTlsContext: sdsCommon(id, match)})
}

// downstreamSDS terminates mTLS for workload id, requiring a client
// certificate of its trust domain.
func downstreamSDS(id spiffeid.ID) *corev3.TransportSocket {
	return transportSocket(&tlsv3.DownstreamTlsContext{
		CommonTlsContext:         sdsCommon(id, peerMatcher{prefix: trustDomainPrefix(id.TrustDomain())}),
		RequireClientCertificate: wrapperspb.Bool(true),
	})
}

// providerCommon names gRPC certificate provider instances for the
// identity and the roots (gRPC has no SDS).
func providerCommon(instance string, sans []*matcherv3.StringMatcher) *tlsv3.CommonTlsContext {
	return &tlsv3.CommonTlsContext{
		TlsCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: instance},
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			CaCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: instance},
			MatchSubjectAltNames:          sans,
		}},
	}
}

// upstreamProvider is a proxyless gRPC client's cluster TLS.
func upstreamProvider(instance string, match peerMatcher) *corev3.TransportSocket {
	return transportSocket(&tlsv3.UpstreamTlsContext{CommonTlsContext: providerCommon(instance, match.strings())})
}

// DownstreamProvider is the TLS of a proxyless gRPC server's inbound filter
// chain: certificates from the gRPC certificate provider instance, a client
// certificate required (gRPC servers accept no SAN matchers; authorise
// peers with RBAC principals instead).
func DownstreamProvider(instance string) *corev3.TransportSocket {
	return transportSocket(&tlsv3.DownstreamTlsContext{
		CommonTlsContext:         providerCommon(instance, nil),
		RequireClientCertificate: wrapperspb.Bool(true),
	})
}
