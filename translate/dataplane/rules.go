package dataplane

import (
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	security "istio.io/api/security/v1beta1"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/config"
)

// How one AuthorizationPolicy rule becomes a kernel rule.
//
// A rule is enforced in the kernel only when everything it uses is an L4
// attribute with positive values: from.source principals, serviceAccounts,
// namespaces and ipBlocks; to.operation ports; when keys source.principal,
// source.namespace, source.ip and destination.port with values. Any other
// field that is set (hosts, methods, paths, requestPrincipals,
// remoteIpBlocks, trustDomains, every not* form, notValues, fields the API
// gains later) and the other when keys make it a proxy rule, enforced by
// Envoy RBAC in the node proxy (issue 6), as translate/authz.Split decides.
// trustDomains is the proxy's because the kernel knows only the identities
// of the mesh: it cannot tell a peer of another trust domain (or one with no
// certificate) from one of ours, so a rule on it would match any source.
// Unknown when keys are errors.
//
// Sources become sets of numeric identities: principals and namespaces
// (exact, "*", "prefix*" or "*suffix") and serviceAccounts match the
// identities known to the mesh; an ipBlock matches an identity when every
// IP of every one of its workloads is inside (ALLOW) or when any is (DENY),
// since the kernel decides per identity, not per IP.
//
// A value that cannot be read (bad principal, CIDR, port or when key) is
// reported and fails closed: in an ALLOW rule it matches nothing, in a
// DENY rule it makes its field match anything.

// idSet is a set of source identities; any means every source.
type idSet struct {
	any bool
	ids map[uint32]bool
}

func anyIDs() idSet { return idSet{any: true} }

func (a idSet) intersect(b idSet) idSet {
	switch {
	case a.any:
		return b
	case b.any:
		return a
	}
	out := idSet{ids: map[uint32]bool{}}
	for id := range a.ids {
		if b.ids[id] {
			out.ids[id] = true
		}
	}
	return out
}

func (a idSet) union(b idSet) idSet {
	if a.any || b.any {
		return anyIDs()
	}
	out := idSet{ids: maps.Clone(a.ids)}
	if out.ids == nil {
		out.ids = map[uint32]bool{}
	}
	maps.Copy(out.ids, b.ids)
	return out
}

func (a idSet) empty() bool { return !a.any && len(a.ids) == 0 }

func (a idSet) sorted() []uint32 {
	if a.any {
		return nil
	}
	return slices.Sorted(maps.Keys(a.ids))
}

// kernelRule is a rule resolved for the kernel.
type kernelRule struct {
	sources idSet
	ports   idSet // port numbers; any means every port
}

func (r kernelRule) msg() *dataplanev1.PolicyRule {
	return &dataplanev1.PolicyRule{Sources: r.sources.sorted(), Ports: r.ports.sorted()}
}

// ruleReader reads the rules of one policy.
type ruleReader struct {
	m    *Mesh
	obj  *config.Object
	deny bool
}

// kernelFields are the fields of each rule message the kernel enforces
// (by proto name); any other field that is set, including fields added to
// the API later, leaves the rule to the proxy.
var kernelFields = map[protoreflect.FullName]map[protoreflect.Name]bool{
	"istio.security.v1beta1.Rule":      {"from": true, "to": true, "when": true},
	"istio.security.v1beta1.Rule.From": {"source": true},
	"istio.security.v1beta1.Rule.To":   {"operation": true},
	"istio.security.v1beta1.Source": {"principals": true, "service_accounts": true, "namespaces": true,
		"ip_blocks": true},
	"istio.security.v1beta1.Operation": {"ports": true},
	"istio.security.v1beta1.Condition": {"key": true, "values": true},
}

// proxyOnly returns the path of the first field of rule i that the kernel
// cannot enforce, or "".
func proxyOnly(r *security.Rule, i int) string {
	if f := otherField(r.ProtoReflect()); f != "" {
		return fieldf("spec.rules[%d].%s", i, f)
	}
	for j, f := range r.GetFrom() {
		if o := otherField(f.ProtoReflect()); o != "" {
			return fieldf("spec.rules[%d].from[%d].%s", i, j, o)
		}
		if o := otherField(f.GetSource().ProtoReflect()); o != "" {
			return fieldf("spec.rules[%d].from[%d].source.%s", i, j, o)
		}
	}
	for j, t := range r.GetTo() {
		if o := otherField(t.ProtoReflect()); o != "" {
			return fieldf("spec.rules[%d].to[%d].%s", i, j, o)
		}
		if o := otherField(t.GetOperation().ProtoReflect()); o != "" {
			return fieldf("spec.rules[%d].to[%d].operation.%s", i, j, o)
		}
	}
	for k, c := range r.GetWhen() {
		if o := otherField(c.ProtoReflect()); o != "" {
			return fieldf("spec.rules[%d].when[%d].%s", i, k, o)
		}
		if proxyKey(c.GetKey()) {
			return fieldf("spec.rules[%d].when[%d].key", i, k)
		}
	}
	return ""
}

