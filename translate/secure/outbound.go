package secure

import (
	"maps"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/nodemesh/nodemesh/translate"
)

// AccountSuffix is appended to the names of the outbound filter chains
// that speak for one service account: "~<ns>/<sa>".
func AccountSuffix(id spiffeid.ID) string {
	ns, sa := nsSA(id)
	return "~" + ns + "/" + sa
}

func nsSA(id spiffeid.ID) (string, string) {
	segs := splitPath(id.Path())
	if len(segs) == 4 {
		return segs[1], segs[3]
	}
	return "", ""
}

func splitPath(p string) []string {
	var out []string
	start := 1
	for i := 1; i <= len(p); i++ {
		if i == len(p) || p[i] == '/' {
			out = append(out, p[start:i])
			start = i + 1
		}
	}
	return out
}

// outbound splits the outbound listeners of a node per service account
// and gives the clusters they reach one transport socket per account.
type outbound struct {
	m      *nodeModel
	routes map[string]*routev3.RouteConfiguration // by name
	named  map[string][]string                    // clusters a route configuration names
	reach  map[string]map[string]spiffeid.ID      // cluster -> accounts (SPIFFE ID) whose chains reach it
}

func newOutbound(m *nodeModel, nc *translate.NodeConfig) *outbound {
	o := &outbound{m: m, routes: map[string]*routev3.RouteConfiguration{}, named: map[string][]string{},
		reach: map[string]map[string]spiffeid.ID{}}
	for _, rc := range nc.Routes {
		o.routes[rc.GetName()] = rc
	}
	return o
}

// listener splits l's chains per account; l is replaced by a copy. Every
// split chain matches the account's pod addresses and first sets the
// account's identity (SourceIdentityKey); its other filters are l's.
func (o *outbound) listener(l *listenerv3.Listener, accounts []*account) *listenerv3.Listener {
	out := proto.Clone(l).(*listenerv3.Listener)
	out.FilterChains = nil
	for _, fc := range l.GetFilterChains() {
		reached := o.reachable(fc)
		base := proto.Clone(fc).(*listenerv3.FilterChain)
		base.Filters = nil
		if base.FilterChainMatch == nil {
			base.FilterChainMatch = &listenerv3.FilterChainMatch{}
		}
		base.FilterChainMatch.SourcePrefixRanges = nil
		for _, a := range accounts {
			c := proto.Clone(base).(*listenerv3.FilterChain)
			c.Name = fc.GetName() + AccountSuffix(a.id)
			for _, ip := range a.ips {
				c.FilterChainMatch.SourcePrefixRanges = append(c.FilterChainMatch.SourcePrefixRanges, hostRange(ip))
			}
			c.Filters = append([]*listenerv3.Filter{o.m.shared.filter(a.id)}, fc.GetFilters()...)
			out.FilterChains = append(out.FilterChains, c)
			for _, cl := range reached {
				if o.reach[cl] == nil {
					o.reach[cl] = map[string]spiffeid.ID{}
				}
				o.reach[cl][a.id.String()] = a.id
			}
		}
	}
	return out
}

// reachable lists the clusters a chain's tcp_proxy or HTTP connection
// manager (through its route configuration) can send to.
func (o *outbound) reachable(fc *listenerv3.FilterChain) []string {
	var out []string
	for _, f := range fc.GetFilters() {
		tc := f.GetTypedConfig()
		switch {
		case tc == nil:
		case tc.MessageIs(&tcpv3.TcpProxy{}):
			tp := &tcpv3.TcpProxy{}
			if tc.UnmarshalTo(tp) != nil {
				continue
			}
			if c := tp.GetCluster(); c != "" {
				out = append(out, c)
			}
			for _, w := range tp.GetWeightedClusters().GetClusters() {
				out = append(out, w.GetName())
			}
		case tc.MessageIs(&hcmv3.HttpConnectionManager{}):
			hcm := &hcmv3.HttpConnectionManager{}
			if tc.UnmarshalTo(hcm) == nil && hcm.GetRds() != nil {
				out = append(out, o.routeClusters(hcm.GetRds().GetRouteConfigName())...)
			}
		}
	}
	return out
}

// routeClusters lists the clusters a route configuration names.
func (o *outbound) routeClusters(name string) []string {
	if cl, ok := o.named[name]; ok {
		return cl
	}
	var out []string
	for _, vh := range o.routes[name].GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			ra := r.GetRoute()
			if c := ra.GetCluster(); c != "" {
				out = append(out, c)
			}
			for _, w := range ra.GetWeightedClusters().GetClusters() {
				out = append(out, w.GetName())
			}
			for _, mp := range ra.GetRequestMirrorPolicies() {
				out = append(out, mp.GetCluster())
			}
		}
	}
	slices.Sort(out)
	out = slices.Compact(out)
	o.named[name] = out
	return out
}

// secureClusters gives every mesh cluster some account reaches over mTLS
// its transport socket selection; the others stay as they are.
func (o *outbound) secureClusters(nc *translate.NodeConfig) {
	for i, c := range nc.Clusters {
		ids := o.reach[c.GetName()]
		if len(ids) == 0 {
			continue
		}
		keys := slices.Sorted(maps.Keys(ids))
		var (
			choices []socketChoice
			dest    destination
			sig     strings.Builder
		)
		for _, k := range keys {
			ns, _ := nsSA(ids[k])
			d := o.m.destinationOf(c.GetName(), ns)
			if !d.mesh {
				break
			}
			choices = append(choices, socketChoice{id: ids[k], plaintext: d.plaintext})
			sig.WriteString(k)
			if d.plaintext {
				sig.WriteString(" plaintext")
				continue
			}
			sig.WriteByte('\n')
			dest = d
		}
		if !dest.mesh {
			continue // not in the mesh, or plaintext for every account
		}
		nc.Clusters[i] = o.m.shared.cluster(selKey{c, sig.String()}, func() *clusterv3.Cluster {
			return o.m.selectingCluster(c, dest, choices)
		})
	}
}

func hostRange(ip string) *corev3.CidrRange {
	bits := uint32(32)
	if slices.Contains([]byte(ip), ':') {
		bits = 128
	}
	return &corev3.CidrRange{AddressPrefix: ip, PrefixLen: wrapperspb.UInt32(bits)}
}
