package dataplane

import (
	"slices"

	security "istio.io/api/security/v1beta1"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
)

// AuthorizationPolicies in the kernel (L4) and in the node proxy (L7).
//
// The kernel decides per destination identity (namespace/service account):
// no rule allows everything, an ALLOW rule makes the identity default deny,
// a matching DENY rule always wins. Istio decides per workload: DENY
// policies first, then, if any ALLOW policy selects the workload, one must
// match. The split keeps Istio's verdict and never weakens it:
//
//   - ALLOW: the ALLOW policies of an identity are all enforced in ONE
//     place. They go to the kernel only when every one of them selects
//     every workload of the identity and has no proxy rule (rules.go);
//     otherwise none of them does, the identity's services are marked l7
//     and the node proxy (Envoy RBAC) enforces the whole set. Splitting
//     them would be wrong both ways: a kernel default deny would drop
//     sources that only an L7 rule allows before they reach the proxy.
//   - DENY: each L4 rule of a DENY policy that selects every workload of
//     the identity is enforced in the kernel (denying in the kernel what
//     the proxy would deny too is safe); its proxy rules, and DENY
//     policies that select only some workloads of the identity, go to the
//     proxy and mark the services l7.
//   - CUSTOM (ext_authz) is enforced by the proxy: services marked l7.
//     AUDIT changes no verdict and is ignored. Policies with targetRef(s)
//     (waypoints, gateways) do not apply to workloads here and are skipped.
//   - Selection: spec.selector.matchLabels picks pods of the policy's
//     namespace (of every namespace for the root namespace istio-system);
//     no selector selects all of them.
//
// An ALLOW policy without rules, or whose rules all resolve to nothing,
// becomes a Policy without rules: deny all (the agent's convention).
// "rules: [{}]" becomes one rule with no sources and no ports: allow all.
//
// Limits, for the agent and the proxy: l7 redirects only connects to
// service VIPs, so a client dialling a proxy-enforced pod's IP directly is
// not checked in the kernel; UDP never goes through the proxy, so the UDP
// ports of such a pod are not checked either (as with Istio sidecars).
// Traffic from the node proxy reaches pods with the host identity and
// skips kernel policy, so Envoy RBAC must hold every policy, L4 rules
// included (translate/authz builds them all); traffic proxied from another
// node arrives from that node's IP, which the kernel knows only if the
// agent registers it as the host identity.

// policy is one AuthorizationPolicy that applies to workloads.
type policy struct {
	obj      *config.Object
	action   dataplanev1.Action
	custom   bool
	selected []*workload
	rules    []*dataplanev1.PolicyRule // kernel rules
	proxy    []string                  // fields of the rules left to the proxy
	// kernelFor holds the identities the kernel enforces this policy for.
	kernelFor map[uint32]bool
}

// identityPolicy is what resolvePolicies decided for one identity.
type identityPolicy struct {
	proxy bool // some of its policy is enforced by the node proxy: services l7
}

func (m *Mesh) readPolicies() {
	for _, o := range m.src.List(config.KindAuthorizationPolicy) {
		ap, ok := o.Spec.(*security.AuthorizationPolicy)
		if !ok {
			m.diags.Errorf(o, "spec", "unexpected spec type %T", o.Spec)
			continue
		}
		if ap.GetTargetRef() != nil || len(ap.GetTargetRefs()) > 0 {
			m.diags.Warnf(o, "spec.targetRefs", "policies attached to gateways or waypoints are not enforced by the node data plane; skipped")
			continue
		}
		p := &policy{obj: o, kernelFor: map[uint32]bool{}}
		switch ap.GetAction() {
		case security.AuthorizationPolicy_ALLOW:
			p.action = dataplanev1.Action_ALLOW
		case security.AuthorizationPolicy_DENY:
			p.action = dataplanev1.Action_DENY
		case security.AuthorizationPolicy_CUSTOM:
			p.custom = true
			m.diags.Infof(o, "spec.action", "CUSTOM is enforced by ext_authz in the node proxy; the selected services are redirected to it")
		case security.AuthorizationPolicy_AUDIT:
			m.diags.Infof(o, "spec.action", "AUDIT does not change verdicts; not enforced by the node data plane")
			continue
		default:
			m.diags.Errorf(o, "spec.action", "unknown action %v; skipped", ap.GetAction())
			continue
		}
		p.selected = m.selectWorkloads(o, ap.GetSelector().GetMatchLabels())
		if !p.custom {
			m.readRules(p, ap.GetRules())
		}
		m.policies = append(m.policies, p)
	}
}