// otherField returns the JSON name of the first set field of m (in
// declaration order) that the kernel does not enforce, or "".
func otherField(m protoreflect.Message) string {
	if !m.IsValid() {
		return ""
	}
	known := kernelFields[m.Descriptor().FullName()]
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if m.Has(fd) && !known[fd.Name()] {
			return fd.JSONName()
		}
	}
	return ""
}

// proxyKey reports whether a when key is a known attribute only the proxy
// can check.
func proxyKey(k string) bool {
	switch {
	case strings.HasPrefix(k, "request.") || strings.HasPrefix(k, "experimental.envoy.filters."):
		return true
	case k == "remote.ip" || k == "destination.ip" || k == "connection.sni":
		return true
	}
	return false
}

// read resolves rule i; ok is false when it can match no known source
// (and so adds nothing).
func (rr *ruleReader) read(r *security.Rule, i int) (kernelRule, bool) {
	sources := anyIDs()
	if len(r.GetFrom()) > 0 {
		sources = idSet{ids: map[uint32]bool{}}
		for j, f := range r.GetFrom() {
			sources = sources.union(rr.source(f.GetSource(), fieldf("spec.rules[%d].from[%d].source", i, j)))
		}
	}
	ports := anyIDs()
	if len(r.GetTo()) > 0 {
		ports = idSet{ids: map[uint32]bool{}}
		for j, t := range r.GetTo() {
			ports = ports.union(rr.ports(t.GetOperation().GetPorts(), fieldf("spec.rules[%d].to[%d].operation.ports", i, j)))
		}
	}
	for k, c := range r.GetWhen() {
		field := fieldf("spec.rules[%d].when[%d]", i, k)
		if len(c.GetValues()) == 0 {
			rr.m.diags.Errorf(rr.obj, field+".values", "condition %q has no values", c.GetKey())
			if !rr.deny {
				return kernelRule{}, false
			}
			continue // fails closed: the DENY condition matches anything
		}
		switch c.GetKey() {
		case "source.principal":
			sources = sources.intersect(rr.principals(c.GetValues(), field+".values"))
		case "source.namespace":
			sources = sources.intersect(rr.namespaces(c.GetValues(), field+".values"))
		case "source.ip":
			sources = sources.intersect(rr.ipBlocks(c.GetValues(), field+".values"))
		case "destination.port":
			ports = ports.intersect(rr.ports(c.GetValues(), field+".values"))
		default:
			rr.m.diags.Errorf(rr.obj, field+".key", "unsupported condition key %q", c.GetKey())
			if !rr.deny {
				return kernelRule{}, false // fails closed: the ALLOW rule matches nothing
			}
		}
	}
	return kernelRule{sources: sources, ports: ports}, !sources.empty() && !ports.empty()
}

// source resolves one from.source: its fields are ANDed.
func (rr *ruleReader) source(s *security.Source, field string) idSet {
	out := anyIDs()
	if len(s.GetPrincipals()) > 0 {
		out = out.intersect(rr.principals(s.GetPrincipals(), field+".principals"))
	}
	if len(s.GetServiceAccounts()) > 0 {
		out = out.intersect(rr.serviceAccounts(s.GetServiceAccounts(), field+".serviceAccounts"))
	}
	if len(s.GetNamespaces()) > 0 {
		out = out.intersect(rr.namespaces(s.GetNamespaces(), field+".namespaces"))
	}
	if len(s.GetIpBlocks()) > 0 {
		out = out.intersect(rr.ipBlocks(s.GetIpBlocks(), field+".ipBlocks"))
	}
	return out
}

// values resolves a list of values with match, failing closed on bad ones.
func (rr *ruleReader) values(vals []string, field string, match func(v string) (idSet, string)) idSet {
	out := idSet{ids: map[uint32]bool{}}
	for i, v := range vals {
		set, bad := match(v)
		if bad != "" {
			rr.m.diags.Errorf(rr.obj, fieldf("%s[%d]", field, i), "%s", bad)
			if rr.deny {
				return anyIDs()
			}
			continue
		}
		out = out.union(set)
	}
	return out
}

