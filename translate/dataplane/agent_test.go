package dataplane

import (
	"net/netip"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/nodeagent"
	"github.com/nodemesh/nodemesh/nodeagent/ads"
)

// The node agent is the real consumer of these resources: these helpers run
// them through its converter (nodeagent/ads.ToState, what the ADS client
// applies) and evaluate the kernel's policy semantics on the result.

var proxyIP = netip.MustParseAddr("192.0.2.1")

// agentState converts a node's resources as the agent does; any error (the
// agent would NACK) fails the test.
func agentState(t testing.TB, r *Resources, node string) nodeagent.State {
	t.Helper()
	res := &ads.Resources{
		Listeners: map[string]*dataplanev1.NamespaceListener{},
		Workloads: map[string]*dataplanev1.Workload{},
		Services:  map[string]*dataplanev1.Service{},
		Policies:  map[string]*dataplanev1.Policy{},
	}
	for _, m := range r.Listeners {
		res.Listeners[ResourceName(m)] = m
	}
	for _, m := range r.Workloads {
		res.Workloads[ResourceName(m)] = m
	}
	for _, m := range r.Services {
		res.Services[ResourceName(m)] = m
	}
	for _, m := range r.Policies {
		res.Policies[ResourceName(m)] = m
	}
	if res.Len() != len(r.Listeners)+len(r.Workloads)+len(r.Services)+len(r.Policies) {
		t.Fatalf("node %s: resource names are not unique", node)
	}
	for _, names := range [][]string{names(r.Listeners), names(r.Workloads), names(r.Services), names(r.Policies)} {
		if !slices.IsSorted(names) {
			t.Fatalf("node %s: resources not sorted by name: %v", node, names)
		}
	}
	st, err := ads.ToState(res, ads.StateConfig{Node: node, ProxyIP: proxyIP})
	if err != nil {
		t.Fatalf("node %s: the agent refuses the resources: %v", node, err)
	}
	if err := st.Validate(); err != nil { // what Dataplane.Apply checks first
		t.Fatalf("node %s: the kernel half refuses the state: %v", node, err)
	}
	return st
}

// kernelVerdict evaluates the kernel's L4 policy (bpf policy_verdict, as
// documented on nodeagent.PolicyRule) for a TCP connection from src to
// dst:port: the host bypasses policy; a matching DENY wins; a destination
// identity with any ALLOW rule is default deny; otherwise allow.
func kernelVerdict(st nodeagent.State, src, dst netip.Addr, port uint16) nodeagent.Verdict {
	ids := map[netip.Addr]uint32{}
	for _, w := range st.Workloads {
		ids[w.IP] = w.Identity
	}
	dstID, ok := ids[dst]
	if !ok {
		return nodeagent.Allow
	}
	srcID := ids[src] // 0: unknown
	if srcID == nodeagent.IdentityHost {
		return nodeagent.Allow
	}
	hasAllow, allowed := false, false
	for _, r := range st.Policies {
		if r.DstIdentity != dstID {
			continue
		}
		if r.Verdict == nodeagent.Allow {
			hasAllow = true
		}
		if (r.SrcIdentity == 0 || r.SrcIdentity == srcID) && (r.Port == 0 || r.Port == port) && (r.Proto == nodeagent.ProtoAny || r.Proto == nodeagent.TCP) {
			if r.Verdict == nodeagent.Deny {
				return nodeagent.Deny
			}
			allowed = true
		}
	}
	if hasAllow && !allowed {
		return nodeagent.Deny
	}
	return nodeagent.Allow
}

func names[M proto.Message](list []M) []string {
	out := make([]string, len(list))
	for i, m := range list {
		out[i] = ResourceName(m)
	}
	return out
}
