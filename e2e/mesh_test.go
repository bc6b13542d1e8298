package e2e

import (
	"context"
	"testing"

	"github.com/nodemesh/nodemesh/nodeagent"
)

// meshSpec is the cluster-wide intent from which each node's State is cut,
// as the control plane would: every pod is a workload everywhere, local pods
// carry their cgroup.
type meshSpec struct {
	Services   []nodeagent.Service
	Policies   []nodeagent.PolicyRule
	Accelerate []nodeagent.Acceleration
	// Redirects per node index (1-based): each node's proxy listens on its
	// own address.
	Redirects map[int][]nodeagent.Redirect
	// Identity and Namespace of a pod by name; defaults: 1000+index in
	// c.Pods() order, namespace "default".
	Identity  map[string]uint32
	Namespace map[string]string
}

func (s meshSpec) identity(c *Cluster, p *Pod) uint32 {
	if id, ok := s.Identity[p.Name]; ok {
		return id
	}
	for i, q := range c.Pods() {
		if q == p {
			return uint32(1000 + i)
		}
	}
	return 999
}

func (s meshSpec) namespace(p *Pod) string {
	if ns, ok := s.Namespace[p.Name]; ok {
		return ns
	}
	return "default"
}

// nodeState is the State of node n.
func (s meshSpec) nodeState(c *Cluster, n *Node) nodeagent.State {
	st := nodeagent.State{
		Services:   s.Services,
		Policies:   s.Policies,
		Accelerate: s.Accelerate,
		Redirects:  s.Redirects[n.Index],
	}
	for _, p := range c.Pods() {
		w := nodeagent.Workload{IP: p.IP, Identity: s.identity(c, p), Namespace: s.namespace(p)}
		if p.Node == n {
			w.Local = true
			w.Cgroup = p.Cgroup
		}
		st.Workloads = append(st.Workloads, w)
	}
	return st
}

// applyMesh applies spec on every agent.
func applyMesh(t *testing.T, c *Cluster, agents []*agent, spec meshSpec) {
	t.Helper()
	for _, a := range agents {
		if _, err := a.dp.Apply(context.Background(), spec.nodeState(c, a.node)); err != nil {
			t.Fatalf("apply on %s: %v", a.node.Name, err)
		}
	}
}
