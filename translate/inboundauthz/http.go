package inboundauthz

import (
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/nodemesh/nodemesh/translate/authz"
)

const (
	httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	// SystemCAFile verifies the servers remote JWKS are fetched from
	// (https jwksUri), on the node proxy's machine.
	SystemCAFile       = "/etc/ssl/certs/ca-certificates.crt"
	jwksConnectTimeout = 5 * time.Second
)

// withHCM replaces the chain's tcp_proxy with an HTTP connection manager
// running filters, then the router; the transport socket and whatever
// precedes tcp_proxy (a connection limit) stay.
func withHCM(fc *listenerv3.FilterChain, ns string, filters []*hcmv3.HttpFilter) *listenerv3.FilterChain {
	hf := make([]*hcmv3.HttpFilter, 0, len(filters)+1)
	for _, f := range filters {
		hf = append(hf, proto.Clone(f).(*hcmv3.HttpFilter))
	}
	hf = append(hf, &hcmv3.HttpFilter{Name: wellknown.Router,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})}})
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: listenerPrefix + ns,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsConfigSource(),
			RouteConfigName: RouteName(ns),
		}},
		HttpFilters: hf,
		// Istio's default (BASE): RBAC path rules see the normalised path,
		// so "/info/../admin" cannot slip past a rule on "/admin".
		NormalizePath: wrapperspb.Bool(true),
		// The workload sees who called it, as behind an Istio sidecar.
		ForwardClientCertDetails: hcmv3.HttpConnectionManager_APPEND_FORWARD,
		SetCurrentClientCertDetails: &hcmv3.HttpConnectionManager_SetCurrentClientCertDetails{
			Subject: wrapperspb.Bool(true), Uri: true, Dns: true},
		UpgradeConfigs: []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}},
	}
	n := len(fc.Filters)
	fc.Filters[n-1] = &listenerv3.Filter{Name: wellknown.HTTPConnectionManager,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)}}
	return fc
}

// routeConfig sends every request of the namespace's inbound HTTP
// connection managers to its original destination: the pod the connection
// was for.
func routeConfig(ns string) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: RouteName(ns),
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    RouteName(ns),
			Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Name:  "default",
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: ClusterName(ns)},
					Timeout:          durationpb.New(0), // no timeout, as Istio's inbound routes
				}},
			}},
		}},
		ValidateClusters: wrapperspb.Bool(false),
	}
}

// downstreamProtocol returns a copy of the original destination cluster
// that speaks the downstream's HTTP protocol upstream.
func downstreamProtocol(c *clusterv3.Cluster) *clusterv3.Cluster {
	cp := proto.Clone(c).(*clusterv3.Cluster)
	if cp.TypedExtensionProtocolOptions == nil {
		cp.TypedExtensionProtocolOptions = map[string]*anypb.Any{}
	}
	cp.TypedExtensionProtocolOptions[httpProtocolOptionsKey] = mustAny(&httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
			UseDownstreamProtocolConfig: &httpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
				HttpProtocolOptions:  &corev3.Http1ProtocolOptions{},
				Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
			},
		},
	})
	return cp
}

// jwksCluster reaches a JWKS server by DNS; over https it checks the
// server's certificate against the system roots and its name.
func jwksCluster(j authz.JWKSCluster) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                 j.Name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS},
		ConnectTimeout:       durationpb.New(jwksConnectTimeout),
		DnsLookupFamily:      clusterv3.Cluster_V4_PREFERRED,
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: j.Name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address: j.Host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: j.Port}}}},
				}},
			}}}},
		},
	}
	if j.TLS {
		c.TransportSocket = &corev3.TransportSocket{Name: wellknown.TransportSocketTLS,
			ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(&tlsv3.UpstreamTlsContext{
				Sni: j.Host,
				CommonTlsContext: &tlsv3.CommonTlsContext{ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{
					ValidationContext: &tlsv3.CertificateValidationContext{
						TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: SystemCAFile}},
						MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
							SanType: tlsv3.SubjectAltNameMatcher_DNS,
							Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: j.Host}},
						}},
					}}},
			})}}
	}
	return c
}

func adsConfigSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic("inboundauthz: marshal " + string(m.ProtoReflect().Descriptor().FullName()) + ": " + err.Error())
	}
	return a
}
