package translate

import (
	"strconv"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

const (
	// PassthroughCluster forwards outbound traffic to unknown destinations
	// to where the client meant to go (Istio's ALLOW_ANY).
	PassthroughCluster = "PassthroughCluster"
	// BlackHoleCluster has no endpoints: traffic to unknown destinations
	// of a REGISTRY_ONLY namespace ends there.
	BlackHoleCluster = "BlackHoleCluster"
	// defaultConnectTimeout is Istio's default.
	defaultConnectTimeout  = 10 * time.Second
	httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// clusterRef is one EDS cluster a node needs: a service port, maybe a
// subset, with the traffic policy of the DestinationRule that applies.
type clusterRef struct {
	Name   string
	svc    *service
	port   servicePort
	subset string
	labels map[string]string // subset labels; nil for the whole service
	policy trafficPolicy
	dr     *destinationRule // where labels and policy came from; nil if none
	// cacheKey is Name, plus the DestinationRule's key when there is one.
	cacheKey string
}

// key identifies what a cluster is built from: its name and the
// DestinationRule that decided its policy and subset labels.
func (r *clusterRef) key() string { return r.cacheKey }

// clusterSet collects the clusters wanted while building listeners and
// routes, so that a node gets exactly the clusters it references.
type clusterSet struct {
	byName map[string]*clusterRef
}

func newClusterSet() *clusterSet { return &clusterSet{byName: map[string]*clusterRef{}} }

// clusterName is Istio's name: outbound|<port>|<subset>|<host>.
func clusterName(host string, port uint32, subset string) string {
	return "outbound|" + strconv.FormatUint(uint64(port), 10) + "|" + subset + "|" + host
}

// want records that the scope's namespace uses a cluster and returns its
// name. On a node, the first namespace (in sorted order) to want a cluster
// decides its DestinationRule policy; DestinationRules that differ per
// client namespace for the same host are not supported on a shared node
// proxy.
func (cs *clusterSet) want(s *scope, svc *service, sp servicePort, subsetName string) string {
	name := clusterName(svc.Hostname, sp.Port, subsetName)
	if _, ok := cs.byName[name]; ok {
		return name
	}
	ref := &clusterRef{Name: name, svc: svc, port: sp, subset: subsetName}
	if dr := s.m.destinationRuleFor(svc.Hostname, svc.Namespace, s.ns); dr != nil {
		ref.dr = dr
		ref.policy = dr.Policy
		if sub, ok := dr.subset(subsetName); ok {
			ref.labels = sub.Labels
			ref.policy = sub.Policy
		}
	}
	ref.cacheKey = name
	if ref.dr != nil {
		ref.cacheKey += "\x00" + ref.dr.obj.Key.String()
	}
	cs.byName[name] = ref
	return name
}

// edsCluster builds the EDS cluster of a clusterRef.
func edsCluster(ref *clusterRef, kind ProxyKind) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                 ref.Name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsConfigSource()},
		ConnectTimeout:       durationpb.New(defaultConnectTimeout),
	}
	applyPolicy(c, ref.policy, kind)
	if kind == SharedEnvoy {
		applyHTTPOptions(c, ref.port.Protocol, ref.policy)
	}
	return c
}

// dnsCluster is the cluster of a ServiceEntry with DNS resolution: Envoy
// resolves every address (STRICT_DNS); gRPC only knows LOGICAL_DNS with a
// single address, so it gets the first one.
func dnsCluster(ref *clusterRef, cla *endpointv3.ClusterLoadAssignment, kind ProxyKind) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                 ref.Name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS},
		ConnectTimeout:       durationpb.New(defaultConnectTimeout),
		DnsLookupFamily:      clusterv3.Cluster_V4_PREFERRED,
		LoadAssignment:       cla,
	}
	if kind == ProxylessGRPC {
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_LOGICAL_DNS}
		if eps := cla.GetEndpoints(); len(eps) > 0 && len(eps[0].GetLbEndpoints()) > 1 {
			one := proto.Clone(cla).(*endpointv3.ClusterLoadAssignment)
			one.Endpoints[0].LbEndpoints = one.Endpoints[0].LbEndpoints[:1]
			c.LoadAssignment = one
		}
	}
	applyPolicy(c, ref.policy, kind)
	if kind == SharedEnvoy {
		applyHTTPOptions(c, ref.port.Protocol, ref.policy)
	}
	return c
}

