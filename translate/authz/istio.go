package authz

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/nodemesh/nodemesh/config"
)

// FromAuthorizationPolicy turns an Istio AuthorizationPolicy into the model.
// Invalid rules fail closed, with an Error diagnostic naming the field: in an
// ALLOW or AUDIT policy the rule is dropped (it allows nothing), in a DENY or
// CUSTOM policy it matches every request. The policy is nil only when it
// cannot be used at all (wrong spec type).
func FromAuthorizationPolicy(o *config.Object, opts Options) (*Policy, []config.Diagnostic) {
	spec, ok := o.Spec.(*securityv1beta1.AuthorizationPolicy)
	if !ok {
		return nil, []config.Diagnostic{diag(config.SeverityError, o, "spec", "not an AuthorizationPolicy (%T)", o.Spec)}
	}
	var diags []config.Diagnostic
	p := &Policy{Namespace: o.Namespace, Name: o.Name, Object: o}
	switch spec.GetAction() {
	case securityv1beta1.AuthorizationPolicy_ALLOW:
		p.Action = ActionAllow
	case securityv1beta1.AuthorizationPolicy_DENY:
		p.Action = ActionDeny
	case securityv1beta1.AuthorizationPolicy_AUDIT:
		p.Action = ActionAudit
	case securityv1beta1.AuthorizationPolicy_CUSTOM:
		p.Action = ActionCustom
		p.Provider = spec.GetProvider().GetName()
		if p.Provider == "" {
			diags = append(diags, diag(config.SeverityError, o, "spec.provider.name",
				"a CUSTOM policy needs a provider; matching requests are denied"))
		}
	default:
		diags = append(diags, diag(config.SeverityError, o, "spec.action", "unknown action %v", spec.GetAction()))
		p.Action = ActionDeny
	}
	for i, r := range spec.GetRules() {
		field := fmt.Sprintf("spec.rules[%d]", i)
		rule, rd := convertRule(r, field, o.Namespace)
		for _, d := range rd {
			d.Object, d.Origin = o.Key, o.Origin
			diags = append(diags, d)
		}
		if len(rd) == 0 {
			p.Rules = append(p.Rules, rule)
			continue
		}
		switch p.Action {
		case ActionAllow, ActionAudit:
			diags = append(diags, diag(config.SeverityError, o, field, "rule dropped (fails closed: it allows nothing)"))
			p.Rules = append(p.Rules, Rule{Field: field, Permissions: []Clause{{{Key: keyNever, Values: []string{"never"}, Field: field}}}})
		default:
			diags = append(diags, diag(config.SeverityError, o, field, "rule matches every request (fails closed)"))
			p.Rules = append(p.Rules, Rule{Field: field})
		}
	}
	return p, diags
}

// keyNever is an attribute that matches nothing (a dropped rule keeps its
// index, so later rules keep Istio's names).
const keyNever = "nodemesh.never"

func diag(sev config.Severity, o *config.Object, field, format string, args ...any) config.Diagnostic {
	d := config.Diagnostic{Severity: sev, Field: field, Message: fmt.Sprintf(format, args...)}
	if o != nil {
		d.Object, d.Origin = o.Key, o.Origin
	}
	return d
}

func convertRule(r *securityv1beta1.Rule, field, namespace string) (Rule, []config.Diagnostic) {
	rule := Rule{Field: field}
	var diags []config.Diagnostic
	var principalWhen, permissionWhen Clause
	for i, c := range r.GetWhen() {
		f := fmt.Sprintf("%s.when[%d]", field, i)
		a := Attr{Key: c.GetKey(), Values: c.GetValues(), NotValues: c.GetNotValues(), Field: f}
		if len(a.Values) == 0 && len(a.NotValues) == 0 {
			diags = append(diags, config.Diagnostic{Severity: config.SeverityError, Field: f, Message: "values or notValues is required"})
			continue
		}
		if err := checkAttr(a); err != nil {
			diags = append(diags, config.Diagnostic{Severity: config.SeverityError, Field: f, Message: err.Error()})
			continue
		}
		if isPrincipalKey(a.Key) {
			principalWhen = append(principalWhen, a)
		} else {
			permissionWhen = append(permissionWhen, a)
		}
	}
	for i, from := range r.GetFrom() {
		f := fmt.Sprintf("%s.from[%d].source", field, i)
		c, d := sourceClause(from.GetSource(), f, namespace)
		diags = append(diags, d...)
		rule.Principals = append(rule.Principals, append(c, principalWhen...))
	}
	if len(r.GetFrom()) == 0 && len(principalWhen) > 0 {
		rule.Principals = []Clause{principalWhen}
	}
	for i, to := range r.GetTo() {
		f := fmt.Sprintf("%s.to[%d].operation", field, i)
		c, d := operationClause(to.GetOperation(), f)
		diags = append(diags, d...)
		rule.Permissions = append(rule.Permissions, append(c, permissionWhen...))
	}
	if len(r.GetTo()) == 0 && len(permissionWhen) > 0 {
		rule.Permissions = []Clause{permissionWhen}
	}
	return rule, diags
}