// selectWorkloads returns the workloads a policy selects, sorted.
func (m *Mesh) selectWorkloads(o *config.Object, labels map[string]string) []*workload {
	var out []*workload
	for _, w := range m.workloads {
		if (o.Namespace == translate.RootNamespace || w.ns == o.Namespace) && labelsMatch(labels, w.obj.Labels) {
			out = append(out, w)
		}
	}
	return out
}

func labelsMatch(selector, labels map[string]string) bool {
	for k, v := range selector {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// readRules splits the rules of p into kernel rules and proxy rules.
func (m *Mesh) readRules(p *policy, rules []*security.Rule) {
	rr := &ruleReader{m: m, obj: p.obj, deny: p.action == dataplanev1.Action_DENY}
	p.rules = []*dataplanev1.PolicyRule{} // an ALLOW without rules still denies all
	for i, r := range rules {
		if field := proxyOnly(r, i); field != "" {
			p.proxy = append(p.proxy, field)
			m.diags.Infof(p.obj, field, "rule %d uses an L7 or negated attribute: enforced by Envoy RBAC in the node proxy, not in the kernel", i)
			continue
		}
		if kr, ok := rr.read(r, i); ok {
			p.rules = append(p.rules, kr.msg())
		}
	}
}

// resolvePolicies decides, per identity, which policies the kernel enforces
// (see the comment at the top of this file).
func (m *Mesh) resolvePolicies() {
	byIdentity := map[uint32][]*policy{}
	for _, p := range m.policies {
		for _, w := range p.selected {
			if l := byIdentity[w.identity]; len(l) == 0 || l[len(l)-1] != p {
				byIdentity[w.identity] = append(l, p)
			}
		}
	}
	for _, id := range sortedKeys(byIdentity) {
		ip := &identityPolicy{}
		m.kernel[id] = ip
		all := m.byIdentity[id]
		var allows []*policy
		allowInProxy := false
		for _, p := range byIdentity[id] {
			full := selectsAll(p, all)
			switch {
			case p.custom:
				ip.proxy = true
			case p.action == dataplanev1.Action_ALLOW:
				allows = append(allows, p)
				if !full || len(p.proxy) > 0 {
					allowInProxy = true
				}
			case !full:
				ip.proxy = true
				m.diags.Warnf(p.obj, "spec.selector", "selects only some workloads of identity %s/%s; the kernel decides per identity, so the node proxy enforces this DENY policy for it", all[0].ns, all[0].sa)
			default:
				p.kernelFor[id] = true
				ip.proxy = ip.proxy || len(p.proxy) > 0
			}
		}
		if allowInProxy {
			ip.proxy = true
			for _, p := range allows {
				m.diags.Infof(p.obj, "spec", "identity %s/%s: its ALLOW policies are all enforced by the node proxy (one of them has L7 rules or selects only some of its workloads)", all[0].ns, all[0].sa)
			}
			continue
		}
		for _, p := range allows {
			p.kernelFor[id] = true
		}
	}
}

// selectsAll reports whether p selects every workload in all (the
// workloads of one identity; p.selected is in the same order).
func selectsAll(p *policy, all []*workload) bool {
	i := 0
	for _, w := range p.selected {
		if i < len(all) && w == all[i] {
			i++
		}
	}
	return i == len(all)
}

// policyFor returns the Policy resource of p for the identities in local,
// or nil when the kernel enforces it for none of them.
func (p *policy) policyFor(local map[uint32]bool) *dataplanev1.Policy {
	var selected []uint32
	for id := range p.kernelFor {
		if local[id] {
			selected = append(selected, id)
		}
	}
	if len(selected) == 0 || p.action == dataplanev1.Action_DENY && len(p.rules) == 0 {
		return nil
	}
	slices.Sort(selected)
	return &dataplanev1.Policy{Namespace: p.obj.Namespace, Name: p.obj.Name, Action: p.action, Selected: selected, Rules: p.rules}
}
