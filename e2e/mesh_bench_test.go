package e2e

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/nodemesh/nodemesh/nodeagent"
)

// benchMesh holds the node agents of the benchmark while the eBPF paths
// run; they are uninstalled in between so that the no-mesh paths run with
// no program attached at all.
type benchMesh struct {
	c      *Cluster
	agents []*agent
	spec   meshSpec
	vips   map[*Pod]netip.Addr
}

// meshPaths returns the eBPF paths: socket LB through a VIP whose only
// backend is the server pod, and the same with same-node acceleration
// (sockops + sk_msg; fortio and net/http never splice, so it is safe here).
func meshPaths(c *Cluster, dsts map[string]*Pod) (*benchMesh, []benchPath) {
	m := &benchMesh{c: c, vips: map[*Pod]netip.Addr{}}
	i := 0
	for _, placement := range []string{"cross-node", "same-node"} {
		dst := dsts[placement]
		i++
		vip := netip.AddrFrom4([4]byte{10, 78, 1, byte(i)})
		m.vips[dst] = vip
		m.spec.Services = append(m.spec.Services, nodeagent.Service{VIP: vip, Port: 80, Proto: nodeagent.TCP,
			Backends: []nodeagent.Backend{{IP: dst.IP, Port: 8080}}})
	}
	lb := func(t *testing.T, dst *Pod) (string, func()) {
		return fmt.Sprintf("http://%s:80/", m.vips[dst]), func() {}
	}
	accel := func(t *testing.T, dst *Pod) (string, func()) {
		spec := m.spec
		spec.Accelerate = []nodeagent.Acceleration{{Namespace: "default", SpliceSafe: true}}
		applyMesh(t, c, m.agents, spec)
		return fmt.Sprintf("http://%s:80/", m.vips[dst]), func() { applyMesh(t, c, m.agents, m.spec) }
	}
	return m, []benchPath{
		// What the attached programs (cgroup_skb ingress on every packet)
		// cost traffic that uses no service.
		{name: "direct, agent attached", setup: directPath, mesh: true},
		{name: "eBPF socket LB (VIP)", setup: lb, mesh: true},
		{name: "eBPF LB + same-node accel", setup: accel, mesh: true, same: true},
	}
}

// up opens an agent per node and applies the benchmark's services.
func (m *benchMesh) up(t *testing.T) {
	m.agents = startAgents(t, m.c)
	applyMesh(t, m.c, m.agents, m.spec)
}

// down detaches and unpins everything.
func (m *benchMesh) down(t *testing.T) {
	for _, a := range m.agents {
		if err := a.dp.Uninstall(); err != nil {
			t.Fatalf("uninstall on %s: %v", a.node.Name, err)
		}
	}
	m.agents = nil
}
