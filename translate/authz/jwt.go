package authz

import (
	"fmt"
	"net/url"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/nodemesh/nodemesh/config"
)

// JWKSCluster is an Envoy cluster a remote JWKS is fetched through; the
// listener builder must make sure it exists (BuildJWT reports it).
type JWKSCluster struct {
	Name string // outbound|<port>||<host>, Istio's name
	Host string
	Port uint32
	TLS  bool // https
}

// Defaults of remote JWKS fetching (Istio's).
const (
	jwksTimeout       = 5 * time.Second
	jwksCacheDuration = 5 * time.Minute
)

// BuildJWT returns the jwt_authn filter for the RequestAuthentications among
// objs that apply to the workload (nil when none), to put before the RBAC
// filters, and the clusters its remote JWKS need.
//
// Istio's semantics: a request without a token passes (RBAC decides, e.g.
// with requestPrincipals); a request with a token that fails verification
// against every provider is rejected with 401. Each provider writes the
// verified payload into the filter's metadata under JWTPayloadKey, where the
// RBAC filters read request.auth.* attributes.
func BuildJWT(objs []*config.Object, w Workload, opts Options) (*hcmv3.HttpFilter, []JWKSCluster, []config.Diagnostic) {
	var diags []config.Diagnostic
	cfg := &jwtv3.JwtAuthentication{Providers: map[string]*jwtv3.JwtProvider{}, BypassCorsPreflight: true}
	var names []string
	var clusters []JWKSCluster
	seen := map[string]bool{}
	for _, o := range objs {
		spec, ok := o.Spec.(*securityv1beta1.RequestAuthentication)
		if !ok || o.Kind != config.KindRequestAuthentication {
			continue
		}
		ok, d := selects(o, spec.GetSelector(), targetRefs(spec.GetTargetRef(), spec.GetTargetRefs()), w, opts)
		diags = append(diags, d...)
		if !ok {
			continue
		}
		for i, rule := range spec.GetJwtRules() {
			field := fmt.Sprintf("spec.jwtRules[%d]", i)
			p, cl, err := jwtProvider(rule)
			if err != nil {
				// Fail closed: a provider that cannot verify anything still
				// counts as present, so its tokens are rejected.
				diags = append(diags, diag(config.SeverityError, o, field, "%v; tokens of this issuer are rejected", err))
				p = &jwtv3.JwtProvider{Issuer: rule.GetIssuer(), JwksSourceSpecifier: &jwtv3.JwtProvider_LocalJwks{
					LocalJwks: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: `{"keys":[]}`}}},
					PayloadInMetadata: JWTPayloadKey}
			}
			name := fmt.Sprintf("origins-%d", len(names))
			cfg.Providers[name] = p
			names = append(names, name)
			if cl != nil && !seen[cl.Name] {
				seen[cl.Name] = true
				clusters = append(clusters, *cl)
				diags = append(diags, diag(config.SeverityInfo, o, field+".jwksUri",
					"the node proxy fetches %s through cluster %s, which must exist", rule.GetJwksUri(), cl.Name))
			}
		}
	}
	if len(names) == 0 {
		return nil, nil, diags
	}
	reqs := make([]*jwtv3.JwtRequirement, 0, len(names)+1)
	for _, n := range names {
		reqs = append(reqs, &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: n}})
	}
	reqs = append(reqs, &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_AllowMissing{}})
	cfg.Rules = []*jwtv3.RequirementRule{{
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		RequirementType: &jwtv3.RequirementRule_Requires{Requires: &jwtv3.JwtRequirement{
			RequiresType: &jwtv3.JwtRequirement_RequiresAny{RequiresAny: &jwtv3.JwtRequirementOrList{Requirements: reqs}}}},
	}}
	return &hcmv3.HttpFilter{Name: JWTFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(cfg)}}, clusters, diags
}

func jwtProvider(r *securityv1beta1.JWTRule) (*jwtv3.JwtProvider, *JWKSCluster, error) {
	if r.GetIssuer() == "" {
		return nil, nil, fmt.Errorf("issuer is required")
	}
	p := &jwtv3.JwtProvider{
		Issuer:               r.GetIssuer(),
		Audiences:            r.GetAudiences(),
		Forward:              r.GetForwardOriginalToken(),
		ForwardPayloadHeader: r.GetOutputPayloadToHeader(),
		FromParams:           r.GetFromParams(),
		FromCookies:          r.GetFromCookies(),
		PayloadInMetadata:    JWTPayloadKey,
	}
	for _, h := range r.GetFromHeaders() {
		p.FromHeaders = append(p.FromHeaders, &jwtv3.JwtHeader{Name: h.GetName(), ValuePrefix: h.GetPrefix()})
	}
	for _, c := range r.GetOutputClaimToHeaders() {
		p.ClaimToHeaders = append(p.ClaimToHeaders, &jwtv3.JwtClaimToHeader{HeaderName: c.GetHeader(), ClaimName: c.GetClaim()})
	}
	var cl *JWKSCluster
	switch {
	case r.GetJwks() != "":
		p.JwksSourceSpecifier = &jwtv3.JwtProvider_LocalJwks{LocalJwks: &corev3.DataSource{
			Specifier: &corev3.DataSource_InlineString{InlineString: r.GetJwks()}}}
	case r.GetJwksUri() != "":
		var err error
		if cl, err = jwksCluster(r.GetJwksUri()); err != nil {
			return nil, nil, err
		}
		timeout := jwksTimeout
		if r.GetTimeout() != nil {
			timeout = r.GetTimeout().AsDuration()
		}
		p.JwksSourceSpecifier = &jwtv3.JwtProvider_RemoteJwks{RemoteJwks: &jwtv3.RemoteJwks{
			HttpUri: &corev3.HttpUri{Uri: r.GetJwksUri(), HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: cl.Name},
				Timeout: durationpb.New(timeout)},
			CacheDuration: durationpb.New(jwksCacheDuration),
		}}
	default:
		return nil, nil, fmt.Errorf("jwksUri or jwks is required (nodemesh does not discover OpenID configuration)")
	}
	if err := p.ValidateAll(); err != nil {
		return nil, nil, fmt.Errorf("invalid jwt rule: %w", err)
	}
	return p, cl, nil
}

func jwksCluster(uri string) (*JWKSCluster, error) {
	u, err := url.Parse(uri)
	if err != nil || u.Hostname() == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("invalid jwksUri %q: want http(s)://host[:port]/path", uri)
	}
	c := &JWKSCluster{Host: u.Hostname(), TLS: u.Scheme == "https", Port: 80}
	if c.TLS {
		c.Port = 443
	}
	if ps := u.Port(); ps != "" {
		n, err := strconv.ParseUint(ps, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("invalid jwksUri %q: bad port", uri)
		}
		c.Port = uint32(n)
	}
	c.Name = fmt.Sprintf("outbound|%d||%s", c.Port, c.Host)
	return c, nil
}
