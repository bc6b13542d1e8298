package translate

import (
	"regexp"
	"slices"
	"strings"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/nodemesh/nodemesh/config"
)

// convertHTTPRoute turns spec.http[i] of a VirtualService into a model
// route for service port sp. ok is false when the route does not apply here
// or is broken; broken routes are diagnosed and skipped, the rest of the
// VirtualService keeps working.
func (s *scope) convertHTTPRoute(o *config.Object, i int, hr *networking.HTTPRoute, sp servicePort) (httpRoute, bool) {
	field := fieldf("spec.http[%d]", i)
	d := s.diags
	r := httpRoute{Name: hr.GetName()}
	if r.Name == "" {
		r.Name = fieldf("%s.%s.%d", o.Namespace, o.Name, i)
	}
	switch {
	case hr.GetDelegate() != nil:
		d.Warnf(o, field+".delegate", "delegate routes are not supported yet; route skipped")
		return r, false
	case hr.GetMirror() != nil, len(hr.GetMirrors()) > 0, hr.GetCorsPolicy() != nil:
		d.Infof(o, field, "mirroring and CORS are not supported yet; ignored")
	}
	if len(hr.GetMatch()) > 0 {
		for j, mr := range hr.GetMatch() {
			m, applies, ok := s.convertMatch(o, fieldf("%s.match[%d]", field, j), mr, sp)
			if !ok {
				return r, false
			}
			if applies {
				r.Matches = append(r.Matches, m)
			}
		}
		if len(r.Matches) == 0 {
			return r, false // no match clause applies to this port or namespace
		}
	}
	if hr.GetRedirect() != nil || hr.GetDirectResponse() != nil {
		if !s.answerRoute(o, field, hr, &r) {
			return r, false
		}
	} else {
		dests, ok := s.destinations(o, field, hr.GetRoute(), sp)
		if !ok {
			return r, false
		}
		r.Clusters = dests
		r.Hash = s.routeHash(dests)
	}
	if t := hr.GetTimeout(); t != nil {
		if err := t.CheckValid(); err != nil || t.AsDuration() < 0 {
			d.Errorf(o, field+".timeout", "invalid timeout; ignored")
		} else {
			v := t.AsDuration()
			r.Timeout = &v
		}
	}
	if rw := hr.GetRewrite(); rw != nil {
		r.PrefixRewrite = rw.GetUri()
		r.AuthorityRewrite = rw.GetAuthority()
		if rw.GetUriRegexRewrite() != nil {
			d.Infof(o, field+".rewrite.uriRegexRewrite", "regex rewrites are not supported yet; ignored")
		}
	}
	s.routePolicies(o, field, hr, &r)
	// Whatever passes here must not make the proxy reject the whole
	// route configuration.
	for _, er := range envoyRoutes(r) {
		if err := er.Validate(); err != nil {
			d.Errorf(o, field, "route would be rejected by the proxy (%v); skipped", err)
			return r, false
		}
	}
	return r, true
}

// convertMatch converts one match clause. applies is false when the clause
// cannot match traffic of this namespace on this port; ok is false when it
// is broken (the whole route is then skipped).
func (s *scope) convertMatch(o *config.Object, field string, mr *networking.HTTPMatchRequest, sp servicePort) (rm routeMatch, applies, ok bool) {
	d := s.diags
	if mr.GetPort() != 0 && mr.GetPort() != sp.Port {
		return rm, false, true
	}
	if ns := mr.GetSourceNamespace(); ns != "" && ns != s.ns {
		return rm, false, true
	}
	if gws := mr.GetGateways(); len(gws) > 0 && !slices.Contains(gws, "mesh") {
		return rm, false, true
	}
	if len(mr.GetSourceLabels()) > 0 || len(mr.GetQueryParams()) > 0 || len(mr.GetWithoutHeaders()) > 0 || mr.GetScheme() != nil {
		d.Warnf(o, field, "sourceLabels, queryParams, withoutHeaders and scheme matches are not supported yet; route skipped")
		return rm, false, false
	}
	if mr.GetIgnoreUriCase() {
		d.Warnf(o, field+".ignoreUriCase", "case-insensitive URI matches are not supported yet; matching case-sensitively")
	}
	if u := mr.GetUri(); u != nil {
		m, ok := s.stringMatch(o, field+".uri", u)
		if !ok {
			return rm, false, false
		}
		rm.Path = &m
	}
	add := func(name, f string, sm *networking.StringMatch) bool {
		m, ok := s.stringMatch(o, f, sm)
		if ok {
			rm.Headers = append(rm.Headers, headerMatch{Name: name, stringMatch: m})
		}
		return ok
	}
	if m := mr.GetMethod(); m != nil && !add(":method", field+".method", m) {
		return rm, false, false
	}
	if a := mr.GetAuthority(); a != nil && !add(":authority", field+".authority", a) {
		return rm, false, false
	}
	names := make([]string, 0, len(mr.GetHeaders()))
	for name := range mr.GetHeaders() {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if !add(strings.ToLower(name), field+".headers."+name, mr.GetHeaders()[name]) {
			return rm, false, false
		}
	}
	return rm, true, true
}

