package translate

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// A small evaluator of generated config, in the spirit of Istio's
// pilot/pkg/simulation: it "sends" a request through a NodeConfig the way
// Envoy (or gRPC) would pick a listener, filter chain, virtual host, route
// and cluster, so tests assert behaviour rather than bytes.

type request struct {
	Namespace string // client namespace (SharedEnvoy)
	DestIP    string // original destination address; "" for a name-based (gRPC) call
	Port      uint32
	Host      string // Host/:authority header
	Path      string
	Method    string
	Headers   map[string]string
}

type result struct {
	Listener    string
	FilterChain string
	RouteConfig string
	VirtualHost string
	Route       string
	Clusters    map[string]uint32 // cluster -> weight (one entry with weight 1 for a plain cluster)
	Fault       *faultv3.HTTPFault
	Retries     uint32
	Redirect    *routev3.RedirectAction
	Direct      *routev3.DirectResponseAction
}

func (r result) only() string {
	if len(r.Clusters) != 1 {
		return fmt.Sprintf("<%d clusters>", len(r.Clusters))
	}
	for c := range r.Clusters {
		return c
	}
	return ""
}

// simulate sends req through nc. For SharedEnvoy clients the request enters
// the outbound listener of req.Namespace; for proxyless gRPC the API
// listener named "<host>:<port>" (or just host when req.Port is 0).
func simulate(nc *NodeConfig, req request) (result, error) {
	if req.Path == "" {
		req.Path = "/"
	}
	if req.Method == "" {
		req.Method = "GET"
	}
	if nc.Proxy.Kind == ProxylessGRPC {
		name := req.Host
		if req.Port != 0 {
			name += ":" + portString(req.Port)
			req.Host = name
		}
		l := findListener(nc, name)
		if l == nil {
			return result{}, fmt.Errorf("no API listener %q", name)
		}
		res := result{Listener: name}
		return res.http(nc, l.GetApiListener().GetApiListener(), req)
	}
	l := findListener(nc, outboundListenerName(req.Namespace))
	if l == nil {
		return result{}, fmt.Errorf("no outbound listener for namespace %s", req.Namespace)
	}
	res := result{Listener: l.GetName()}
	fc := matchFilterChain(l, req.DestIP, req.Port)
	if fc == nil {
		return res, fmt.Errorf("no filter chain for %s:%d", req.DestIP, req.Port)
	}
	res.FilterChain = fc.GetName()
	filters := fc.GetFilters() // the terminal filter decides; connection_limit comes first
	cfg := filters[len(filters)-1].GetTypedConfig()
	if strings.HasSuffix(cfg.GetTypeUrl(), "TcpProxy") {
		tp := &tcpv3.TcpProxy{}
		if err := cfg.UnmarshalTo(tp); err != nil {
			return res, err
		}
		res.Clusters = map[string]uint32{}
		if c := tp.GetCluster(); c != "" {
			res.Clusters[c] = 1
		}
		for _, w := range tp.GetWeightedClusters().GetClusters() {
			res.Clusters[w.GetName()] = w.GetWeight()
		}
		return res, nil
	}
	return res.http(nc, cfg, req)
}

func (res result) http(nc *NodeConfig, cfg *anypb.Any, req request) (result, error) {
	hcm := &hcmv3.HttpConnectionManager{}
	if err := cfg.UnmarshalTo(hcm); err != nil {
		return res, err
	}
	res.RouteConfig = hcm.GetRds().GetRouteConfigName()
	var rc *routev3.RouteConfiguration
	for _, r := range nc.Routes {
		if r.GetName() == res.RouteConfig {
			rc = r
		}
	}
	if rc == nil {
		return res, fmt.Errorf("route configuration %q missing", res.RouteConfig)
	}
	// Envoy: an exact domain beats the "*" catch-all.
	var vh, any *routev3.VirtualHost
	for _, v := range rc.GetVirtualHosts() {
		for _, d := range v.GetDomains() {
			switch {
			case strings.EqualFold(d, req.Host) && vh == nil:
				vh = v
			case d == "*" && any == nil:
				any = v
			}
		}
	}
	if vh == nil {
		vh = any
	}
	if vh == nil {
		return res, fmt.Errorf("404: no virtual host for %q in %s", req.Host, res.RouteConfig)
	}
	res.VirtualHost = vh.GetName()
	for _, r := range vh.GetRoutes() {
		if !routeMatches(r.GetMatch(), req) {
			continue
		}
		res.Route = r.GetName()
		res.Clusters = map[string]uint32{}
		if cfg := r.GetTypedPerFilterConfig()[faultFilterName]; cfg != nil {
			res.Fault = &faultv3.HTTPFault{}
			if err := cfg.UnmarshalTo(res.Fault); err != nil {
				return res, err
			}
		}
		res.Retries = r.GetRoute().GetRetryPolicy().GetNumRetries().GetValue()
		res.Redirect, res.Direct = r.GetRedirect(), r.GetDirectResponse()
		a := r.GetRoute()
		if c := a.GetCluster(); c != "" {
			res.Clusters[c] = 1
		}
		for _, w := range a.GetWeightedClusters().GetClusters() {
			res.Clusters[w.GetName()] = w.GetWeight().GetValue()
		}
		return res, nil
	}
	return res, fmt.Errorf("404: no route matches %s %s in %s", req.Method, req.Path, vh.GetName())
}

