package translate

import (
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/nodemesh/nodemesh/config"
)

// Consistent hashing (Istio's loadBalancer.consistentHash): the cluster
// balances with a hash ring, and the routes to it say what to hash.

type consistentHash struct {
	Header      string
	Cookie      string
	CookiePath  string
	CookieTTL   time.Duration
	SourceIP    bool
	QueryParam  string
	MinRingSize uint64
}

func (m *mesh) consistentHash(o *config.Object, field string, ch *networking.LoadBalancerSettings_ConsistentHashLB) *consistentHash {
	h := &consistentHash{MinRingSize: ch.GetRingHash().GetMinimumRingSize()}
	if h.MinRingSize == 0 {
		h.MinRingSize = ch.GetMinimumRingSize()
	}
	switch {
	case ch.GetHttpHeaderName() != "":
		h.Header = ch.GetHttpHeaderName()
	case ch.GetHttpCookie() != nil:
		c := ch.GetHttpCookie()
		h.Cookie, h.CookiePath = c.GetName(), c.GetPath()
		if c.GetTtl() != nil && c.GetTtl().CheckValid() == nil {
			h.CookieTTL = c.GetTtl().AsDuration()
		}
	case ch.GetUseSourceIp():
		h.SourceIP = true
	case ch.GetHttpQueryParameterName() != "":
		h.QueryParam = ch.GetHttpQueryParameterName()
	default:
		m.diags.Errorf(o, field, "consistentHash needs httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName; using round robin")
		return nil
	}
	if ch.GetMaglev() != nil {
		m.diags.Infof(o, field+".maglev", "maglev is not supported; using a hash ring")
	}
	return h
}

// applyRingHash makes a cluster balance with a hash ring.
func applyRingHash(c *clusterv3.Cluster, h *consistentHash) {
	c.LbPolicy = clusterv3.Cluster_RING_HASH
	if h.MinRingSize > 0 {
		c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{
			MinimumRingSize: wrapperspb.UInt64(h.MinRingSize),
		}}
	}
}

// hashPolicy is what a route to a hash-ring cluster hashes on.
func hashPolicy(h *consistentHash) *routev3.RouteAction_HashPolicy {
	p := &routev3.RouteAction_HashPolicy{}
	switch {
	case h.Header != "":
		p.PolicySpecifier = &routev3.RouteAction_HashPolicy_Header_{Header: &routev3.RouteAction_HashPolicy_Header{HeaderName: h.Header}}
	case h.Cookie != "":
		c := &routev3.RouteAction_HashPolicy_Cookie{Name: h.Cookie, Path: h.CookiePath}
		if h.CookieTTL > 0 {
			c.Ttl = durationpb.New(h.CookieTTL)
		}
		p.PolicySpecifier = &routev3.RouteAction_HashPolicy_Cookie_{Cookie: c}
	case h.SourceIP:
		p.PolicySpecifier = &routev3.RouteAction_HashPolicy_ConnectionProperties_{
			ConnectionProperties: &routev3.RouteAction_HashPolicy_ConnectionProperties{SourceIp: true}}
	default:
		p.PolicySpecifier = &routev3.RouteAction_HashPolicy_QueryParameter_{
			QueryParameter: &routev3.RouteAction_HashPolicy_QueryParameter{Name: h.QueryParam}}
	}
	return p
}