func (s *scope) stringMatch(o *config.Object, field string, sm *networking.StringMatch) (stringMatch, bool) {
	switch m := sm.GetMatchType().(type) {
	case *networking.StringMatch_Exact:
		return stringMatch{Kind: matchExact, Value: m.Exact}, true
	case *networking.StringMatch_Prefix:
		return stringMatch{Kind: matchPrefix, Value: m.Prefix}, true
	case *networking.StringMatch_Regex:
		if _, err := regexp.Compile(m.Regex); err != nil || m.Regex == "" {
			s.diags.Errorf(o, field+".regex", "bad regular expression %q; route skipped", m.Regex)
			return stringMatch{}, false
		}
		return stringMatch{Kind: matchRegex, Value: m.Regex}, true
	default:
		s.diags.Errorf(o, field, "string match has no exact, prefix or regex; route skipped")
		return stringMatch{}, false
	}
}

// destinations resolves the route's destinations to cluster names, checking
// that hosts, ports and subsets exist for this namespace.
func (s *scope) destinations(o *config.Object, field string, dests []*networking.HTTPRouteDestination, sp servicePort) ([]weightedCluster, bool) {
	d := s.diags
	if len(dests) == 0 {
		d.Errorf(o, field+".route", "route has no destination; skipped")
		return nil, false
	}
	type pick struct {
		svc    *service
		port   servicePort
		subset string
		weight uint32
	}
	var picks []pick
	var total uint32
	for k, rd := range dests {
		f := fieldf("%s.route[%d]", field, k)
		dst := rd.GetDestination()
		host := resolveHost(dst.GetHost(), o.Namespace)
		target, ok := s.byHost[host]
		if !ok {
			d.Errorf(o, f+".destination.host", "host %q is not a service visible from namespace %s; route skipped", host, s.ns)
			return nil, false
		}
		tp, ok := destinationPort(target, dst.GetPort().GetNumber(), sp.Port)
		if !ok {
			d.Errorf(o, f+".destination.port", "service %s has no port %d (or several ports and none given); route skipped", host, dst.GetPort().GetNumber())
			return nil, false
		}
		if sub := dst.GetSubset(); sub != "" {
			dr := s.m.destinationRuleFor(target.Hostname, target.Namespace, s.ns)
			if _, ok := dr.subset(sub); !ok {
				d.Errorf(o, f+".destination.subset", "subset %q of host %s is not defined by any DestinationRule visible from namespace %s; route skipped", sub, host, s.ns)
				return nil, false
			}
		}
		w := uint32(100)
		if len(dests) > 1 {
			if rd.GetWeight() < 0 {
				d.Errorf(o, f+".weight", "negative weight; route skipped")
				return nil, false
			}
			w = uint32(rd.GetWeight())
			if w == 0 {
				continue
			}
		}
		total += w
		picks = append(picks, pick{target, tp, dst.GetSubset(), w})
	}
	if total == 0 {
		d.Errorf(o, field+".route", "all destination weights are zero; route skipped")
		return nil, false
	}
	var out []weightedCluster
	for _, p := range picks {
		name := s.clusters.want(s, p.svc, p.port, p.subset)
		if i := slices.IndexFunc(out, func(w weightedCluster) bool { return w.Cluster == name }); i >= 0 {
			out[i].Weight += p.weight
			continue
		}
		out = append(out, weightedCluster{Cluster: name, Weight: p.weight})
	}
	return out, true
}

// destinationPort picks the port of a destination: the one given, else the
// port the client used if the target has it, else the target's only port.
func destinationPort(target *service, given, used uint32) (servicePort, bool) {
	switch {
	case given != 0:
		return target.port(given)
	case len(target.Ports) == 1:
		return target.Ports[0], true
	default:
		return target.port(used)
	}
}

// tcpRoute returns the destinations of the first TCP route of the
// service's VirtualService that applies to this port and namespace.
func (s *scope) tcpRoute(svc *service, sp servicePort) ([]weightedCluster, bool) {
	o, vs := s.virtualServiceFor(svc)
	for i, tr := range vs.GetTcp() {
		applies := len(tr.GetMatch()) == 0
		for _, m := range tr.GetMatch() {
			gws := m.GetGateways()
			if (m.GetPort() == 0 || m.GetPort() == sp.Port) && (m.GetSourceNamespace() == "" || m.GetSourceNamespace() == s.ns) &&
				len(m.GetDestinationSubnets()) == 0 && len(m.GetSourceLabels()) == 0 && m.GetSourceSubnet() == "" &&
				(len(gws) == 0 || slices.Contains(gws, "mesh")) {
				applies = true
			}
		}
		if !applies {
			continue
		}
		dests := make([]*networking.HTTPRouteDestination, 0, len(tr.GetRoute()))
		for _, rd := range tr.GetRoute() {
			dests = append(dests, &networking.HTTPRouteDestination{Destination: rd.GetDestination(), Weight: rd.GetWeight()})
		}
		if wc, ok := s.destinations(o, fieldf("spec.tcp[%d]", i), dests, sp); ok {
			return wc, true
		}
	}
	return nil, false
}

// routeHash is the consistent hash of a route's destinations when they all
// hash on the same key (Envoy has one hash policy per route).
func (s *scope) routeHash(dests []weightedCluster) *consistentHash {
	var h *consistentHash
	for i, d := range dests {
		ref := s.clusters.byName[d.Cluster]
		if ref == nil || ref.policy.Hash == nil {
			return nil
		}
		c := *ref.policy.Hash
		c.MinRingSize = 0
		if i > 0 && c != *h {
			return nil
		}
		h = &c
	}
	return h
}
