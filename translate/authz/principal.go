package authz

import (
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// JWTFilterName is the jwt_authn filter; it writes each verified token's
// payload into its dynamic metadata under JWTPayloadKey, where RBAC reads
// request.auth.* attributes.
const (
	JWTFilterName = "envoy.filters.http.jwt_authn"
	JWTPayloadKey = "payload"
)

const spiffePrefix = "spiffe://"

// principalsOf builds an Envoy principal for each clause (ORed by RBAC).
// No clause: any principal.
func principalsOf(cs []Clause) []*rbacv3.Principal {
	if len(cs) == 0 {
		return []*rbacv3.Principal{anyPrincipal()}
	}
	out := make([]*rbacv3.Principal, len(cs))
	for i, c := range cs {
		ids := make([]*rbacv3.Principal, 0, len(c))
		for _, a := range c {
			ids = append(ids, attrPrincipal(a))
		}
		out[i] = andIDs(ids)
	}
	return out
}

func anyPrincipal() *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
}

func andIDs(ids []*rbacv3.Principal) *rbacv3.Principal {
	if len(ids) == 0 {
		return anyPrincipal()
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: ids}}}
}

func orIDs(ids []*rbacv3.Principal) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: ids}}}
}

// attrPrincipal: (value1 OR value2 ...) AND NOT (notValue1 OR ...).
func attrPrincipal(a Attr) *rbacv3.Principal {
	var ids []*rbacv3.Principal
	if len(a.Values) > 0 {
		ids = append(ids, orIDs(valuePrincipals(a.Key, a.Values)))
	}
	if len(a.NotValues) > 0 {
		ids = append(ids, &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: orIDs(valuePrincipals(a.Key, a.NotValues))}})
	}
	if len(ids) == 1 {
		return ids[0]
	}
	return andIDs(ids)
}

func valuePrincipals(key string, values []string) []*rbacv3.Principal {
	out := make([]*rbacv3.Principal, 0, len(values))
	for _, v := range values {
		out = append(out, valuePrincipal(key, v))
	}
	return out
}

func authenticated(m *rbacv3.Principal_Authenticated) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: m}}
}

func cidr(v string) *corev3.CidrRange {
	p, _ := parseCIDR(v) // checked by checkAttr
	return &corev3.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))}
}

// valuePrincipal matches one value of an attribute; shapes follow Istio's
// authz builder.
func valuePrincipal(key, v string) *rbacv3.Principal {
	switch {
	case key == keySourcePrincipal, key == keyTrustDomain:
		return authenticated(&rbacv3.Principal_Authenticated{PrincipalName: stringMatch(v, spiffePrefix, false)})
	case key == keySourceNamespace:
		return authenticated(&rbacv3.Principal_Authenticated{PrincipalName: regexMatch(".*/ns/" + wildcardRegex(v) + "/.*")})
	case key == keySourceIP:
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: cidr(v)}}
	case key == keyRemoteIP:
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_RemoteIp{RemoteIp: cidr(v)}}
	case key == keyRequestPrincipal:
		return requestPrincipal(v)
	case key == keyAudiences:
		return jwtClaim([]string{"aud"}, v)
	case key == keyPresenter:
		return jwtClaim([]string{"azp"}, v)
	case strings.HasPrefix(key, keyClaimsPrefix):
		path, _ := claimPath(key)
		return jwtClaim(path, v)
	case strings.HasPrefix(key, keyHeadersPrefix):
		name, _ := bracketed(key, keyHeadersPrefix)
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_Header{Header: headerMatch(name, v, false)}}
	}
	// checkAttr rejected everything else; match nothing rather than panic.
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: anyPrincipal()}}
}

// jwtClaim matches a claim of the verified token's payload (a string, or a
// list of strings with one equal to v).
func jwtClaim(path []string, v string) *rbacv3.Principal {
	full := append([]string{JWTPayloadKey}, path...)
	str := &rbacv3.Principal{Identifier: &rbacv3.Principal_Metadata{Metadata: metadataMatch(JWTFilterName, full, v, false)}}
	if v == "*" {
		return str
	}
	list := &rbacv3.Principal{Identifier: &rbacv3.Principal_Metadata{Metadata: metadataMatch(JWTFilterName, full, v, true)}}
	return orIDs([]*rbacv3.Principal{str, list})
}

// requestPrincipal matches Istio's "<iss>/<sub>" on the payload's iss and
// sub claims (forms accepted by splitRequestPrincipal).
func requestPrincipal(v string) *rbacv3.Principal {
	claim := func(name, v string) *rbacv3.Principal {
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_Metadata{
			Metadata: metadataMatch(JWTFilterName, []string{JWTPayloadKey, name}, v, false)}}
	}
	iss, sub, _ := splitRequestPrincipal(v) // checked by checkAttr
	switch {
	case iss == "*" && sub == "*":
		return claim("iss", "*")
	case iss == "*":
		return claim("sub", sub)
	}
	return andIDs([]*rbacv3.Principal{claim("iss", iss), claim("sub", sub)})
}

// splitRequestPrincipal splits a request principal into issuer and subject
// patterns: "*" (any verified token), "<iss>/<sub>", "<iss>/*",
// "<iss>/<prefix>*", "*/<sub>", "*<suffix>" (any issuer, subject suffix).
// A wildcard inside the issuer cannot be expressed on the separate claims.
func splitRequestPrincipal(v string) (iss, sub string, err error) {
	if v == "*" {
		return "*", "*", nil
	}
	i := strings.LastIndexByte(v, '/')
	if i < 0 {
		if strings.HasPrefix(v, "*") {
			return "*", v, nil
		}
		return "", "", fmt.Errorf("invalid request principal %q: want <issuer>/<subject>", v)
	}
	iss, sub = v[:i], v[i+1:]
	if sub == "" || iss == "" {
		return "", "", fmt.Errorf("invalid request principal %q: want <issuer>/<subject>", v)
	}
	if iss != "*" && strings.Contains(iss, "*") {
		return "", "", fmt.Errorf("invalid request principal %q: nodemesh matches issuer and subject separately and supports no wildcard inside the issuer", v)
	}
	return iss, sub, nil
}