// applyPolicy sets load balancing, connect timeout and circuit breakers.
func applyPolicy(c *clusterv3.Cluster, p trafficPolicy, kind ProxyKind) {
	switch p.LB {
	case lbLeastRequest:
		c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
	case lbRandom:
		if kind == SharedEnvoy { // gRPC rejects RANDOM
			c.LbPolicy = clusterv3.Cluster_RANDOM
		}
	}
	if p.Hash != nil {
		applyRingHash(c, p.Hash)
	}
	if p.ConnectTimeout > 0 {
		c.ConnectTimeout = durationpb.New(p.ConnectTimeout)
	}
	t := &clusterv3.CircuitBreakers_Thresholds{}
	set := false
	for _, f := range []struct {
		v   uint32
		dst **wrapperspb.UInt32Value
	}{
		{p.MaxConnections, &t.MaxConnections},
		{p.MaxPendingRequests, &t.MaxPendingRequests},
		{p.MaxRequests, &t.MaxRequests},
		{p.MaxRetries, &t.MaxRetries},
	} {
		if f.v > 0 {
			*f.dst = wrapperspb.UInt32(f.v)
			set = true
		}
	}
	if set {
		c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{t}}
	}
	if od := p.Outlier; od != nil {
		c.OutlierDetection = outlierDetectionConfig(od)
	}
}

// outlierDetectionConfig maps Istio's outlier detection as Istio does:
// a consecutive error count enforces ejection at 100% when non-zero, and
// success-rate ejection is off.
func outlierDetectionConfig(od *outlierDetection) *clusterv3.OutlierDetection {
	enforce := func(n uint32) *wrapperspb.UInt32Value {
		if n > 0 {
			return wrapperspb.UInt32(100)
		}
		return wrapperspb.UInt32(0)
	}
	out := &clusterv3.OutlierDetection{EnforcingSuccessRate: wrapperspb.UInt32(0)}
	if n := od.Consecutive5xx; n != nil {
		out.Consecutive_5Xx = wrapperspb.UInt32(*n)
		out.EnforcingConsecutive_5Xx = enforce(*n)
	}
	if n := od.ConsecutiveGateway; n != nil {
		out.ConsecutiveGatewayFailure = wrapperspb.UInt32(*n)
		out.EnforcingConsecutiveGatewayFailure = enforce(*n)
	}
	if od.Interval > 0 {
		out.Interval = durationpb.New(od.Interval)
	}
	if od.BaseEjectionTime > 0 {
		out.BaseEjectionTime = durationpb.New(od.BaseEjectionTime)
	}
	if od.MaxEjectionPercent > 0 {
		out.MaxEjectionPercent = wrapperspb.UInt32(od.MaxEjectionPercent)
	}
	return out
}

// applyHTTPOptions makes Envoy speak HTTP/2 upstream to HTTP/2 and gRPC
// ports and applies maxRequestsPerConnection.
func applyHTTPOptions(c *clusterv3.Cluster, proto protocol, p trafficPolicy) {
	if proto != protoHTTP2 && p.MaxRequestsPerConnect == 0 {
		return
	}
	opts := &httpv3.HttpProtocolOptions{}
	explicit := &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
		ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &corev3.Http1ProtocolOptions{}},
	}
	if proto == protoHTTP2 {
		explicit.ProtocolConfig = &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}}
	}
	opts.UpstreamProtocolOptions = &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: explicit}
	if p.MaxRequestsPerConnect > 0 {
		opts.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{MaxRequestsPerConnection: wrapperspb.UInt32(p.MaxRequestsPerConnect)}
	}
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptionsKey: mustAny(opts)}
}

// originalDstCluster forwards to the connection's original destination.
func originalDstCluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(defaultConnectTimeout),
	}
}

// blackHoleCluster is a static cluster without endpoints.
func blackHoleCluster() *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 BlackHoleCluster,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(defaultConnectTimeout),
	}
}

func adsConfigSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}
