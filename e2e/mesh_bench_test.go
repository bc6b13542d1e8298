package e2e

import "testing"

// meshPaths returns the eBPF paths (socket LB through a VIP, and same-node
// acceleration) once the node agent's Dataplane is available.
func meshPaths(t *testing.T, c *Cluster) []benchPath {
	reason := "nodeagent.Dataplane not wired into the benchmark yet"
	return []benchPath{
		{name: "eBPF socket LB (VIP)", skip: reason},
		{name: "eBPF + same-node accel", skip: reason, same: true},
	}
}
