package authz

import (
	"regexp"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	uritemplatev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/path/match/uri_template/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// URITemplateExtension names the uri_template path matcher extension.
const URITemplateExtension = "envoy.path.match.uri_template.uri_template_matcher"

// permissionsOf builds an Envoy permission for each clause (ORed by RBAC).
// No clause: any permission.
func permissionsOf(cs []Clause) []*rbacv3.Permission {
	if len(cs) == 0 {
		return []*rbacv3.Permission{anyPermission()}
	}
	out := make([]*rbacv3.Permission, len(cs))
	for i, c := range cs {
		rules := make([]*rbacv3.Permission, 0, len(c))
		for _, a := range c {
			rules = append(rules, attrPermission(a))
		}
		out[i] = andRules(rules)
	}
	return out
}

func anyPermission() *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}}
}

func andRules(rules []*rbacv3.Permission) *rbacv3.Permission {
	if len(rules) == 0 {
		return anyPermission()
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: rules}}}
}

func orRules(rules []*rbacv3.Permission) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_OrRules{OrRules: &rbacv3.Permission_Set{Rules: rules}}}
}

func attrPermission(a Attr) *rbacv3.Permission {
	var rules []*rbacv3.Permission
	if len(a.Values) > 0 {
		rules = append(rules, orRules(valuePermissions(a.Key, a.Values)))
	}
	if len(a.NotValues) > 0 {
		rules = append(rules, &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: orRules(valuePermissions(a.Key, a.NotValues))}})
	}
	if len(rules) == 1 {
		return rules[0]
	}
	return andRules(rules)
}

func valuePermissions(key string, values []string) []*rbacv3.Permission {
	out := make([]*rbacv3.Permission, 0, len(values))
	for _, v := range values {
		out = append(out, valuePermission(key, v))
	}
	return out
}

func headerPermission(h *routev3.HeaderMatcher) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: h}}
}

func urlPath(m *matcherv3.StringMatcher) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{
		Rule: &matcherv3.PathMatcher_Path{Path: m}}}}
}

// valuePermission matches one value of an attribute; shapes follow Istio's
// authz builder.
func valuePermission(key, v string) *rbacv3.Permission {
	switch {
	case key == keyHost:
		return headerPermission(hostMatch(v))
	case key == keyMethod:
		return headerPermission(headerMatch(":method", v, false))
	case key == keyPath:
		if strings.Contains(v, "{") {
			return uriTemplate(v)
		}
		return urlPath(stringMatch(v, "", false))
	case key == keySMIPathRegex:
		// SMI: the regex is anchored at the start of the path only.
		return urlPath(regexMatch("(?:" + v + ").*"))
	case key == keyDestPort:
		port, _ := parsePort(v) // checked by checkAttr
		return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: port}}
	case key == keyDestIP:
		return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationIp{DestinationIp: cidr(v)}}
	case key == keySNI:
		return &rbacv3.Permission{Rule: &rbacv3.Permission_RequestedServerName{RequestedServerName: stringMatch(v, "", false)}}
	case strings.HasPrefix(key, keySMIHeaderPrefix):
		name, _ := bracketed(key, keySMIHeaderPrefix)
		return headerPermission(smiHeader(name, v))
	case strings.HasPrefix(key, keyExperimental):
		filter, path, _ := experimentalKey(key)
		return &rbacv3.Permission{Rule: &rbacv3.Permission_Metadata{Metadata: metadataMatch(filter, path, v, false)}}
	}
	// keyNever, or anything checkAttr rejected: match nothing.
	return &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: anyPermission()}}
}

// hostMatch matches :authority case-insensitively, with or without a port
// (as Istio's host matcher does): "*" any host, "*.a.b" a suffix, "a.*" a
// prefix.
func hostMatch(v string) *routev3.HeaderMatcher {
	if v == "*" {
		return headerMatch(":authority", v, false)
	}
	var re string
	switch {
	case strings.HasPrefix(v, "*"):
		re = ".*" + regexp.QuoteMeta(v[1:]) + "(:[0-9]+)?"
	case strings.HasSuffix(v, "*"):
		re = regexp.QuoteMeta(v[:len(v)-1]) + ".*"
	default:
		re = regexp.QuoteMeta(v) + "(:[0-9]+)?"
	}
	return &routev3.HeaderMatcher{Name: ":authority", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
		StringMatch: regexMatch("(?i)" + re)}}
}

// uriTemplate turns an Istio path template (/a/{*}/b, /a/{**}) into Envoy's
// uri_template matcher (/a/*/b, /a/**).
func uriTemplate(v string) *rbacv3.Permission {
	tmpl := strings.NewReplacer("{**}", "**", "{*}", "*").Replace(v)
	return &rbacv3.Permission{Rule: &rbacv3.Permission_UriTemplate{UriTemplate: &corev3.TypedExtensionConfig{
		Name:        URITemplateExtension,
		TypedConfig: mustAny(&uritemplatev3.UriTemplateMatchConfig{PathTemplate: tmpl}),
	}}}
}

// smiHeader matches an SMI header filter: the value is a regular expression
// over the whole header value.
func smiHeader(name, re string) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: regexMatch(re)}}
}
