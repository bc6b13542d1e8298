package translate

import (
	"net/netip"
	"slices"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	origdstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	connlimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/connection_limit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func portString(p uint32) string { return strconv.FormatUint(uint64(p), 10) }

// Names of the per-namespace resources on the shared node proxy.
func outboundListenerName(ns string) string        { return "outbound_" + ns }
func inboundListenerName(ns string) string         { return "inbound_" + ns }
func inboundClusterName(ns string) string          { return "inbound|" + ns }
func outboundRouteName(ns string, p uint32) string { return "outbound_" + ns + "_" + portString(p) }

// outboundChains is what the outbound listener of one namespace matches.
type outboundChains struct {
	httpVIPs     map[uint32][]string // port -> VIPs of other namespaces' HTTP services
	localVIPs    map[uint32][]string // port -> VIPs of the namespace's own HTTP services
	allVIPs      map[uint32][]string // port -> both, in service order
	httpHeadless map[uint32]bool     // port has an HTTP service without VIP
	tcp          []*listenerv3.FilterChain
	taken        map[string]string // "prefix|port" -> host that matches it
}

// outboundListener builds the namespace's outbound listener and the route
// configurations its HTTP chains refer to (see routeshare.go).
func (s *scope) outboundListener(port uint32) (*listenerv3.Listener, []*routev3.RouteConfiguration) {
	stat := outboundListenerName(s.ns)
	oc := &outboundChains{httpVIPs: map[uint32][]string{}, localVIPs: map[uint32][]string{}, allVIPs: map[uint32][]string{}, httpHeadless: map[uint32]bool{}, taken: map[string]string{}}
	shared, local, full := map[uint32]*virtualHostGroup{}, map[uint32]*virtualHostGroup{}, map[uint32]*virtualHostGroup{}
	for _, svc := range s.services {
		for _, sp := range svc.Ports {
			if sp.Protocol.isHTTP() {
				s.addHTTP(oc, shared, local, full, svc, sp)
				continue
			}
			if vips := s.claim(oc, svc, sp.Port); len(vips) > 0 {
				fc := filterChain("tcp_"+portString(sp.Port)+"_"+svc.Hostname, sp.Port, vips,
					tcpProxyFilter(stat, s.tcpClusters(svc, sp)))
				oc.tcp = append(oc.tcp, fc)
			}
		}
	}
	ports := make([]uint32, 0, len(shared))
	for p := range shared {
		ports = append(ports, p)
	}
	slices.Sort(ports)
	l := &listenerv3.Listener{
		Name:             outboundListenerName(s.ns),
		Address:          socketAddress("0.0.0.0", port),
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
		ListenerFilters:  []*listenerv3.ListenerFilter{originalDstFilter()},
		DefaultFilterChain: &listenerv3.FilterChain{
			Name:    s.unknownDestination(),
			Filters: []*listenerv3.Filter{tcpProxyFilter(stat, []weightedCluster{{Cluster: s.unknownDestination(), Weight: 1}})},
		},
	}
	var routes []*routev3.RouteConfiguration
	view := ""
	if len(oc.httpVIPs) > 0 {
		view = s.viewKey()
	}
	allowAny := !s.m.sidecarFor(s.ns).registryOnly
	for _, p := range ports {
		if oc.httpHeadless[p] {
			// Connections to pods of headless services match by port
			// alone and may use short names: one route configuration of
			// this namespace's own for the port, as before sharing.
			g := *full[p]
			g.AllowAny = allowAny
			rc := routeConfiguration(g)
			routes = append(routes, rc)
			if vips := oc.allVIPs[p]; len(vips) > 0 {
				l.FilterChains = append(l.FilterChains, filterChain("http_"+portString(p), p, vips, hcmFilter(stat, rc.Name)))
			}
			l.FilterChains = append(l.FilterChains, filterChain("http_"+portString(p)+"_any", p, nil, hcmFilter(stat, rc.Name)))
			continue
		}
		if vips := oc.httpVIPs[p]; len(vips) > 0 {
			g := *shared[p]
			g.Name, g.AllowAny = sharedRouteName(p, view, s.m.defaultViewKey()), allowAny
			rc, ok := s.m.sharedRoute(g.Name)
			if !ok {
				if rc, ok = s.m.shareRoute(routeConfiguration(g)); !ok {
					rc.Name = g.Name + "~" + s.ns // the view key missed a difference: do not share
				}
			}
			routes = append(routes, rc)
			l.FilterChains = append(l.FilterChains, filterChain("http_"+portString(p), p, vips, hcmFilter(stat, rc.Name)))
		}
		if vips := oc.localVIPs[p]; len(vips) > 0 {
			lg := *local[p]
			lg.AllowAny = allowAny
			lrc := routeConfiguration(lg)
			routes = append(routes, lrc)
			l.FilterChains = append(l.FilterChains, filterChain("http_"+portString(p)+"_local", p, vips, hcmFilter(stat, lrc.Name)))
		}
	}
	l.FilterChains = append(l.FilterChains, oc.tcp...)
	limitConnections(l, stat)
	return l, routes
}

// DefaultMaxConnections is the connection limit of each filter chain of a
// namespace's listeners (Envoy's connection_limit filter counts per filter
// chain): one namespace cannot take all of the node proxy's connections.
const DefaultMaxConnections = 10000

// limitConnections puts a connection_limit filter, with the listener's
// stat prefix, first in every filter chain of l.
func limitConnections(l *listenerv3.Listener, stat string) {
	f := &listenerv3.Filter{
		Name: connectionLimitFilterName,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&connlimitv3.ConnectionLimit{
			StatPrefix:     stat,
			MaxConnections: wrapperspb.UInt64(DefaultMaxConnections),
		})},
	}
	chains := l.FilterChains
	if l.DefaultFilterChain != nil {
		chains = append(chains[:len(chains):len(chains)], l.DefaultFilterChain)
	}
	for _, fc := range chains {
		fc.Filters = append([]*listenerv3.Filter{f}, fc.Filters...)
	}
}

