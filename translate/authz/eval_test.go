package authz

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	uritemplatev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/path/match/uri_template/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// An evaluator for the subset of Envoy's RBAC and ext_authz filters this
// package emits, written from Envoy's documentation of each matcher. It runs
// a request through the filters in order, as Envoy's filter chain would.

type request struct {
	principal string // peer's SPIFFE ID (URI SAN); "" when not mTLS
	sourceIP  string // downstream direct remote address
	remoteIP  string // original client (XFF); sourceIP when empty
	destIP    string
	port      uint32
	sni       string
	host      string
	method    string
	path      string // may carry a query
	headers   map[string]string
	// jwt is the verified token's payload as jwt_authn writes it into
	// metadata (nil: no token).
	jwt map[string]any
	// extAuthz is the external authorizer's answer (nil: allow).
	extAuthz func(r *request) bool

	metadata map[string]map[string]any // filter -> key -> value, filled while evaluating
}

func (r *request) header(name string) (string, bool) {
	switch strings.ToLower(name) {
	case ":method":
		return r.method, r.method != ""
	case ":authority", "host":
		return r.host, r.host != ""
	case ":path":
		return r.path, r.path != ""
	}
	for k, v := range r.headers {
		if strings.EqualFold(k, name) {
			return v, true
		}
	}
	return "", false
}

type verdict struct {
	allowed bool
	by      string // filter index and policy that decided; for messages
	logged  []string
}

// evalHTTP runs r through the HTTP filters (RBAC and ext_authz).
func evalHTTP(t *testing.T, filters []*hcmv3.HttpFilter, r request) verdict {
	t.Helper()
	r.metadata = map[string]map[string]any{}
	if r.jwt != nil {
		r.metadata[JWTFilterName] = map[string]any{JWTPayloadKey: r.jwt}
	}
	var v verdict
	for i, f := range filters {
		m, err := f.GetTypedConfig().UnmarshalNew()
		if err != nil {
			t.Fatalf("filter %d: %v", i, err)
		}
		switch cfg := m.(type) {
		case *rbachttpv3.RBAC:
			if sr := cfg.GetShadowRules(); sr != nil {
				if name, ok := firstMatch(t, sr, &r); ok && sr.GetAction() == rbacv3.RBAC_ALLOW {
					md := r.metadata[RBACHTTPFilterName]
					if md == nil {
						md = map[string]any{}
						r.metadata[RBACHTTPFilterName] = md
					}
					md[cfg.GetShadowRulesStatPrefix()+"shadow_effective_policy_id"] = name
				}
			}
			if rules := cfg.GetRules(); rules != nil {
				name, ok := firstMatch(t, rules, &r)
				switch rules.GetAction() {
				case rbacv3.RBAC_ALLOW:
					if !ok {
						return verdict{by: fmt.Sprintf("filter %d (ALLOW): no policy matched", i), logged: v.logged}
					}
				case rbacv3.RBAC_DENY:
					if ok {
						return verdict{by: fmt.Sprintf("filter %d (DENY): %s", i, name), logged: v.logged}
					}
				case rbacv3.RBAC_LOG:
					if ok {
						v.logged = append(v.logged, name)
					}
				}
			}
		case *extauthzv3.ExtAuthz:
			if em := cfg.GetFilterEnabledMetadata(); em != nil && !matchMetadata(t, em, &r) {
				continue
			}
			if r.extAuthz != nil && !r.extAuthz(&r) {
				return verdict{by: fmt.Sprintf("filter %d (ext_authz)", i), logged: v.logged}
			}
		default:
			t.Fatalf("filter %d: evaluator does not know %T", i, m)
		}
	}
	v.allowed = true
	return v
}

// firstMatch returns the name of a matching policy (names in sorted order,
// as Envoy reports the first match it finds in its ordered map).
func firstMatch(t *testing.T, rules *rbacv3.RBAC, r *request) (string, bool) {
	var names []string
	for name := range rules.GetPolicies() {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		p := rules.GetPolicies()[name]
		if anyPermissionMatches(t, p.GetPermissions(), r) && anyPrincipalMatches(t, p.GetPrincipals(), r) {
			return name, true
		}
	}
	return "", false
}

func anyPermissionMatches(t *testing.T, ps []*rbacv3.Permission, r *request) bool {
	for _, p := range ps {
		if matchPermission(t, p, r) {
			return true
		}
	}
	return false
}

func anyPrincipalMatches(t *testing.T, ps []*rbacv3.Principal, r *request) bool {
	for _, p := range ps {
		if matchPrincipal(t, p, r) {
			return true
		}
	}
	return false
}

