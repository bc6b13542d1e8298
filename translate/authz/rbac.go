package authz

import (
	"fmt"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/nodemesh/nodemesh/config"
)

// Filter names. Envoy picks the extension by the typed_config's type; the
// names only have to be unique in one filter chain (gRPC's xDS server
// rejects duplicates), so each RBAC filter is named after its role.
const (
	RBACHTTPFilterName     = "envoy.filters.http.rbac" // also the RBAC filters' metadata namespace
	ExtAuthzHTTPFilterName = "envoy.filters.http.ext_authz"
	RBACNetworkFilterName  = "envoy.filters.network.rbac"

	RBACAuditFilterName  = RBACHTTPFilterName + ".audit"
	RBACShadowFilterName = RBACHTTPFilterName + ".ext_authz_shadow"
	RBACDenyFilterName   = RBACHTTPFilterName + ".deny"
	RBACAllowFilterName  = RBACHTTPFilterName + ".allow"
	RBACSMIFilterName    = RBACHTTPFilterName + ".smi"
)

// The CUSTOM action: a shadow RBAC filter marks requests matching a CUSTOM
// policy (rule names prefixed with ExtAuthzShadowPrefix); ext_authz runs only
// for them. The names are Istio's.
const (
	ExtAuthzShadowPrefix     = "istio-ext-authz-"
	extAuthzShadowStatPrefix = "istio_ext_authz_"
	extAuthzShadowMetadata   = extAuthzShadowStatPrefix + "shadow_effective_policy_id"
)

// BuildHTTP returns the HTTP filters enforcing the AuthorizationPolicies
// among objs that apply to the workload, to put after jwt_authn (BuildJWT)
// and before the router, in this order. See HTTPFilters.
func BuildHTTP(objs []*config.Object, w Workload, opts Options) ([]*hcmv3.HttpFilter, []config.Diagnostic) {
	ps, diags := SelectAuthorizationPolicies(objs, w, opts)
	f, d := HTTPFilters(ps, opts)
	return f, append(diags, d...)
}

// HTTPFilters builds the HTTP filters for policies that apply to one
// workload, in Istio's order: AUDIT (an RBAC filter with action LOG), CUSTOM
// (a shadow RBAC filter and ext_authz), DENY, ALLOW. No filter for an action
// without policies; an ALLOW filter with no rule denies everything. A CUSTOM
// policy whose provider is unknown denies what it matches (fails closed).
func HTTPFilters(ps []*Policy, opts Options) ([]*hcmv3.HttpFilter, []config.Diagnostic) {
	byAction, diags := group(ps, opts)
	var out []*hcmv3.HttpFilter
	rbacFilter := func(name string, cfg *rbachttpv3.RBAC) {
		out = append(out, &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(cfg)}})
	}
	if audit := byAction[ActionAudit]; len(audit) > 0 {
		rbacFilter(RBACAuditFilterName, &rbachttpv3.RBAC{Rules: rules(rbacv3.RBAC_LOG, audit, false, "")})
	}
	if custom := byAction[ActionCustom]; len(custom) > 0 {
		name := custom[0].Provider
		rbacFilter(RBACShadowFilterName, &rbachttpv3.RBAC{
			ShadowRules:           rules(rbacv3.RBAC_ALLOW, custom, false, ExtAuthzShadowPrefix),
			ShadowRulesStatPrefix: extAuthzShadowStatPrefix,
		})
		out = append(out, &hcmv3.HttpFilter{Name: ExtAuthzHTTPFilterName,
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(extAuthz(opts.ExtAuthzProviders[name]))}})
	}
	if deny := byAction[ActionDeny]; len(deny) > 0 {
		rbacFilter(RBACDenyFilterName, &rbachttpv3.RBAC{Rules: rules(rbacv3.RBAC_DENY, deny, false, "")})
	}
	if allow, ok := byAction[ActionAllow]; ok {
		rbacFilter(RBACAllowFilterName, &rbachttpv3.RBAC{Rules: rules(rbacv3.RBAC_ALLOW, allow, false, "")})
	}
	if allow, ok := byAction[actionSMIAllow]; ok {
		rbacFilter(RBACSMIFilterName, &rbachttpv3.RBAC{Rules: rules(rbacv3.RBAC_ALLOW, allow, false, "")})
	}
	return out, diags
}

// BuildTCP returns the network filters enforcing the AuthorizationPolicies
// among objs on the workload's TCP (non-HTTP) ports, to put before
// tcp_proxy. See TCPFilters.
func BuildTCP(objs []*config.Object, w Workload, opts Options) ([]*listenerv3.Filter, []config.Diagnostic) {
	ps, diags := SelectAuthorizationPolicies(objs, w, opts)
	f, d := TCPFilters(ps, opts)
	return f, append(diags, d...)
}