const connectionLimitFilterName = "envoy.filters.network.connection_limit"

// addHTTP adds an HTTP service port: its virtual host (without short name)
// to the shared group of the port, and, for the namespace's own services,
// with its short name to the local group; its VIPs to the chain of either.
// The full group has every virtual host as this namespace names them (for
// ports with headless services).
func (s *scope) addHTTP(oc *outboundChains, shared, local, full map[uint32]*virtualHostGroup, svc *service, sp servicePort) {
	group := func(m map[uint32]*virtualHostGroup, name string) *virtualHostGroup {
		g := m[sp.Port]
		if g == nil {
			g = &virtualHostGroup{Name: name}
			m[sp.Port] = g
		}
		return g
	}
	vh := s.virtualHost(svc, sp)
	fg := group(full, outboundRouteName(s.ns, sp.Port))
	fg.VirtualHosts = append(fg.VirtualHosts, vh)
	sg := group(shared, "")
	if svc.Namespace == s.ns {
		lg := group(local, localRouteName(s.ns, sp.Port))
		lg.VirtualHosts = append(lg.VirtualHosts, vh)
		vh.Domains = domains(svc, sp.Port, "")
	}
	sg.VirtualHosts = append(sg.VirtualHosts, vh)
	if len(svc.VIPs) == 0 {
		oc.httpHeadless[sp.Port] = true
	}
	vips := s.claim(oc, svc, sp.Port)
	oc.allVIPs[sp.Port] = append(oc.allVIPs[sp.Port], vips...)
	if svc.Namespace == s.ns {
		oc.localVIPs[sp.Port] = append(oc.localVIPs[sp.Port], vips...)
	} else {
		oc.httpVIPs[sp.Port] = append(oc.httpVIPs[sp.Port], vips...)
	}
}

// virtualHostGroup is one route configuration to build.
type virtualHostGroup struct {
	Name         string
	VirtualHosts []virtualHost
	// AllowAny adds a last virtual host "allow_any" matching every other
	// host and forwarding to the original destination (Istio's ALLOW_ANY).
	AllowAny bool
}

// unknownDestination is where traffic to destinations the namespace does
// not know goes: PassthroughCluster, or BlackHoleCluster when its Sidecar
// says outboundTrafficPolicy REGISTRY_ONLY.
func (s *scope) unknownDestination() string {
	if s.m.sidecarFor(s.ns).registryOnly {
		return BlackHoleCluster
	}
	return PassthroughCluster
}

// claim returns the service's VIPs not yet matched on port and marks them
// taken, so no two filter chains have the same match (Envoy rejects that).
// The first service in hostname order keeps a shared VIP:port.
func (s *scope) claim(oc *outboundChains, svc *service, port uint32) []string {
	var out []string
	for _, v := range svc.VIPs {
		k := v + "|" + portString(port)
		if oc.taken[k] != "" {
			s.diags.Warnf(svc.obj, "", "address %s port %d of %s is also used by %s, which takes precedence; not matched for this service",
				v, port, svc.Hostname, oc.taken[k])
			continue
		}
		oc.taken[k] = svc.Hostname
		out = append(out, v)
	}
	return out
}

