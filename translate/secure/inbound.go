package secure

import (
	"net/netip"
	"slices"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// inbound rewrites an inbound listener: every chain is split per local
// pod address it matches, and per port where some pod of the namespace has
// a port-level mode (Envoy picks the destination port before the address
// and never falls back, so every pod needs a chain on such a port).
// Addresses that are no local pod with an identity keep a chain that
// refuses nothing but serves only plaintext (they have no SVID).
func (m *nodeModel) inbound(l *listenerv3.Listener) *listenerv3.Listener {
	out := proto.Clone(l).(*listenerv3.Listener)
	out.FilterChains = nil
	inspect := false
	for _, fc := range l.GetFilterChains() {
		match := fc.GetFilterChainMatch()
		ports := []uint32{match.GetDestinationPort().GetValue()}
		if ports[0] == 0 {
			ports = append(ports, m.overriddenPorts(match)...)
		}
		for _, r := range match.GetPrefixRanges() {
			pod := m.byIP[r.GetAddressPrefix()]
			if pod == nil || !isHost(r.GetAddressPrefix(), r.GetPrefixLen().GetValue()) {
				c := proto.Clone(fc).(*listenerv3.FilterChain)
				c.Name = fc.GetName() + "_" + r.GetAddressPrefix()
				c.FilterChainMatch.PrefixRanges = nil
				c.FilterChainMatch.PrefixRanges = append(c.FilterChainMatch.PrefixRanges, r)
				out.FilterChains = append(out.FilterChains, c)
				continue
			}
			for _, port := range ports {
				chains := m.podChains(fc, r.GetAddressPrefix(), pod, port)
				for _, c := range chains {
					if c.GetFilterChainMatch().GetTransportProtocol() != "" {
						inspect = true
					}
				}
				out.FilterChains = append(out.FilterChains, chains...)
			}
		}
	}
	if inspect {
		out.ListenerFilters = append(out.ListenerFilters, &listenerv3.ListenerFilter{
			Name:       wellknown.TlsInspector,
			ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(&tlsinspectorv3.TlsInspector{})},
		})
	}
	return out
}

func isHost(addr string, bits uint32) bool {
	a, err := netip.ParseAddr(addr)
	return err == nil && uint32(a.BitLen()) == bits
}

// overriddenPorts are the ports with a port-level mode on any local pod
// the chain matches, sorted.
func (m *nodeModel) overriddenPorts(match *listenerv3.FilterChainMatch) []uint32 {
	var ports []uint32
	for _, r := range match.GetPrefixRanges() {
		if pod := m.byIP[r.GetAddressPrefix()]; pod != nil {
			for p := range pod.mode.ports {
				ports = append(ports, p)
			}
		}
	}
	slices.Sort(ports)
	return slices.Compact(ports)
}

// podChains are the chains of one pod address on one port (0: any port not
// overridden): mTLS, plaintext, or both told apart by tls_inspector.
func (m *nodeModel) podChains(fc *listenerv3.FilterChain, ip string, pod *localPod, port uint32) []*listenerv3.FilterChain {
	mode := pod.mode.def
	base := fc.GetName() + "_" + ip
	if port != 0 {
		mode = pod.mode.at(port)
		base += "_" + portString(port)
	}
	mk := func(suffix, transport string, tls bool) *listenerv3.FilterChain {
		c := proto.Clone(fc).(*listenerv3.FilterChain)
		c.Name = base + suffix
		c.FilterChainMatch.PrefixRanges = []*corev3.CidrRange{hostRange(ip)}
		if port != 0 {
			c.FilterChainMatch.DestinationPort = wrapperspb.UInt32(port)
		}
		c.FilterChainMatch.TransportProtocol = transport
		if tls {
			c.TransportSocket = downstreamSDS(pod.id)
		}
		return c
	}
	switch mode {
	case Strict:
		return []*listenerv3.FilterChain{mk("_mtls", "", true)}
	case Disable:
		return []*listenerv3.FilterChain{mk("_plaintext", "", false)}
	default:
		return []*listenerv3.FilterChain{mk("_mtls", "tls", true), mk("_plaintext", "raw_buffer", false)}
	}
}