// TCPFilters builds network RBAC filters (DENY, then ALLOW) for TCP
// connections, following Istio for rules with HTTP-only attributes: in an
// ALLOW policy a from/to entry using one is dropped (it cannot allow), in a
// DENY policy the HTTP-only attributes are ignored (the rule denies more).
// AUDIT policies become a LOG filter. CUSTOM policies are not sent to
// ext_authz on TCP: the connections they match are denied (Warning).
func TCPFilters(ps []*Policy, opts Options) ([]*listenerv3.Filter, []config.Diagnostic) {
	byAction, diags := group(ps, opts)
	var out []*listenerv3.Filter
	filter := func(prefix string, r *rbacv3.RBAC) {
		cfg := &rbacnetv3.RBAC{StatPrefix: prefix, Rules: r}
		out = append(out, &listenerv3.Filter{Name: RBACNetworkFilterName + "." + strings.TrimSuffix(strings.TrimPrefix(prefix, "tcp."), "."), ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(cfg)}})
	}
	if audit := byAction[ActionAudit]; len(audit) > 0 {
		filter("tcp.audit.", rules(rbacv3.RBAC_LOG, audit, true, ""))
	}
	deny := byAction[ActionDeny]
	for _, p := range byAction[ActionCustom] {
		diags = append(diags, diag(config.SeverityWarning, p.Object, "spec.action",
			"CUSTOM on a TCP port: nodemesh has no network ext_authz; matching connections are denied"))
		deny = append(deny, p)
	}
	if len(deny) > 0 {
		filter("tcp.deny.", rules(rbacv3.RBAC_DENY, deny, true, ""))
	}
	if allow, ok := byAction[ActionAllow]; ok {
		filter("tcp.allow.", rules(rbacv3.RBAC_ALLOW, allow, true, ""))
	}
	if allow, ok := byAction[actionSMIAllow]; ok {
		filter("tcp.smi.", rules(rbacv3.RBAC_ALLOW, allow, true, ""))
	}
	return out, diags
}

// actionSMIAllow groups SMI TrafficTargets: their own ALLOW filter after
// Istio's, so a request must be allowed by both (see doc.go).
const actionSMIAllow Action = -1

// group sorts policies by action, checks CUSTOM providers and turns CUSTOM
// policies that cannot be served into DENY policies.
func group(ps []*Policy, opts Options) (map[Action][]*Policy, []config.Diagnostic) {
	byAction := map[Action][]*Policy{}
	var diags []config.Diagnostic
	provider := ""
	for _, p := range ps {
		if p.SMI {
			byAction[actionSMIAllow] = append(byAction[actionSMIAllow], p)
			continue
		}
		if p.Action != ActionCustom {
			byAction[p.Action] = append(byAction[p.Action], p)
			continue
		}
		prov, known := opts.ExtAuthzProviders[p.Provider]
		switch {
		case known && prov.Cluster == "":
			diags = append(diags, diag(config.SeverityError, p.Object, "spec.provider.name",
				"ext_authz provider %q has no cluster: matching requests are denied", p.Provider))
		case !known:
			diags = append(diags, diag(config.SeverityError, p.Object, "spec.provider.name",
				"unknown ext_authz provider %q (known: %s): matching requests are denied", p.Provider, strings.Join(opts.providerNames(), ", ")))
		case provider != "" && provider != p.Provider:
			diags = append(diags, diag(config.SeverityError, p.Object, "spec.provider.name",
				"a workload may use one ext_authz provider; %q is already used: matching requests are denied", provider))
		default:
			provider = p.Provider
			byAction[ActionCustom] = append(byAction[ActionCustom], p)
			continue
		}
		deny := *p
		deny.Action = ActionDeny
		byAction[ActionDeny] = append(byAction[ActionDeny], &deny)
	}
	return byAction, diags
}

// rules builds one RBAC config: one Envoy policy per rule.
func rules(action rbacv3.RBAC_Action, ps []*Policy, forTCP bool, namePrefix string) *rbacv3.RBAC {
	r := &rbacv3.RBAC{Action: action, Policies: map[string]*rbacv3.Policy{}}
	for _, p := range ps {
		for i, rule := range p.Rules {
			if forTCP {
				var ok bool
				if rule, ok = tcpRule(rule, p.Action == ActionAllow); !ok {
					continue
				}
			}
			r.Policies[namePrefix+p.RuleName(i)] = &rbacv3.Policy{
				Permissions: permissionsOf(rule.Permissions),
				Principals:  principalsOf(rule.Principals),
			}
		}
	}
	return r
}

