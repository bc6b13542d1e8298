package translate

import (
	"hash/fnv"
	"maps"
	"slices"
)

// Per-namespace listener ports on the shared node Envoy.
//
// Every namespace of the mesh owns one slot in [0, NamespaceSlots). Slot s
// gives the outbound listener port NamespacePortBase+2s and the inbound
// listener port NamespacePortBase+2s+1, so ports stay in
// [NamespacePortBase, NamespacePortBase+2*NamespaceSlots), below the Linux
// ephemeral range.
//
// A namespace's preferred slot is FNV-1a-32(name) mod NamespaceSlots.
// Namespaces are placed in sorted order; one whose preferred slot is taken
// probes linearly (s+1, s+2, ... wrapping). The result depends only on the
// set of namespace names, so it is the same on every node and across control
// plane restarts. A namespace whose preferred slot is free keeps its port
// when namespaces come and go; only namespaces that collided (about one in
// 80 for 50 namespaces) can move when the set of namespaces changes.
const (
	NamespacePortBase = 20000
	NamespaceSlots    = 4096
)

// NamespacePorts are the listener ports of one namespace on every node.
type NamespacePorts struct {
	Outbound uint32
	Inbound  uint32
}

// AllocateNamespacePorts assigns listener ports to namespaces as described
// above. It is exported for the data plane, which redirects a namespace's
// traffic to these ports. Names beyond NamespaceSlots get no ports.
func AllocateNamespacePorts(namespaces []string) map[string]NamespacePorts {
	names := slices.Clone(namespaces)
	slices.Sort(names)
	names = slices.Compact(names)
	taken := make([]bool, NamespaceSlots)
	out := make(map[string]NamespacePorts, len(names))
	for i, ns := range names {
		if i >= NamespaceSlots {
			break
		}
		s := preferredSlot(ns)
		for taken[s] {
			s = (s + 1) % NamespaceSlots
		}
		taken[s] = true
		out[ns] = NamespacePorts{
			Outbound: NamespacePortBase + 2*s,
			Inbound:  NamespacePortBase + 2*s + 1,
		}
	}
	return out
}

func preferredSlot(ns string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(ns))
	return h.Sum32() % NamespaceSlots
}

// NamespacePorts returns the listener ports of every namespace of the
// prepared snapshot (see AllocateNamespacePorts), for the data plane that
// redirects traffic to them.
func (p *Mesh) NamespacePorts() map[string]NamespacePorts {
	return maps.Clone(p.m.ports)
}