type fieldSpec struct {
	key, name   string
	values, not []string
}

func sourceClause(s *securityv1beta1.Source, field, namespace string) (Clause, []config.Diagnostic) {
	sa := func(list []string) []string { // serviceAccounts: "sa" or "ns/sa"
		var out []string
		for _, v := range list {
			ns, name, ok := strings.Cut(v, "/")
			if !ok {
				ns, name = namespace, v
			}
			out = append(out, "*/ns/"+ns+"/sa/"+name)
		}
		return out
	}
	td := func(list []string) []string { // trustDomains: "td"
		var out []string
		for _, v := range list {
			out = append(out, v+"/*")
		}
		return out
	}
	return clause(field, []fieldSpec{
		{keySourcePrincipal, "principals", s.GetPrincipals(), s.GetNotPrincipals()},
		{keySourcePrincipal, "serviceAccounts", sa(s.GetServiceAccounts()), sa(s.GetNotServiceAccounts())},
		{keyTrustDomain, "trustDomains", td(s.GetTrustDomains()), td(s.GetNotTrustDomains())},
		{keyRequestPrincipal, "requestPrincipals", s.GetRequestPrincipals(), s.GetNotRequestPrincipals()},
		{keySourceNamespace, "namespaces", s.GetNamespaces(), s.GetNotNamespaces()},
		{keySourceIP, "ipBlocks", s.GetIpBlocks(), s.GetNotIpBlocks()},
		{keyRemoteIP, "remoteIpBlocks", s.GetRemoteIpBlocks(), s.GetNotRemoteIpBlocks()},
	})
}

func operationClause(op *securityv1beta1.Operation, field string) (Clause, []config.Diagnostic) {
	return clause(field, []fieldSpec{
		{keyHost, "hosts", op.GetHosts(), op.GetNotHosts()},
		{keyDestPort, "ports", op.GetPorts(), op.GetNotPorts()},
		{keyMethod, "methods", op.GetMethods(), op.GetNotMethods()},
		{keyPath, "paths", op.GetPaths(), op.GetNotPaths()},
	})
}

func clause(field string, specs []fieldSpec) (Clause, []config.Diagnostic) {
	var c Clause
	var diags []config.Diagnostic
	for _, s := range specs {
		if len(s.values) > 0 {
			a := Attr{Key: s.key, Values: s.values, Field: field + "." + s.name}
			if err := checkAttr(a); err != nil {
				diags = append(diags, config.Diagnostic{Severity: config.SeverityError, Field: a.Field, Message: err.Error()})
			}
			c = append(c, a)
		}
		if len(s.not) > 0 {
			name := "not" + strings.ToUpper(s.name[:1]) + s.name[1:]
			a := Attr{Key: s.key, NotValues: s.not, Field: field + "." + name}
			if err := checkAttr(a); err != nil {
				diags = append(diags, config.Diagnostic{Severity: config.SeverityError, Field: a.Field, Message: err.Error()})
			}
			c = append(c, a)
		}
	}
	if len(c) == 0 {
		diags = append(diags, config.Diagnostic{Severity: config.SeverityError, Field: field, Message: "must not be empty"})
	}
	return c, diags
}