func findListener(nc *NodeConfig, name string) *listenerv3.Listener {
	for _, l := range nc.Listeners {
		if l.GetName() == name {
			return l
		}
	}
	return nil
}

// matchFilterChain follows Envoy's order: destination port (exact beats
// unset), then the longest matching destination prefix (a chain without
// prefixes matches any address, with the lowest rank); else the default.
func matchFilterChain(l *listenerv3.Listener, ip string, port uint32) *listenerv3.FilterChain {
	addr, _ := netip.ParseAddr(ip)
	best, bestPort, bestLen := (*listenerv3.FilterChain)(nil), false, -1
	for _, fc := range l.GetFilterChains() {
		m := fc.GetFilterChainMatch()
		exactPort := m.GetDestinationPort() != nil
		if exactPort && m.GetDestinationPort().GetValue() != port {
			continue
		}
		plen := prefixMatch(m.GetPrefixRanges(), addr)
		if plen < 0 {
			continue
		}
		if exactPort && !bestPort || exactPort == bestPort && plen > bestLen {
			best, bestPort, bestLen = fc, exactPort, plen
		}
	}
	if best == nil {
		return l.GetDefaultFilterChain()
	}
	return best
}

// prefixMatch returns the longest matching prefix length, 0 for no
// prefixes, -1 for no match.
func prefixMatch(ranges []*corev3.CidrRange, addr netip.Addr) int {
	if len(ranges) == 0 {
		return 0
	}
	best := -1
	for _, r := range ranges {
		p, err := netip.ParseAddr(r.GetAddressPrefix())
		if err != nil {
			continue
		}
		pfx := netip.PrefixFrom(p, int(r.GetPrefixLen().GetValue()))
		if addr.IsValid() && pfx.Contains(addr) && pfx.Bits() > best {
			best = pfx.Bits()
		}
	}
	if best == 0 {
		best = 1 // a matching /0 still beats "no prefix"
	}
	return best
}

func routeMatches(m *routev3.RouteMatch, req request) bool {
	path, _, _ := strings.Cut(req.Path, "?")
	switch p := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		if !strings.HasPrefix(path, p.Prefix) {
			return false
		}
	case *routev3.RouteMatch_Path:
		if path != p.Path {
			return false
		}
	case *routev3.RouteMatch_SafeRegex:
		if !fullMatch(p.SafeRegex.GetRegex(), path) {
			return false
		}
	default:
		return false
	}
	for _, h := range m.GetHeaders() {
		v, ok := headerValue(req, h.GetName())
		if h.GetPresentMatch() {
			if !ok {
				return false
			}
			continue
		}
		if !ok || !stringMatches(h.GetStringMatch(), v) {
			return false
		}
	}
	return true
}

func headerValue(req request, name string) (string, bool) {
	switch name {
	case ":method":
		return req.Method, true
	case ":authority":
		return req.Host, true
	case ":path":
		return req.Path, true
	}
	for k, v := range req.Headers {
		if strings.EqualFold(k, name) {
			return v, true
		}
	}
	return "", false
}

func stringMatches(sm *matcherv3.StringMatcher, v string) bool {
	switch p := sm.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		return v == p.Exact
	case *matcherv3.StringMatcher_Prefix:
		return strings.HasPrefix(v, p.Prefix)
	case *matcherv3.StringMatcher_SafeRegex:
		return fullMatch(p.SafeRegex.GetRegex(), v)
	}
	return false
}

func fullMatch(re, s string) bool {
	r, err := regexp.Compile("^(?:" + re + ")$")
	return err == nil && r.MatchString(s)
}

// endpointsOf lists "ip:port" of a cluster's load assignment.
func endpointsOf(nc *NodeConfig, cluster string) []string {
	var out []string
	for _, cla := range nc.Endpoints {
		if cla.GetClusterName() != cluster {
			continue
		}
		for _, l := range cla.GetEndpoints() {
			for _, e := range l.GetLbEndpoints() {
				sa := e.GetEndpoint().GetAddress().GetSocketAddress()
				out = append(out, fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue()))
			}
		}
	}
	return out
}

func findCluster(nc *NodeConfig, name string) *clusterv3.Cluster {
	for _, c := range nc.Clusters {
		if c.GetName() == name {
			return c
		}
	}
	return nil
}
