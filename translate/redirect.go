package translate

import (
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/nodemesh/nodemesh/config"
)

// Routes that answer without an upstream: VirtualService redirects and
// direct responses. (gRPC clients fail such RPCs with UNAVAILABLE, as they
// should.)

type redirect struct {
	Path, PrefixRewrite, Authority, Scheme string
	Port                                   uint32
	Code                                   routev3.RedirectAction_RedirectResponseCode
}

type directResponse struct {
	Status uint32
	Body   string
}

var redirectCodes = map[uint32]routev3.RedirectAction_RedirectResponseCode{
	0:   routev3.RedirectAction_MOVED_PERMANENTLY, // Istio's default
	301: routev3.RedirectAction_MOVED_PERMANENTLY,
	302: routev3.RedirectAction_FOUND,
	303: routev3.RedirectAction_SEE_OTHER,
	307: routev3.RedirectAction_TEMPORARY_REDIRECT,
	308: routev3.RedirectAction_PERMANENT_REDIRECT,
}

// answerRoute fills r from a redirect or direct response; ok is false (and
// the route skipped) when the spec is invalid.
func (s *scope) answerRoute(o *config.Object, field string, hr *networking.HTTPRoute, r *httpRoute) bool {
	if len(hr.GetRoute()) > 0 {
		s.diags.Errorf(o, field, "a route cannot have both destinations and a redirect or direct response; skipped")
		return false
	}
	if rd := hr.GetRedirect(); rd != nil {
		code, ok := redirectCodes[rd.GetRedirectCode()]
		if !ok {
			s.diags.Errorf(o, field+".redirect.redirectCode", "redirect code %d is not 301, 302, 303, 307 or 308; skipped", rd.GetRedirectCode())
			return false
		}
		if rd.GetDerivePort() == networking.HTTPRedirect_FROM_REQUEST_PORT {
			s.diags.Warnf(o, field+".redirect.derivePort", "derivePort is not supported yet; the port is left as requested")
		}
		r.Redirect = &redirect{Path: rd.GetUri(), PrefixRewrite: rd.GetPrefixRewrite(), Authority: rd.GetAuthority(),
			Scheme: rd.GetScheme(), Port: rd.GetPort(), Code: code}
		return true
	}
	dr := hr.GetDirectResponse()
	if dr.GetStatus() < 200 || dr.GetStatus() > 599 {
		s.diags.Errorf(o, field+".directResponse.status", "status %d is not in 200..599; skipped", dr.GetStatus())
		return false
	}
	body := dr.GetBody().GetString_()
	if b := dr.GetBody().GetBytes(); len(b) > 0 {
		if !utf8.Valid(b) {
			s.diags.Errorf(o, field+".directResponse.body.bytes", "binary bodies are not supported; skipped")
			return false
		}
		body = string(b)
	}
	r.Direct = &directResponse{Status: dr.GetStatus(), Body: body}
	return true
}

// answerAction sets the Envoy action of a redirect or direct response
// route; false if the route forwards upstream.
func answerAction(er *routev3.Route, r httpRoute) bool {
	switch {
	case r.Redirect != nil:
		rd := r.Redirect
		a := &routev3.RedirectAction{HostRedirect: rd.Authority, PortRedirect: rd.Port, ResponseCode: rd.Code}
		switch {
		case rd.Path != "":
			a.PathRewriteSpecifier = &routev3.RedirectAction_PathRedirect{PathRedirect: rd.Path}
		case rd.PrefixRewrite != "":
			a.PathRewriteSpecifier = &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: rd.PrefixRewrite}
		}
		if rd.Scheme != "" {
			a.SchemeRewriteSpecifier = &routev3.RedirectAction_SchemeRedirect{SchemeRedirect: rd.Scheme}
		}
		er.Action = &routev3.Route_Redirect{Redirect: a}
		return true
	case r.Direct != nil:
		a := &routev3.DirectResponseAction{Status: r.Direct.Status}
		if r.Direct.Body != "" {
			a.Body = &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: r.Direct.Body}}
		}
		er.Action = &routev3.Route_DirectResponse{DirectResponse: a}
		return true
	}
	return false
}