func matchPermission(t *testing.T, p *rbacv3.Permission, r *request) bool {
	switch rule := p.GetRule().(type) {
	case *rbacv3.Permission_Any:
		return rule.Any
	case *rbacv3.Permission_AndRules:
		for _, q := range rule.AndRules.GetRules() {
			if !matchPermission(t, q, r) {
				return false
			}
		}
		return true
	case *rbacv3.Permission_OrRules:
		return anyPermissionMatches(t, rule.OrRules.GetRules(), r)
	case *rbacv3.Permission_NotRule:
		return !matchPermission(t, rule.NotRule, r)
	case *rbacv3.Permission_Header:
		return matchHeader(t, rule.Header, r)
	case *rbacv3.Permission_UrlPath:
		path, _, _ := strings.Cut(r.path, "?")
		return matchString(t, rule.UrlPath.GetPath(), path)
	case *rbacv3.Permission_DestinationPort:
		return r.port == rule.DestinationPort
	case *rbacv3.Permission_DestinationIp:
		return inCIDR(t, rule.DestinationIp.GetAddressPrefix(), rule.DestinationIp.GetPrefixLen().GetValue(), r.destIP)
	case *rbacv3.Permission_RequestedServerName:
		return matchString(t, rule.RequestedServerName, r.sni)
	case *rbacv3.Permission_Metadata:
		return matchMetadata(t, rule.Metadata, r)
	case *rbacv3.Permission_UriTemplate:
		var cfg uritemplatev3.UriTemplateMatchConfig
		if err := rule.UriTemplate.GetTypedConfig().UnmarshalTo(&cfg); err != nil {
			t.Fatalf("uri template: %v", err)
		}
		path, _, _ := strings.Cut(r.path, "?")
		return matchURITemplate(cfg.GetPathTemplate(), path)
	}
	t.Fatalf("evaluator does not know permission %T", p.GetRule())
	return false
}

func matchPrincipal(t *testing.T, p *rbacv3.Principal, r *request) bool {
	switch id := p.GetIdentifier().(type) {
	case *rbacv3.Principal_Any:
		return id.Any
	case *rbacv3.Principal_AndIds:
		for _, q := range id.AndIds.GetIds() {
			if !matchPrincipal(t, q, r) {
				return false
			}
		}
		return true
	case *rbacv3.Principal_OrIds:
		return anyPrincipalMatches(t, id.OrIds.GetIds(), r)
	case *rbacv3.Principal_NotId:
		return !matchPrincipal(t, id.NotId, r)
	case *rbacv3.Principal_Authenticated_:
		if r.principal == "" { // no TLS peer certificate
			return false
		}
		if id.Authenticated.GetPrincipalName() == nil {
			return true
		}
		return matchString(t, id.Authenticated.GetPrincipalName(), r.principal)
	case *rbacv3.Principal_DirectRemoteIp:
		return inCIDR(t, id.DirectRemoteIp.GetAddressPrefix(), id.DirectRemoteIp.GetPrefixLen().GetValue(), r.sourceIP)
	case *rbacv3.Principal_RemoteIp:
		ip := r.remoteIP
		if ip == "" {
			ip = r.sourceIP
		}
		return inCIDR(t, id.RemoteIp.GetAddressPrefix(), id.RemoteIp.GetPrefixLen().GetValue(), ip)
	case *rbacv3.Principal_Header:
		return matchHeader(t, id.Header, r)
	case *rbacv3.Principal_Metadata:
		return matchMetadata(t, id.Metadata, r)
	}
	t.Fatalf("evaluator does not know principal %T", p.GetIdentifier())
	return false
}

func matchHeader(t *testing.T, h *routev3.HeaderMatcher, r *request) bool {
	v, ok := r.header(h.GetName())
	var m bool
	switch spec := h.GetHeaderMatchSpecifier().(type) {
	case *routev3.HeaderMatcher_PresentMatch:
		m = ok == spec.PresentMatch
	case *routev3.HeaderMatcher_StringMatch:
		m = ok && matchString(t, spec.StringMatch, v)
	default:
		t.Fatalf("evaluator does not know header matcher %T", spec)
	}
	return m != h.GetInvertMatch()
}