// checkAttr checks an attribute's key and value syntax.
func checkAttr(a Attr) error {
	switch {
	case a.Key == keyRequestPrincipal:
		for _, v := range append(a.Values, a.NotValues...) {
			if _, _, err := splitRequestPrincipal(v); err != nil {
				return err
			}
		}
	case a.Key == keySourcePrincipal, a.Key == keyTrustDomain, a.Key == keySourceNamespace,
		a.Key == keyAudiences, a.Key == keyPresenter, a.Key == keySNI, a.Key == keyHost, a.Key == keyMethod:
	case a.Key == keySourceIP, a.Key == keyRemoteIP, a.Key == keyDestIP:
		for _, v := range append(a.Values, a.NotValues...) {
			if _, err := parseCIDR(v); err != nil {
				return err
			}
		}
	case a.Key == keyDestPort:
		for _, v := range append(a.Values, a.NotValues...) {
			if _, err := parsePort(v); err != nil {
				return err
			}
		}
	case a.Key == keyPath:
		for _, v := range append(a.Values, a.NotValues...) {
			if err := checkPath(v); err != nil {
				return err
			}
		}
	case strings.HasPrefix(a.Key, keyHeadersPrefix):
		if _, err := bracketed(a.Key, keyHeadersPrefix); err != nil {
			return err
		}
	case strings.HasPrefix(a.Key, keyClaimsPrefix):
		if _, err := claimPath(a.Key); err != nil {
			return err
		}
	case strings.HasPrefix(a.Key, keyExperimental):
		if _, _, err := experimentalKey(a.Key); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown attribute %q", a.Key)
	}
	return nil
}

func parseCIDR(v string) (netip.Prefix, error) {
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid IP block %q: %w", v, err)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid IP address %q: %w", v, err)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func parsePort(v string) (uint32, error) {
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("invalid port %q: want 1-65535", v)
	}
	return uint32(n), nil
}

// bracketed returns x of prefix + "x]".
func bracketed(key, prefix string) (string, error) {
	inner, ok := strings.CutSuffix(strings.TrimPrefix(key, prefix), "]")
	if !ok || inner == "" || strings.ContainsAny(inner, "[]") {
		return "", fmt.Errorf("invalid attribute %q: want %sNAME]", key, prefix)
	}
	return inner, nil
}

// claimPath splits request.auth.claims[a][b] into [a b].
func claimPath(key string) ([]string, error) {
	rest := strings.TrimPrefix(key, "request.auth.claims")
	var path []string
	for rest != "" {
		if rest[0] != '[' {
			return nil, fmt.Errorf("invalid attribute %q: want request.auth.claims[NAME][NAME]...", key)
		}
		end := strings.IndexByte(rest, ']')
		if end <= 1 {
			return nil, fmt.Errorf("invalid attribute %q: want request.auth.claims[NAME][NAME]...", key)
		}
		path = append(path, rest[1:end])
		rest = rest[end+1:]
	}
	if len(path) == 0 {
		return nil, fmt.Errorf("invalid attribute %q: no claim", key)
	}
	return path, nil
}

// experimentalKey splits experimental.envoy.filters.a.b[c] into the filter
// name envoy.filters.a.b and the metadata path [c].
func experimentalKey(key string) (filter string, path []string, err error) {
	rest := strings.TrimPrefix(key, "experimental.")
	i := strings.IndexByte(rest, '[')
	if i <= len("envoy.filters.") || !strings.HasSuffix(rest, "]") {
		return "", nil, fmt.Errorf("invalid attribute %q: want experimental.envoy.filters.NAME[KEY]...", key)
	}
	filter = rest[:i]
	for _, p := range strings.Split(rest[i+1:len(rest)-1], "][") {
		if p == "" {
			return "", nil, fmt.Errorf("invalid attribute %q: empty metadata key", key)
		}
		path = append(path, p)
	}
	return filter, path, nil
}

// checkPath checks a path value: exact, prefix*, *suffix, *, or an Istio
// path template with {*} (one segment) and {**} (the rest, last only).
func checkPath(v string) error {
	if !strings.Contains(v, "{") {
		return nil
	}
	if !strings.HasPrefix(v, "/") {
		return fmt.Errorf("invalid path template %q: must start with /", v)
	}
	segs := strings.Split(v[1:], "/")
	for i, s := range segs {
		switch {
		case s == "{*}":
		case s == "{**}":
			if i != len(segs)-1 {
				return fmt.Errorf("invalid path template %q: {**} must be the last segment", v)
			}
		case strings.ContainsAny(s, "{}*"):
			return fmt.Errorf("invalid path template %q: segment %q must be {*}, {**} or literal", v, s)
		}
	}
	return nil
}
