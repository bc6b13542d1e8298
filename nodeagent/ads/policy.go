package ads

import (
	"cmp"
	"fmt"
	"maps"
	"slices"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/nodeagent"
)

type policyKey struct {
	dst, src uint32
	port     uint16
	proto    nodeagent.Proto
}

// addPolicy expands a policy into kernel rules: every selected identity x
// source x port. A DENY wins over an ALLOW with the same key. An ALLOW
// policy with no rules allows nothing (Istio semantics): it becomes an
// ALLOW for the host identity only, which turns on default deny for the
// selected workloads while matching no workload.
func addPolicy(rules map[policyKey]nodeagent.Verdict, name string, p *dataplanev1.Policy) error {
	errf := func(format string, args ...any) error {
		return fmt.Errorf("policy %s: "+format, append([]any{name}, args...)...)
	}
	var verdict nodeagent.Verdict
	switch p.GetAction() {
	case dataplanev1.Action_ALLOW:
		verdict = nodeagent.Allow
	case dataplanev1.Action_DENY:
		verdict = nodeagent.Deny
	default:
		return errf("action: %s is not ALLOW or DENY", p.GetAction())
	}
	for i, dst := range p.GetSelected() {
		if dst == nodeagent.IdentityUnknown {
			return errf("selected[%d]: identity 0 is reserved", i)
		}
	}
	add := func(k policyKey) {
		if old, ok := rules[k]; !ok || old != nodeagent.Deny {
			rules[k] = verdict
		}
	}
	if n := policySize(p); n > MaxPolicyRules {
		return errf("expands to %d kernel rules (selected x sources x ports), more than %d", n, MaxPolicyRules)
	}
	if len(p.GetRules()) == 0 && verdict == nodeagent.Allow {
		for _, dst := range p.GetSelected() {
			add(policyKey{dst: dst, src: nodeagent.IdentityHost})
		}
		return nil
	}
	for ri, r := range p.GetRules() {
		proto, err := protocol(r.GetProtocol(), nodeagent.ProtoAny)
		if err != nil {
			return errf("rules[%d].protocol: %w", ri, err)
		}
		srcs := r.GetSources()
		if len(srcs) == 0 {
			srcs = []uint32{0}
		}
		ports := make([]uint16, 0, len(r.GetPorts()))
		for pi, pv := range r.GetPorts() {
			port, err := port16(pv)
			if err != nil || port == 0 {
				return errf("rules[%d].ports[%d]: %d is not a port", ri, pi, pv)
			}
			ports = append(ports, port)
		}
		if len(ports) == 0 {
			ports = []uint16{0}
		}
		for _, dst := range p.GetSelected() {
			for _, src := range srcs {
				for _, port := range ports {
					add(policyKey{dst: dst, src: src, port: port, proto: proto})
				}
			}
		}
	}
	return nil
}

// MaxPolicyRules bounds the kernel rules one policy may expand to, so that
// a broken resource cannot make the agent build an unbounded rule set.
const MaxPolicyRules = 1 << 20

// policySize is the number of kernel rules p expands to.
func policySize(p *dataplanev1.Policy) int {
	n := 0
	for _, r := range p.GetRules() {
		n += max(len(r.GetSources()), 1) * max(len(r.GetPorts()), 1)
		if n > MaxPolicyRules {
			return n * len(p.GetSelected())
		}
	}
	return n * len(p.GetSelected())
}

func sortedRules(rules map[policyKey]nodeagent.Verdict) []nodeagent.PolicyRule {
	keys := slices.SortedFunc(maps.Keys(rules), func(a, b policyKey) int {
		return cmp.Or(cmp.Compare(a.dst, b.dst), cmp.Compare(a.src, b.src), cmp.Compare(a.port, b.port), cmp.Compare(a.proto, b.proto))
	})
	out := make([]nodeagent.PolicyRule, 0, len(keys))
	for _, k := range keys {
		out = append(out, nodeagent.PolicyRule{DstIdentity: k.dst, SrcIdentity: k.src, Port: k.port, Proto: k.proto, Verdict: rules[k]})
	}
	return out
}
