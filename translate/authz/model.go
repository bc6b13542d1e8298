package authz

import (
	"fmt"
	"strings"

	"github.com/nodemesh/nodemesh/config"
)

// Action is what a policy does with the requests its rules match.
type Action int

const (
	ActionAllow  Action = iota // allow what matches; with any ALLOW policy, deny the rest
	ActionDeny                 // deny what matches
	ActionAudit                // log what matches, decide nothing
	ActionCustom               // ask the ext_authz provider about what matches
)

func (a Action) String() string {
	switch a {
	case ActionAllow:
		return "ALLOW"
	case ActionDeny:
		return "DENY"
	case ActionAudit:
		return "AUDIT"
	case ActionCustom:
		return "CUSTOM"
	}
	return "SMI-ALLOW"
}

// Policy is one authorization policy in nodemesh's own model (no Envoy
// types), from an Istio AuthorizationPolicy or an SMI TrafficTarget.
type Policy struct {
	Namespace, Name string
	Action          Action
	Provider        string // CUSTOM only: the ext_authz provider name
	// Rules are ORed. An ALLOW policy with no rules matches nothing (so it
	// denies everything); a rule with no clauses matches everything.
	Rules []Rule
	// Object is the source object, for diagnostics.
	Object *config.Object
	// SMI marks a policy from an SMI TrafficTarget; it then selects the
	// workloads of Namespace running as DestServiceAccount.
	SMI                bool
	DestServiceAccount string
}

// RuleName is the Envoy RBAC policy name of rule i, as Istio names it.
func (p *Policy) RuleName(i int) string {
	return fmt.Sprintf("ns[%s]-policy[%s]-rule[%d]", p.Namespace, p.Name, i)
}

// Rule matches a request when one of its Principals clauses and one of its
// Permissions clauses match (an empty list matches everything).
type Rule struct {
	Principals  []Clause // who: from[] (+ when conditions on the peer or token)
	Permissions []Clause // what: to[] (+ when conditions on the request)
	Field       string   // e.g. spec.rules[2], for diagnostics
}

// Clause is an AND of attributes.
type Clause []Attr

// Attr is one attribute test, keyed like Istio's conditions
// (source.principal, request.headers[x-token], destination.port, ...). It
// matches when the attribute matches one of Values (if any) and none of
// NotValues.
type Attr struct {
	Key       string
	Values    []string
	NotValues []string
	Field     string // e.g. spec.rules[0].from[1].source.principals
}

// Attribute keys. Istio's condition keys are used as they are; source and
// operation fields map to the same keys. The smi.* keys carry what SMI
// expresses with regular expressions.
const (
	keySourcePrincipal  = "source.principal"
	keySourceNamespace  = "source.namespace"
	keySourceIP         = "source.ip"
	keyRemoteIP         = "remote.ip"
	keyRequestPrincipal = "request.auth.principal"
	keyAudiences        = "request.auth.audiences"
	keyPresenter        = "request.auth.presenter"
	keyClaimsPrefix     = "request.auth.claims["
	keyHeadersPrefix    = "request.headers["
	keyDestPort         = "destination.port"
	keyDestIP           = "destination.ip"
	keySNI              = "connection.sni"
	keyHost             = "request.host"
	keyMethod           = "request.method"
	keyPath             = "request.url_path"
	keyExperimental     = "experimental.envoy.filters."
	keyTrustDomain      = "source.trust_domain" // Istio's source.trustDomains, as principal patterns "<td>/*"
	keySMIPathRegex     = "smi.path_regex"
	keySMIHeaderPrefix  = "smi.header_regex["
)

// l4Keys are the attributes the kernel data plane can enforce: peer
// identity (workload IP -> identity), its namespace, source IP, port.
var l4Keys = map[string]bool{
	keySourcePrincipal: true, keySourceNamespace: true, keySourceIP: true, keyDestPort: true,
}

// isPrincipalKey says whether an attribute is about who sends the request
// (Envoy RBAC principal) rather than what it asks for (permission). As in
// Istio, request headers and token attributes are principals.
func isPrincipalKey(key string) bool {
	switch {
	case key == keySourcePrincipal, key == keyTrustDomain, key == keySourceNamespace, key == keySourceIP, key == keyRemoteIP,
		key == keyRequestPrincipal, key == keyAudiences, key == keyPresenter,
		strings.HasPrefix(key, keyClaimsPrefix), strings.HasPrefix(key, keyHeadersPrefix):
		return true
	}
	return false
}

// httpOnly says whether an attribute needs HTTP (cannot be checked on a TCP
// connection), as Istio decides for its TCP filter chains.
func httpOnly(key string) bool {
	switch {
	case key == keyRequestPrincipal, key == keyAudiences, key == keyPresenter,
		key == keyHost, key == keyMethod, key == keyPath, key == keySMIPathRegex,
		strings.HasPrefix(key, keyClaimsPrefix), strings.HasPrefix(key, keyHeadersPrefix),
		strings.HasPrefix(key, keySMIHeaderPrefix):
		return true
	}
	return false
}

// Split reports whether every rule of the policy is L4-only (SplitRule), so
// the kernel can enforce it. AUDIT and CUSTOM policies always need the
// proxy. An ALLOW policy with no rules (deny all) is L4-only.
func Split(p *Policy) (l4Only bool) {
	if p.Action != ActionAllow && p.Action != ActionDeny {
		return false
	}
	for _, r := range p.Rules {
		if !SplitRule(r) {
			return false
		}
	}
	return true
}

// SplitRule reports whether a rule uses only L4 attributes with positive
// values: Istio's principals, serviceAccounts, namespaces, ipBlocks, ports,
// and when keys source.principal, source.namespace, source.ip,
// destination.port with values. Every not-form needs the proxy (the kernel
// matches sets of identities; "not" over identities it does not know would
// weaken the verdict). This is translate/dataplane's classification
// (TestSplitAgreesWithDataplane).
func SplitRule(r Rule) bool {
	for _, list := range [][]Clause{r.Principals, r.Permissions} {
		for _, c := range list {
			for _, a := range c {
				if !l4Keys[a.Key] || len(a.NotValues) > 0 {
					return false
				}
			}
		}
	}
	return true
}

// SplitObject is Split for a stored AuthorizationPolicy; a policy that does
// not translate cleanly is not L4-only (the proxy must see it, and reports
// it).
func SplitObject(o *config.Object, opts Options) bool {
	p, diags := FromAuthorizationPolicy(o, opts)
	return p != nil && !config.HasErrors(diags) && Split(p)
}
