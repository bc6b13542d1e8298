package authz

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/nodemesh/nodemesh/config"
)

// evalJWT plays Envoy's jwt_authn for the subset emitted here: it extracts
// a token from each provider's locations, verifies it for real against the
// provider's inline JWKS (go-jose), checks issuer and audiences, applies
// requires_any with allow_missing, and writes the payload into metadata.
// It returns false when the request is rejected (401).
func evalJWT(t *testing.T, f *hcmv3.HttpFilter, r *request) bool {
	t.Helper()
	var cfg jwtv3.JwtAuthentication
	if err := f.GetTypedConfig().UnmarshalTo(&cfg); err != nil {
		t.Fatal(err)
	}
	reqs := cfg.GetRules()[0].GetRequires().GetRequiresAny().GetRequirements()
	allowMissing := reqs[len(reqs)-1].GetAllowMissing() != nil
	found := false
	for _, req := range reqs {
		p := cfg.GetProviders()[req.GetProviderName()]
		if p == nil {
			continue
		}
		tok, ok := extractToken(p, r)
		if !ok {
			continue
		}
		found = true
		if claims, ok := verifyToken(t, p, tok); ok {
			r.jwt = claims
			return true
		}
	}
	return !found && allowMissing
}

func extractToken(p *jwtv3.JwtProvider, r *request) (string, bool) {
	headers := p.GetFromHeaders()
	if len(headers) == 0 && len(p.GetFromParams()) == 0 && len(p.GetFromCookies()) == 0 {
		headers = []*jwtv3.JwtHeader{{Name: "Authorization", ValuePrefix: "Bearer "}}
	}
	for _, h := range headers {
		if v, ok := r.header(h.GetName()); ok && strings.HasPrefix(v, h.GetValuePrefix()) {
			return strings.TrimPrefix(v, h.GetValuePrefix()), true
		}
	}
	if _, q, ok := strings.Cut(r.path, "?"); ok {
		vals, _ := url.ParseQuery(q)
		for _, name := range p.GetFromParams() {
			if v := vals.Get(name); v != "" {
				return v, true
			}
		}
	}
	return "", false
}

func verifyToken(t *testing.T, p *jwtv3.JwtProvider, tok string) (map[string]any, bool) {
	if p.GetLocalJwks() == nil {
		return nil, false // remote JWKS: the evaluator does not fetch keys
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal([]byte(p.GetLocalJwks().GetInlineString()), &set); err != nil {
		t.Fatalf("provider jwks: %v", err)
	}
	parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return nil, false
	}
	var claims map[string]any
	var std jwt.Claims
	ok := false
	for _, k := range set.Keys {
		if parsed.Claims(k.Key, &claims, &std) == nil {
			ok = true
			break
		}
	}
	if !ok || std.Issuer != p.GetIssuer() {
		return nil, false
	}
	if aud := p.GetAudiences(); len(aud) > 0 && !slices.ContainsFunc(aud, func(a string) bool { return slices.Contains(std.Audience, a) }) {
		return nil, false
	}
	return claims, true
}

type signer struct {
	key  *rsa.PrivateKey
	jwks string
}

func newSigner(t *testing.T) signer {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k1", Algorithm: "RS256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	return signer{key: key, jwks: string(b)}
}

