package inboundauthz

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/nodemesh/nodemesh/config"
)

// rewrite returns a copy of the inbound listener of namespace ns with the
// policies of pods applied, and whether it uses an HTTP connection manager.
func rewrite(l *listenerv3.Listener, ns string, pods []*pod) (*listenerv3.Listener, bool, []config.Diagnostic) {
	byIP := map[string]*pod{}
	var ports []uint32 // HTTP ports of any selected pod
	for _, p := range pods {
		for _, ip := range p.ips {
			byIP[ip] = p
		}
		for port := range p.http {
			ports = append(ports, port)
		}
	}
	slices.Sort(ports)
	ports = slices.Compact(ports)

	out := proto.Clone(l).(*listenerv3.Listener)
	out.FilterChains = splitPorts(splitPods(out.FilterChains, byIP), ports)
	usesHTTP := false
	var diags []config.Diagnostic
	for i, fc := range out.FilterChains {
		p := podOf(fc, byIP)
		if p == nil {
			continue
		}
		port := fc.GetFilterChainMatch().GetDestinationPort().GetValue()
		switch ok := endsInTCPProxy(fc); {
		case !ok:
			diags = append(diags, config.Diagnostic{Severity: config.SeverityError,
				Object:  config.Key{Kind: config.KindPod, Namespace: p.ns, Name: p.name},
				Message: fmt.Sprintf("inbound filter chain %s of listener %s does not end in tcp_proxy: its authorization policy cannot be applied there", fc.GetName(), l.GetName())})
		case port != 0 && p.http[port] && len(p.filters.HTTP) > 0:
			out.FilterChains[i] = withHCM(fc, ns, p.filters.HTTP)
			usesHTTP = true
		case len(p.filters.TCP) > 0:
			out.FilterChains[i] = withNetworkFilters(fc, p.filters.TCP)
		}
	}
	return out, usesHTTP, diags
}

// splitPods gives every selected pod address that a chain matches among
// other addresses a chain of its own (same filters, transport socket and
// match, prefix_ranges only its address). A chain matching any address
// gets a copy per selected address. Other chains are kept as they are.
func splitPods(chains []*listenerv3.FilterChain, byIP map[string]*pod) []*listenerv3.FilterChain {
	var out []*listenerv3.FilterChain
	ips := slices.Sorted(maps.Keys(byIP))
	for _, fc := range chains {
		ranges := fc.GetFilterChainMatch().GetPrefixRanges()
		if len(ranges) == 1 && hostAddr(ranges[0]) != "" {
			out = append(out, fc) // one address already (secure's per-pod chains)
			continue
		}
		var own []string // selected addresses the chain matches
		var rest []*corev3.CidrRange
		if len(ranges) == 0 {
			own = ips
		} else {
			for _, r := range ranges {
				if a := hostAddr(r); a != "" && byIP[a] != nil {
					own = append(own, a)
				} else {
					rest = append(rest, r)
				}
			}
		}
		if len(own) == 0 {
			out = append(out, fc)
			continue
		}
		if len(ranges) == 0 || len(rest) > 0 {
			keep := proto.Clone(fc).(*listenerv3.FilterChain)
			if keep.FilterChainMatch != nil && len(ranges) > 0 {
				keep.FilterChainMatch.PrefixRanges = rest
			}
			out = append(out, keep)
		}
		for _, a := range own {
			c := proto.Clone(fc).(*listenerv3.FilterChain)
			if c.FilterChainMatch == nil {
				c.FilterChainMatch = &listenerv3.FilterChainMatch{}
			}
			c.Name = fc.GetName() + "_" + a
			c.FilterChainMatch.PrefixRanges = []*corev3.CidrRange{hostRange(a)}
			out = append(out, c)
		}
	}
	return out
}

