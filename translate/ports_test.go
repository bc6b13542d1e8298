package translate

import (
	"fmt"
	"testing"
)

func TestAllocateNamespacePorts(t *testing.T) {
	var names []string
	for i := range 300 {
		names = append(names, fmt.Sprintf("ns-%d", i))
	}
	a := AllocateNamespacePorts(names)
	// Same set in another order, with duplicates: same ports.
	rev := append([]string{"ns-7", "ns-7"}, names...)
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	b := AllocateNamespacePorts(rev)
	used := map[uint32]string{}
	for _, ns := range names {
		p := a[ns]
		if p != b[ns] {
			t.Errorf("%s: %v vs %v depending on input order", ns, p, b[ns])
		}
		if p.Outbound < NamespacePortBase || p.Inbound != p.Outbound+1 || p.Inbound >= NamespacePortBase+2*NamespaceSlots {
			t.Errorf("%s: ports %v out of range", ns, p)
		}
		for _, port := range []uint32{p.Outbound, p.Inbound} {
			if other, dup := used[port]; dup {
				t.Errorf("port %d used by %s and %s", port, other, ns)
			}
			used[port] = ns
		}
	}
	// A namespace that got its preferred slot keeps it when others go.
	small := AllocateNamespacePorts([]string{"ns-1", "ns-2"})
	for _, ns := range []string{"ns-1", "ns-2"} {
		if a[ns].Outbound == NamespacePortBase+2*preferredSlot(ns) && small[ns] != a[ns] {
			t.Errorf("%s moved from %v to %v", ns, a[ns], small[ns])
		}
	}
}

// The listeners use the ports the data plane is told about.
func TestListenersUseNamespacePorts(t *testing.T) {
	snap := load(t, bookinfo("testdata/behaviour/mesh.yaml")...)
	m := Prepare(snap)
	ports := m.NamespacePorts()
	nc := m.Translate(Proxy{Node: "node-a"})
	seen := 0
	for _, l := range nc.Listeners {
		port := l.GetAddress().GetSocketAddress().GetPortValue()
		for ns, p := range ports {
			switch l.GetName() {
			case outboundListenerName(ns):
				seen++
				if port != p.Outbound {
					t.Errorf("%s on %d, want %d", l.GetName(), port, p.Outbound)
				}
			case inboundListenerName(ns):
				seen++
				if port != p.Inbound {
					t.Errorf("%s on %d, want %d", l.GetName(), port, p.Inbound)
				}
			}
		}
	}
	if seen != len(nc.Listeners) || seen == 0 {
		t.Errorf("matched %d of %d listeners to namespace ports %v", seen, len(nc.Listeners), ports)
	}
}