func (s signer) token(t *testing.T, claims map[string]any) string {
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: s.key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(sig).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// RequestAuthentication + AuthorizationPolicy, as in Istio's "JWT token"
// task: a missing token passes jwt_authn, an invalid one is rejected, and
// RBAC requires a request principal.
func TestRequestAuthenticationWithRBAC(t *testing.T) {
	s, other := newSigner(t), newSigner(t)
	jwksJSON, _ := json.Marshal(s.jwks)
	objs := decode(t, `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt-example, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  jwtRules:
  - issuer: "testing@secure.istio.io"
    jwks: `+string(jwksJSON)+`
    audiences: ["httpbin"]
    fromHeaders: [{name: Authorization, prefix: "Bearer "}]
    fromParams: ["access_token"]
    outputPayloadToHeader: x-jwt-payload
    forwardOriginalToken: true
  - issuer: "https://other.example"
    jwksUri: "https://other.example:8443/keys"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {requestPrincipals: ["testing@secure.istio.io/testing@secure.istio.io"]}}]
    when:
    - key: request.auth.claims[groups]
      values: ["group1"]
`)
	jwtFilter, clusters, diags := BuildJWT(objs, httpbin, Options{})
	if jwtFilter == nil {
		t.Fatalf("no jwt_authn filter: %v", diags)
	}
	if err := Validate([]*hcmv3.HttpFilter{jwtFilter}, nil); err != nil {
		t.Fatal(err)
	}
	if len(clusters) != 1 || clusters[0] != (JWKSCluster{Name: "outbound|8443||other.example", Host: "other.example", Port: 8443, TLS: true}) {
		t.Errorf("clusters %+v", clusters)
	}
	if len(diags) != 1 || diags[0].Severity != config.SeverityInfo || !strings.Contains(diags[0].Message, "outbound|8443||other.example") {
		t.Errorf("diagnostics %v, want one Info naming the JWKS cluster", diags)
	}
	rbac, d := build(t, objs, httpbin, Options{})
	if len(d) > 0 {
		t.Fatal(d)
	}
	good := s.token(t, map[string]any{"iss": "testing@secure.istio.io", "sub": "testing@secure.istio.io", "aud": "httpbin", "groups": []string{"group1", "group2"}})
	noGroup := s.token(t, map[string]any{"iss": "testing@secure.istio.io", "sub": "testing@secure.istio.io", "aud": "httpbin", "groups": []string{"group2"}})
	wrongAud := s.token(t, map[string]any{"iss": "testing@secure.istio.io", "sub": "testing@secure.istio.io", "aud": "other", "groups": []string{"group1"}})
	forged := other.token(t, map[string]any{"iss": "testing@secure.istio.io", "sub": "testing@secure.istio.io", "aud": "httpbin", "groups": []string{"group1"}})
	for _, c := range []struct {
		name             string
		req              request
		passJWT, allowed bool
	}{
		{"valid token in header", request{path: "/headers", headers: map[string]string{"Authorization": "Bearer " + good}}, true, true},
		{"valid token in query", request{path: "/headers?access_token=" + good}, true, true},
		{"valid token without group1", request{path: "/", headers: map[string]string{"Authorization": "Bearer " + noGroup}}, true, false},
		{"no token: passes jwt_authn, RBAC denies", request{path: "/"}, true, false},
		{"wrong audience: 401", request{path: "/", headers: map[string]string{"Authorization": "Bearer " + wrongAud}}, false, false},
		{"signed by another key: 401", request{path: "/", headers: map[string]string{"Authorization": "Bearer " + forged}}, false, false},
		{"garbage: 401", request{path: "/", headers: map[string]string{"Authorization": "Bearer xyz"}}, false, false},
	} {
		r := c.req
		pass := evalJWT(t, jwtFilter, &r)
		allowed := pass && evalHTTP(t, rbac, r).allowed
		if pass != c.passJWT || allowed != c.allowed {
			t.Errorf("%s: jwt_authn pass=%v, allowed=%v; want %v, %v", c.name, pass, allowed, c.passJWT, c.allowed)
		}
	}
	var cfg jwtv3.JwtAuthentication
	if err := jwtFilter.GetTypedConfig().UnmarshalTo(&cfg); err != nil {
		t.Fatal(err)
	}
	p := cfg.GetProviders()["origins-0"]
	if !p.GetForward() || p.GetForwardPayloadHeader() != "x-jwt-payload" || p.GetPayloadInMetadata() != JWTPayloadKey {
		t.Errorf("provider origins-0: %v", p)
	}
	if other := (Workload{Namespace: "foo", Labels: map[string]string{"app": "x"}}); true {
		if f, _, _ := BuildJWT(objs, other, Options{}); f != nil {
			t.Error("RequestAuthentication applied to a workload its selector does not match")
		}
	}
}

func TestRequestAuthenticationErrors(t *testing.T) {
	objs := decode(t, `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: bad, namespace: foo}
spec:
  jwtRules:
  - issuer: "a"
  - issuer: "b"
    jwksUri: "ftp://x/keys"
`)
	f, _, diags := BuildJWT(objs, httpbin, Options{})
	var msgs []string
	for _, d := range diags {
		msgs = append(msgs, d.String())
	}
	all := strings.Join(msgs, "\n")
	for _, want := range []string{"RequestAuthentication/foo/bad spec.jwtRules[0]: jwksUri or jwks is required", `spec.jwtRules[1]: invalid jwksUri "ftp://x/keys"`} {
		if !strings.Contains(all, want) {
			t.Errorf("diagnostics:\n%s\nwant %q", all, want)
		}
	}
	// Tokens of those issuers are rejected, not ignored.
	s := newSigner(t)
	r := request{path: "/", headers: map[string]string{"Authorization": "Bearer " + s.token(t, map[string]any{"iss": "a"})}}
	if f == nil || evalJWT(t, f, &r) {
		t.Error("a token of a misconfigured issuer passed")
	}
}
