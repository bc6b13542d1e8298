package ads

import (
	"fmt"
	"math"
	"net/netip"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/bpf"
	"github.com/nodemesh/nodemesh/nodeagent"
)

// addService appends the kernel services of one resource (one per VIP),
// converting it only when it changed since the last Convert.
func (c *Converter) addService(st *nodeagent.State, keys map[nodeagent.ServiceKey]string, l7Ports map[string]uint16, name string, s *dataplanev1.Service) error {
	var l7 uint16
	if s.GetL7() {
		l7 = l7Ports[s.GetNamespace()]
		if l7 == 0 {
			l7 = DefaultL7Port
		}
	}
	e, ok := c.services[name]
	if !ok || e.msg != s || e.l7 != l7 {
		out, err := convertService(name, s, l7)
		if err != nil {
			delete(c.services, name)
			return err
		}
		e = serviceEntry{msg: s, l7: l7, out: out}
		c.services[name] = e
	}
	for _, svc := range e.out {
		if other, ok := keys[svc.Key()]; ok {
			return fmt.Errorf("service %s: %s is also served by service %s", name, svc.Key(), other)
		}
		keys[svc.Key()] = name
	}
	st.Services = append(st.Services, e.out...)
	return nil
}

// convertService builds the kernel services of one resource, one per VIP;
// l7 is the L7ProxyPort marker (0 for a plain L4 service).
func convertService(name string, s *dataplanev1.Service, l7 uint16) ([]nodeagent.Service, error) {
	errf := func(format string, args ...any) error {
		return fmt.Errorf("service %s: "+format, append([]any{name}, args...)...)
	}
	port, err := port16(s.GetPort())
	if err != nil || port == 0 {
		return nil, errf("port: %d is not a port", s.GetPort())
	}
	proto, err := protocol(s.GetProtocol(), nodeagent.TCP)
	if err != nil {
		return nil, errf("protocol: %w", err)
	}
	if len(s.GetVips()) == 0 {
		return nil, errf("vips: empty")
	}
	if n := len(s.GetBackends()); n > bpf.MaxSlots {
		return nil, errf("backends: %d is more than %d", n, bpf.MaxSlots)
	}
	backends := make([]nodeagent.Backend, 0, len(s.GetBackends()))
	seenBackend := make(map[netip.AddrPort]bool, len(s.GetBackends()))
	var total [2]uint64 // weight sums per family (IPv4, IPv6)
	for i, b := range s.GetBackends() {
		ip, err := netip.ParseAddr(b.GetIp())
		if err != nil {
			return nil, errf("backends[%d].ip: %q is not an IP address", i, b.GetIp())
		}
		bport, err := port16(b.GetPort())
		if err != nil || bport == 0 {
			return nil, errf("backends[%d].port: %d is not a port", i, b.GetPort())
		}
		weight := b.GetWeight()
		if weight == 0 {
			weight = 1 // the API's "0 means 1"; the kernel's 0 means never
		}
		ip = ip.Unmap()
		ap := netip.AddrPortFrom(ip, bport)
		if seenBackend[ap] {
			continue // the same endpoint listed twice (two EndpointSlices): once is enough
		}
		seenBackend[ap] = true
		fam := 0
		if !ip.Is4() {
			fam = 1
		}
		if total[fam] += uint64(weight); total[fam] > math.MaxUint32 {
			return nil, errf("backends[%d].weight: the total weight overflows 32 bits", i)
		}
		backends = append(backends, nodeagent.Backend{IP: ip, Port: bport, Weight: weight})
	}
	out := make([]nodeagent.Service, 0, len(s.GetVips()))
	seen := map[netip.Addr]int{}
	for i, v := range s.GetVips() {
		vip, err := netip.ParseAddr(v)
		if err != nil {
			return nil, errf("vips[%d]: %q is not an IP address", i, v)
		}
		vip = vip.Unmap()
		if j, dup := seen[vip]; dup {
			return nil, errf("vips[%d]: %s duplicates vips[%d]", i, vip, j)
		}
		seen[vip] = i
		svc := nodeagent.Service{VIP: vip, Port: port, Proto: proto, L7ProxyPort: l7}
		// A dual-stack service: each VIP gets the backends of its family.
		for _, b := range backends {
			if b.IP.Is4() == vip.Is4() {
				svc.Backends = append(svc.Backends, b)
			}
		}
		evenWeights(svc.Backends)
		out = append(out, svc)
	}
	return out, nil
}

// evenWeights clears the weights of backends that all weigh the same (the
// usual case: no weights at all), so that the kernel picks them evenly
// without the weighted path.
func evenWeights(bs []nodeagent.Backend) {
	for _, b := range bs {
		if b.Weight != bs[0].Weight {
			return
		}
	}
	for i := range bs {
		bs[i].Weight = 0
	}
}
