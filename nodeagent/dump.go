package nodeagent

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/nodemesh/nodemesh/bpf"
)

// dumpState reads the maps back into a State (sorted). Workloads found only
// by cgroup are merged into the workload with the same identity and
// namespace, or listed with an invalid IP when there is none.
func dumpState(m Maps) (State, error) {
	var s State
	cur, err := readCurrent(m)
	if err != nil {
		return s, err
	}
	names := map[uint32]string{}
	for id, ns := range cur.namespaces {
		names[id] = ns.NameString()
		if ns.Flags&bpf.NamespaceAccelerate != 0 {
			s.Accelerate = append(s.Accelerate, Acceleration{Namespace: ns.NameString(), SpliceSafe: true})
		}
	}
	for k, master := range cur.services {
		if k.Slot != 0 {
			continue
		}
		svc := Service{VIP: k.Vip.Netip(), Port: bpf.NetPort(k.Port), Proto: Proto(k.Proto), L7ProxyPort: master.L7ProxyPort}
		var prev uint32
		for slot := uint32(1); slot <= master.Count; slot++ {
			sk := k
			sk.Slot = uint16(slot)
			v, ok := cur.services[sk]
			if !ok {
				return s, fmt.Errorf("service %s: slot %d of %d missing", svc.Key(), slot, master.Count)
			}
			b, ok := cur.backends[v.BackendId]
			if !ok {
				return s, fmt.Errorf("service %s: slot %d: backend %d missing", svc.Key(), slot, v.BackendId)
			}
			be := Backend{IP: b.Ip.Netip(), Port: bpf.NetPort(b.Port)}
			if master.Flags&bpf.SvcWeighted != 0 {
				be.Weight = v.Weight - prev
				prev = v.Weight
			}
			svc.Backends = append(svc.Backends, be)
		}
		s.Services = append(s.Services, svc)
	}
	byInfo := map[bpf.MeshEndpointInfo]int{}
	for a, info := range cur.workloads {
		s.Workloads = append(s.Workloads, Workload{IP: a.Netip(), Identity: info.Identity,
			Namespace: names[info.Ns], Local: info.Flags&bpf.EndpointLocal != 0})
	}
	sortWorkloads(s.Workloads)
	for i, w := range s.Workloads {
		info := bpf.MeshEndpointInfo{Identity: w.Identity, Ns: NamespaceID(w.Namespace)}
		if w.Local {
			info.Flags = bpf.EndpointLocal
		}
		if _, ok := byInfo[info]; !ok {
			byInfo[info] = i
		}
	}
	for id, info := range cur.cgroups {
		if i, ok := byInfo[info]; ok && s.Workloads[i].CgroupID == 0 {
			s.Workloads[i].CgroupID = id
			continue
		}
		s.Workloads = append(s.Workloads, Workload{Identity: info.Identity, Namespace: names[info.Ns],
			Local: info.Flags&bpf.EndpointLocal != 0, CgroupID: id})
	}
	for k, v := range cur.policy {
		s.Policies = append(s.Policies, PolicyRule{DstIdentity: k.DstIdentity, SrcIdentity: k.SrcIdentity,
			Port: k.Port, Proto: Proto(k.Proto), Verdict: Verdict(v.Verdict)})
	}
	for id, r := range cur.redirects {
		ap := r.AddrPort()
		s.Redirects = append(s.Redirects, Redirect{Namespace: names[id], ProxyIP: ap.Addr(), ProxyPort: ap.Port()})
	}
	sortState(&s)
	return s, nil
}

func sortWorkloads(ws []Workload) {
	slices.SortFunc(ws, func(a, b Workload) int {
		return cmp.Or(a.IP.Compare(b.IP), cmp.Compare(a.CgroupID, b.CgroupID))
	})
}

// sortState puts every slice of s in a canonical order (backends of a
// service by address), so two states can be compared.
func sortState(s *State) {
	for i := range s.Services {
		slices.SortFunc(s.Services[i].Backends, func(a, b Backend) int {
			return netip.AddrPortFrom(a.IP, a.Port).Compare(netip.AddrPortFrom(b.IP, b.Port))
		})
	}
	slices.SortFunc(s.Services, func(a, b Service) int {
		return cmp.Or(a.VIP.Compare(b.VIP), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Proto, b.Proto))
	})
	sortWorkloads(s.Workloads)
	slices.SortFunc(s.Policies, func(a, b PolicyRule) int {
		return cmp.Or(cmp.Compare(a.DstIdentity, b.DstIdentity), cmp.Compare(a.SrcIdentity, b.SrcIdentity),
			cmp.Compare(a.Port, b.Port), cmp.Compare(a.Proto, b.Proto))
	})
	slices.SortFunc(s.Redirects, func(a, b Redirect) int { return cmp.Compare(a.Namespace, b.Namespace) })
	slices.SortFunc(s.Accelerate, func(a, b Acceleration) int { return cmp.Compare(a.Namespace, b.Namespace) })
}

// Canonical returns a copy of s sorted the way Dump returns it (cgroup
// paths are not resolved), for comparing a desired state with a dump.
func (s State) Canonical() State {
	c := State{
		Services:   slices.Clone(s.Services),
		Workloads:  slices.Clone(s.Workloads),
		Policies:   slices.Clone(s.Policies),
		Redirects:  slices.Clone(s.Redirects),
		Accelerate: slices.Clone(s.Accelerate),
	}
	for i := range c.Services {
		c.Services[i].Backends = slices.Clone(c.Services[i].Backends)
		c.Services[i].VIP = c.Services[i].VIP.Unmap()
	}
	sortState(&c)
	return c
}