func (rr *ruleReader) principals(vals []string, field string) idSet {
	td := rr.m.opts.trustDomain()
	return rr.values(vals, field, func(v string) (idSet, string) {
		if strings.Contains(v, "*") {
			if !validPattern(v) {
				return idSet{}, "principal " + strconv.Quote(v) + ": '*' is only supported alone, as a prefix or as a suffix"
			}
			return rr.m.identitiesWhere(func(ns, sa string) bool { return patternMatch(v, td+"/ns/"+ns+"/sa/"+sa) }), ""
		}
		parts := strings.Split(v, "/")
		if len(parts) != 5 || parts[0] == "" || parts[1] != "ns" || parts[2] == "" || parts[3] != "sa" || parts[4] == "" {
			return idSet{}, "principal " + strconv.Quote(v) + " is not of the form <trust domain>/ns/<namespace>/sa/<service account>"
		}
		if parts[0] != td {
			rr.m.diags.Warnf(rr.obj, field, "principal %q is in trust domain %q, not the mesh's %q: matches no workload", v, parts[0], td)
			return idSet{ids: map[uint32]bool{}}, ""
		}
		return rr.m.identity(parts[2], parts[4]), ""
	})
}

func (rr *ruleReader) serviceAccounts(vals []string, field string) idSet {
	return rr.values(vals, field, func(v string) (idSet, string) {
		ns, sa, ok := strings.Cut(v, "/")
		if !ok {
			ns, sa = rr.obj.Namespace, v
		}
		if ns == "" || sa == "" || strings.Contains(sa, "/") || strings.Contains(v, "*") {
			return idSet{}, "service account " + strconv.Quote(v) + " is not of the form [<namespace>/]<service account>"
		}
		return rr.m.identity(ns, sa), ""
	})
}

func (rr *ruleReader) namespaces(vals []string, field string) idSet {
	return rr.values(vals, field, func(v string) (idSet, string) {
		if v == "" || !validPattern(v) {
			return idSet{}, "namespace " + strconv.Quote(v) + ": '*' is only supported alone, as a prefix or as a suffix"
		}
		return rr.m.identitiesWhere(func(ns, _ string) bool { return patternMatch(v, ns) }), ""
	})
}

func (rr *ruleReader) ipBlocks(vals []string, field string) idSet {
	var blocks []netip.Prefix
	bad := false
	for i, v := range vals {
		p, err := parseBlock(v)
		if err != nil {
			rr.m.diags.Errorf(rr.obj, fieldf("%s[%d]", field, i), "%q is neither an IP address nor a CIDR", v)
			bad = true
			continue
		}
		blocks = append(blocks, p)
	}
	if bad && rr.deny {
		return anyIDs()
	}
	if rr.deny {
		rr.m.diags.Warnf(rr.obj, field, "the kernel denies the mesh workloads inside these blocks; other sources in them are denied only by the node proxy")
	}
	inside := func(ip netip.Addr) bool {
		return slices.ContainsFunc(blocks, func(p netip.Prefix) bool { return p.Contains(ip) })
	}
	out := idSet{ids: map[uint32]bool{}}
	for id, ws := range rr.m.byIdentity {
		all, some := true, false
		for _, w := range ws {
			for _, ip := range w.ips {
				in := inside(ip)
				all, some = all && in, some || in
			}
		}
		switch {
		case rr.deny && some, !rr.deny && all:
			out.ids[id] = true
		case some:
			rr.m.diags.Warnf(rr.obj, field, "only some workloads of identity %s/%s are inside; the kernel decides per identity, so it does not allow them", ws[0].ns, ws[0].sa)
		}
	}
	return out
}

func parseBlock(v string) (netip.Prefix, error) {
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		return p.Masked(), err
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func (rr *ruleReader) ports(vals []string, field string) idSet {
	if len(vals) == 0 {
		return anyIDs()
	}
	return rr.values(vals, field, func(v string) (idSet, string) {
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil || n == 0 {
			return idSet{}, "port " + strconv.Quote(v) + " is not a number in 1-65535"
		}
		return idSet{ids: map[uint32]bool{uint32(n): true}}, ""
	})
}

// validPattern: no '*', "*", "*suffix" or "prefix*".
func validPattern(v string) bool {
	n := strings.Count(v, "*")
	return n == 0 || n == 1 && (strings.HasPrefix(v, "*") || strings.HasSuffix(v, "*"))
}

// patternMatch matches Istio's string patterns: exact, "*", "prefix*",
// "*suffix".
func patternMatch(pattern, s string) bool {
	switch {
	case pattern == "*":
		return true
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(s, pattern[1:])
	case strings.HasSuffix(pattern, "*"):
		return strings.HasPrefix(s, pattern[:len(pattern)-1])
	}
	return pattern == s
}