// tcpClusters is where a TCP service port goes: the first applicable TCP
// route of its VirtualService, else the port's cluster.
func (s *scope) tcpClusters(svc *service, sp servicePort) []weightedCluster {
	if wc, ok := s.tcpRoute(svc, sp); ok {
		return wc
	}
	return []weightedCluster{{Cluster: s.clusters.want(s, svc, sp, ""), Weight: 1}}
}

// inboundListener forwards connections for the namespace's local pods to
// their original destination; connections to any other address match no
// filter chain and are closed.
func inboundListener(ns string, port uint32, podIPs []string) *listenerv3.Listener {
	stat := inboundListenerName(ns)
	l := &listenerv3.Listener{
		Name:             inboundListenerName(ns),
		Address:          socketAddress("0.0.0.0", port),
		TrafficDirection: corev3.TrafficDirection_INBOUND,
		ListenerFilters:  []*listenerv3.ListenerFilter{originalDstFilter()},
		FilterChains: []*listenerv3.FilterChain{filterChain("inbound_pods", 0, podIPs,
			tcpProxyFilter(stat, []weightedCluster{{Cluster: inboundClusterName(ns), Weight: 1}}))},
	}
	limitConnections(l, stat)
	return l
}

// filterChain matches destination port (0: any) and addresses (nil: any).
func filterChain(name string, port uint32, addrs []string, f *listenerv3.Filter) *listenerv3.FilterChain {
	m := &listenerv3.FilterChainMatch{}
	if port != 0 {
		m.DestinationPort = wrapperspb.UInt32(port)
	}
	for _, a := range addrs {
		if r := cidrRange(a); r != nil {
			m.PrefixRanges = append(m.PrefixRanges, r)
		}
	}
	return &listenerv3.FilterChain{Name: name, FilterChainMatch: m, Filters: []*listenerv3.Filter{f}}
}

// cidrRange turns an IP or CIDR into a prefix range; nil if it is neither.
func cidrRange(a string) *corev3.CidrRange {
	p, err := netip.ParsePrefix(a)
	if err != nil {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			return nil
		}
		p = netip.PrefixFrom(ip, ip.BitLen())
	}
	p = p.Masked()
	return &corev3.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))}
}

func originalDstFilter() *listenerv3.ListenerFilter {
	return &listenerv3.ListenerFilter{
		Name:       wellknown.OriginalDestination,
		ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(&origdstv3.OriginalDst{})},
	}
}

// httpConnectionManager routes with RDS over ADS through the fault filter
// (configured per route) and the router, which is last, as Envoy and gRPC
// require.
func httpConnectionManager(stat, routeName string) *hcmv3.HttpConnectionManager {
	return &hcmv3.HttpConnectionManager{
		StatPrefix: stat,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsConfigSource(),
			RouteConfigName: routeName,
		}},
		HttpFilters: []*hcmv3.HttpFilter{{
			Name:       faultFilterName,
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&faultv3.HTTPFault{})},
		}, {
			Name:       wellknown.Router,
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})},
		}},
	}
}

func hcmFilter(stat, routeName string) *listenerv3.Filter {
	return &listenerv3.Filter{
		Name:       wellknown.HTTPConnectionManager,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(httpConnectionManager(stat, routeName))},
	}
}

func tcpProxyFilter(stat string, clusters []weightedCluster) *listenerv3.Filter {
	tp := &tcpv3.TcpProxy{StatPrefix: stat}
	if len(clusters) == 1 {
		tp.ClusterSpecifier = &tcpv3.TcpProxy_Cluster{Cluster: clusters[0].Cluster}
	} else {
		wc := &tcpv3.TcpProxy_WeightedCluster{}
		for _, c := range clusters {
			wc.Clusters = append(wc.Clusters, &tcpv3.TcpProxy_WeightedCluster_ClusterWeight{Name: c.Cluster, Weight: c.Weight})
		}
		tp.ClusterSpecifier = &tcpv3.TcpProxy_WeightedClusters{WeightedClusters: wc}
	}
	return &listenerv3.Filter{
		Name:       wellknown.TCPProxy,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(tp)},
	}
}