func matchString(t *testing.T, m *matcherv3.StringMatcher, v string) bool {
	fold := func(s string) string {
		if m.GetIgnoreCase() {
			return strings.ToLower(s)
		}
		return s
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		return fold(v) == fold(p.Exact)
	case *matcherv3.StringMatcher_Prefix:
		return strings.HasPrefix(fold(v), fold(p.Prefix))
	case *matcherv3.StringMatcher_Suffix:
		return strings.HasSuffix(fold(v), fold(p.Suffix))
	case *matcherv3.StringMatcher_Contains:
		return strings.Contains(fold(v), fold(p.Contains))
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := regexp.Compile("^(?:" + p.SafeRegex.GetRegex() + ")$") // RE2, full match
		if err != nil {
			t.Fatalf("regex %q: %v", p.SafeRegex.GetRegex(), err)
		}
		return re.MatchString(v)
	}
	t.Fatalf("evaluator does not know string matcher %T", m.GetMatchPattern())
	return false
}

func matchMetadata(t *testing.T, m *matcherv3.MetadataMatcher, r *request) bool {
	var cur any = map[string]any(r.metadata[m.GetFilter()])
	for _, seg := range m.GetPath() {
		obj, ok := cur.(map[string]any)
		if !ok {
			cur = nil
			break
		}
		cur = obj[seg.GetKey()]
	}
	return matchValue(t, m.GetValue(), cur) != m.GetInvert()
}

func matchValue(t *testing.T, vm *matcherv3.ValueMatcher, v any) bool {
	switch p := vm.GetMatchPattern().(type) {
	case *matcherv3.ValueMatcher_PresentMatch:
		return (v != nil) == p.PresentMatch
	case *matcherv3.ValueMatcher_StringMatch:
		s, ok := v.(string)
		return ok && matchString(t, p.StringMatch, s)
	case *matcherv3.ValueMatcher_ListMatch:
		list, ok := v.([]any)
		if !ok {
			if ss, ok2 := v.([]string); ok2 {
				for _, s := range ss {
					list = append(list, s)
				}
				ok = true
			}
		}
		if !ok {
			return false
		}
		for _, e := range list {
			if matchValue(t, p.ListMatch.GetOneOf(), e) {
				return true
			}
		}
		return false
	}
	t.Fatalf("evaluator does not know value matcher %T", vm.GetMatchPattern())
	return false
}

func inCIDR(t *testing.T, prefix string, bits uint32, ip string) bool {
	if ip == "" {
		return false
	}
	p, err := netip.ParsePrefix(fmt.Sprintf("%s/%d", prefix, bits))
	if err != nil {
		t.Fatalf("cidr %s/%d: %v", prefix, bits, err)
	}
	return p.Contains(netip.MustParseAddr(ip))
}

// matchURITemplate implements Envoy's uri_template matcher for the
// operators emitted here: "*" one non-empty segment, "**" the rest.
func matchURITemplate(tmpl, path string) bool {
	ts := strings.Split(strings.TrimPrefix(tmpl, "/"), "/")
	ps := strings.Split(strings.TrimPrefix(path, "/"), "/")
	for i, s := range ts {
		if s == "**" {
			return len(ps) >= len(ts)
		}
		if i >= len(ps) {
			return false
		}
		if s == "*" {
			if ps[i] == "" {
				return false
			}
			continue
		}
		if s != ps[i] {
			return false
		}
	}
	return len(ps) == len(ts)
}

// policyNames renders an RBAC filter as ACTION[names...].
func policyNames(t *testing.T, f *hcmv3.HttpFilter) string {
	m, err := f.GetTypedConfig().UnmarshalNew()
	if err != nil {
		t.Fatal(err)
	}
	cfg, ok := m.(*rbachttpv3.RBAC)
	if !ok {
		return ""
	}
	r := cfg.GetRules()
	if r == nil {
		r = cfg.GetShadowRules()
	}
	var names []string
	for n := range r.GetPolicies() {
		names = append(names, n)
	}
	slices.Sort(names)
	return r.GetAction().String() + "[" + strings.Join(names, " ") + "]"
}

// evalTCP runs a connection through network RBAC filters.
func evalTCP(t *testing.T, filters []*listenerv3.Filter, r request) verdict {
	t.Helper()
	for i, f := range filters {
		var cfg rbacnetv3.RBAC
		if err := f.GetTypedConfig().UnmarshalTo(&cfg); err != nil {
			t.Fatalf("filter %d: %v", i, err)
		}
		name, ok := firstMatch(t, cfg.GetRules(), &r)
		switch cfg.GetRules().GetAction() {
		case rbacv3.RBAC_ALLOW:
			if !ok {
				return verdict{by: fmt.Sprintf("filter %d (ALLOW): no policy matched", i)}
			}
		case rbacv3.RBAC_DENY:
			if ok {
				return verdict{by: fmt.Sprintf("filter %d (DENY): %s", i, name)}
			}
		}
	}
	return verdict{allowed: true}
}