// splitPorts adds, for every chain that matches any destination port, a
// copy on each of ports for the addresses that have no chain on that port
// yet: Envoy picks the destination port first, then the address, and does
// not fall back to chains matching any port, so every address keeps being
// served on those ports. An address that already has chains on a port
// (secure's port-level modes) keeps exactly those: they decide its
// transport (STRICT, PERMISSIVE, DISABLE) there.
func splitPorts(chains []*listenerv3.FilterChain, ports []uint32) []*listenerv3.FilterChain {
	if len(ports) == 0 {
		return chains
	}
	taken := map[string]bool{} // "<port>|<range>" ("" range: any address)
	for _, fc := range chains {
		if port := fc.GetFilterChainMatch().GetDestinationPort().GetValue(); port != 0 {
			for _, k := range rangeKeys(fc.GetFilterChainMatch()) {
				taken[strconv.FormatUint(uint64(port), 10)+"|"+k] = true
			}
		}
	}
	out := slices.Clone(chains)
	for _, fc := range chains {
		if fc.GetFilterChainMatch().GetDestinationPort().GetValue() != 0 {
			continue
		}
		for _, port := range ports {
			p := strconv.FormatUint(uint64(port), 10)
			ranges := fc.GetFilterChainMatch().GetPrefixRanges()
			var free []*corev3.CidrRange
			for i, k := range rangeKeys(fc.GetFilterChainMatch()) {
				if !taken[p+"|"+k] && len(ranges) > 0 {
					free = append(free, ranges[i])
				}
			}
			if len(ranges) == 0 && taken[p+"|"] || len(ranges) > 0 && len(free) == 0 {
				continue
			}
			c := proto.Clone(fc).(*listenerv3.FilterChain)
			if c.FilterChainMatch == nil {
				c.FilterChainMatch = &listenerv3.FilterChainMatch{}
			}
			c.FilterChainMatch.DestinationPort = wrapperspb.UInt32(port)
			if len(ranges) > 0 {
				c.FilterChainMatch.PrefixRanges = free
			}
			c.Name = fc.GetName() + "_" + p
			out = append(out, c)
		}
	}
	return out
}

// rangeKeys are the destination ranges of m as strings; [""] for any.
func rangeKeys(m *listenerv3.FilterChainMatch) []string {
	ranges := m.GetPrefixRanges()
	if len(ranges) == 0 {
		return []string{""}
	}
	out := make([]string, len(ranges))
	for i, r := range ranges {
		out[i] = r.GetAddressPrefix() + "/" + strconv.FormatUint(uint64(r.GetPrefixLen().GetValue()), 10)
	}
	return out
}

// podOf is the selected pod a chain serves alone, or nil.
func podOf(fc *listenerv3.FilterChain, byIP map[string]*pod) *pod {
	ranges := fc.GetFilterChainMatch().GetPrefixRanges()
	if len(ranges) != 1 {
		return nil
	}
	return byIP[hostAddr(ranges[0])]
}

// hostAddr is the address of a range holding one address, else "".
func hostAddr(r *corev3.CidrRange) string {
	a, err := netip.ParseAddr(r.GetAddressPrefix())
	if err != nil || uint32(a.Unmap().BitLen()) != r.GetPrefixLen().GetValue() && uint32(a.BitLen()) != r.GetPrefixLen().GetValue() {
		return ""
	}
	return a.Unmap().String()
}

func endsInTCPProxy(fc *listenerv3.FilterChain) bool {
	fs := fc.GetFilters()
	return len(fs) > 0 && fs[len(fs)-1].GetTypedConfig().MessageIs((*tcpv3.TcpProxy)(nil))
}

// withNetworkFilters puts filters right before the chain's tcp_proxy
// (after whatever precedes it, such as a connection limit).
func withNetworkFilters(fc *listenerv3.FilterChain, filters []*listenerv3.Filter) *listenerv3.FilterChain {
	n := len(fc.Filters)
	fs := slices.Clone(fc.Filters[:n-1])
	for _, f := range filters {
		fs = append(fs, proto.Clone(f).(*listenerv3.Filter))
	}
	fc.Filters = append(fs, fc.Filters[n-1])
	return fc
}

func hostRange(a string) *corev3.CidrRange {
	addr := netip.MustParseAddr(a)
	return &corev3.CidrRange{AddressPrefix: a, PrefixLen: wrapperspb.UInt32(uint32(addr.BitLen()))}
}