// tcpRule drops what TCP cannot check (see TCPFilters); ok is false when
// nothing of an ALLOW rule is left.
func tcpRule(r Rule, allow bool) (Rule, bool) {
	strip := func(cs []Clause) ([]Clause, bool) {
		if len(cs) == 0 {
			return nil, true
		}
		var out []Clause
		for _, c := range cs {
			var kept Clause
			dropped := false
			for _, a := range c {
				if httpOnly(a.Key) {
					dropped = true
					continue
				}
				kept = append(kept, a)
			}
			if dropped && allow {
				continue
			}
			out = append(out, kept)
		}
		return out, len(out) > 0
	}
	var ok1, ok2 bool
	r.Principals, ok1 = strip(r.Principals)
	r.Permissions, ok2 = strip(r.Permissions)
	return r, ok1 && ok2
}

// extAuthz configures the ext_authz filter for a provider, enabled only for
// requests the shadow RBAC filter matched.
func extAuthz(p ExtAuthzProvider) *extauthzv3.ExtAuthz {
	timeout := p.Timeout
	if timeout == 0 {
		timeout = 600 * time.Second
	}
	authority := p.Authority
	if authority == "" {
		authority = p.Cluster
	}
	cfg := &extauthzv3.ExtAuthz{
		TransportApiVersion: corev3.ApiVersion_V3,
		FailureModeAllow:    p.FailOpen,
		FilterEnabledMetadata: &matcherv3.MetadataMatcher{
			Filter: RBACHTTPFilterName,
			Path:   []*matcherv3.MetadataMatcher_PathSegment{{Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: extAuthzShadowMetadata}}},
			Value: &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: ExtAuthzShadowPrefix}}}},
		},
	}
	if p.GRPC {
		cfg.Services = &extauthzv3.ExtAuthz_GrpcService{GrpcService: &corev3.GrpcService{
			TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: p.Cluster, Authority: authority}},
			Timeout:         durationpb.New(timeout),
		}}
		return cfg
	}
	uri := p.URI
	if uri == "" {
		uri = "http://" + authority
	}
	svc := &extauthzv3.HttpService{
		ServerUri:  &corev3.HttpUri{Uri: uri, HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: p.Cluster}, Timeout: durationpb.New(timeout)},
		PathPrefix: p.PathPrefix,
	}
	cfg.Services = &extauthzv3.ExtAuthz_HttpService{HttpService: svc}
	if len(p.IncludeRequestHeadersInCheck) > 0 {
		var pats []*matcherv3.StringMatcher
		for _, h := range p.IncludeRequestHeadersInCheck {
			pats = append(pats, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: h}, IgnoreCase: true})
		}
		cfg.AllowedHeaders = &matcherv3.ListStringMatcher{Patterns: pats}
	}
	return cfg
}

// Validate runs Envoy's validation rules on the typed config of every filter.
func Validate(filters []*hcmv3.HttpFilter, network []*listenerv3.Filter) error {
	check := func(name string, m interface{ ValidateAll() error }) error {
		if err := m.ValidateAll(); err != nil {
			return fmt.Errorf("filter %s: %w", name, err)
		}
		return nil
	}
	seen := map[string]bool{}
	for _, f := range filters {
		if seen[f.GetName()] {
			return fmt.Errorf("duplicate filter name %s", f.GetName())
		}
		seen[f.GetName()] = true
		if err := f.ValidateAll(); err != nil {
			return fmt.Errorf("filter %s: %w", f.GetName(), err)
		}
		m, err := f.GetTypedConfig().UnmarshalNew()
		if err != nil {
			return fmt.Errorf("filter %s: %w", f.GetName(), err)
		}
		if v, ok := m.(interface{ ValidateAll() error }); ok {
			if err := check(f.GetName(), v); err != nil {
				return err
			}
		}
	}
	for _, f := range network {
		if err := f.ValidateAll(); err != nil {
			return fmt.Errorf("filter %s: %w", f.GetName(), err)
		}
		m, err := f.GetTypedConfig().UnmarshalNew()
		if err != nil {
			return fmt.Errorf("filter %s: %w", f.GetName(), err)
		}
		if v, ok := m.(interface{ ValidateAll() error }); ok {
			if err := check(f.GetName(), v); err != nil {
				return err
			}
		}
	}
	return nil
}
