package authz

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	networkingv1alpha3 "istio.io/api/networking/v1alpha3"

	"github.com/nodemesh/nodemesh/config"
)

// SMIPolicies turns every SMI TrafficTarget of the snapshot into an ALLOW
// policy of the model (Policy.SMI set), selecting the workloads of the
// destination namespace that run as the destination service account:
//
//   - sources: their SPIFFE IDs (source.principal; L4);
//   - TCPRoute rules: their ports (destination.port; L4, all ports when a
//     route lists none); a v1alpha2 destination port likewise;
//   - HTTPRouteGroup rules: one permission per named match (all matches
//     when the rule names none): pathRegex anchored at the start of the
//     path, methods ("*": any), header regexes; ANDed with the ports;
//   - UDPRoute rules are for the kernel only: a TrafficTarget with nothing
//     but UDPRoutes allows no TCP or HTTP traffic in the proxy.
//
// A TrafficTarget whose routes cannot be found allows nothing (Error
// diagnostic) but still makes its destination default-deny, as SMI's
// additive model says.
func SMIPolicies(snap *config.Snapshot, opts Options) ([]*Policy, []config.Diagnostic) {
	var out []*Policy
	var diags []config.Diagnostic
	for _, o := range snap.List(config.KindTrafficTarget) {
		tt, ok := o.Spec.(*config.TrafficTarget)
		if !ok {
			continue
		}
		p, d := smiPolicy(snap, o, tt, opts)
		diags = append(diags, d...)
		out = append(out, p)
	}
	return out, diags
}

func smiPolicy(snap *config.Snapshot, o *config.Object, tt *config.TrafficTarget, opts Options) (*Policy, []config.Diagnostic) {
	var diags []config.Diagnostic
	destNS := tt.Destination.Namespace
	if destNS == "" {
		destNS = o.Namespace
	}
	p := &Policy{Namespace: destNS, Name: "smi." + o.Name, Action: ActionAllow, Object: o, SMI: true,
		DestServiceAccount: tt.Destination.Name}
	var sources []string
	for _, s := range tt.Sources {
		ns := s.Namespace
		if ns == "" {
			ns = o.Namespace
		}
		sources = append(sources, opts.trustDomain()+"/ns/"+ns+"/sa/"+s.Name)
	}
	var ports []string
	allPorts, httpRules, l4Rules := false, false, false
	var matches []Clause
	for i, r := range tt.Rules {
		field := fmt.Sprintf("spec.rules[%d]", i)
		switch config.Kind(r.Kind) {
		case config.KindTCPRoute:
			ro, ok := snap.Get(config.Key{Kind: config.KindTCPRoute, Namespace: o.Namespace, Name: r.Name})
			if !ok {
				diags = append(diags, diag(config.SeverityError, o, field+".name", "TCPRoute %s/%s not found: the rule allows nothing", o.Namespace, r.Name))
				continue
			}
			l4Rules = true
			rp := ro.Spec.(*config.TCPRoute).Ports()
			if len(rp) == 0 {
				allPorts = true
			}
			for _, n := range rp {
				ports = append(ports, strconv.Itoa(n))
			}
		case config.KindUDPRoute:
			diags = append(diags, diag(config.SeverityInfo, o, field, "UDPRoute: enforced in the kernel only; the node proxy serves no UDP"))
		case config.KindHTTPRouteGroup:
			ro, ok := snap.Get(config.Key{Kind: config.KindHTTPRouteGroup, Namespace: o.Namespace, Name: r.Name})
			if !ok {
				diags = append(diags, diag(config.SeverityError, o, field+".name", "HTTPRouteGroup %s/%s not found: the rule allows nothing", o.Namespace, r.Name))
				continue
			}
			httpRules = true
			c, d := httpMatches(o, field, ro.Spec.(*config.HTTPRouteGroup), r.Matches)
			diags = append(diags, d...)
			matches = append(matches, c...)
		}
	}
	rule := Rule{Field: "spec", Principals: []Clause{{{Key: keySourcePrincipal, Values: sources, Field: "spec.sources"}}}}
	if tt.Destination.Port != nil {
		ports = append(ports, strconv.Itoa(*tt.Destination.Port))
		l4Rules = true
	}
	var portAttr Clause
	if len(ports) > 0 && (!allPorts || tt.Destination.Port != nil) {
		if tt.Destination.Port != nil {
			ports = []string{strconv.Itoa(*tt.Destination.Port)}
		}
		portAttr = Clause{{Key: keyDestPort, Values: ports, Field: "spec.rules"}}
	}
	switch {
	case httpRules:
		for _, m := range matches {
			rule.Permissions = append(rule.Permissions, append(slices.Clone(portAttr), m...))
		}
		if len(rule.Permissions) == 0 {
			rule.Permissions = []Clause{never("spec.rules")}
		}
	case l4Rules:
		if portAttr != nil {
			rule.Permissions = []Clause{portAttr}
		}
	default:
		rule.Permissions = []Clause{never("spec.rules")}
	}
	p.Rules = []Rule{rule}
	return p, diags
}

func never(field string) Clause {
	return Clause{{Key: keyNever, Values: []string{"never"}, Field: field}}
}

// httpMatches returns one permission clause per selected match.
func httpMatches(o *config.Object, field string, g *config.HTTPRouteGroup, names []string) ([]Clause, []config.Diagnostic) {
	var diags []config.Diagnostic
	for j, n := range names {
		if !slices.ContainsFunc(g.Matches, func(m config.HTTPMatch) bool { return m.Name == n }) {
			diags = append(diags, diag(config.SeverityError, o, fmt.Sprintf("%s.matches[%d]", field, j), "no match %q in the HTTPRouteGroup", n))
		}
	}
	var out []Clause
	for _, m := range g.Matches {
		if len(names) > 0 && !slices.Contains(names, m.Name) {
			continue
		}
		var c Clause
		if m.PathRegex != "" && m.PathRegex != ".*" && m.PathRegex != "/.*" {
			c = append(c, Attr{Key: keySMIPathRegex, Values: []string{m.PathRegex}, Field: field})
		}
		if len(m.Methods) > 0 && !slices.Contains(m.Methods, "*") {
			c = append(c, Attr{Key: keyMethod, Values: m.Methods, Field: field})
		}
		for _, h := range slices.Sorted(mapsKeys(m.Headers)) {
			c = append(c, Attr{Key: keySMIHeaderPrefix + strings.ToLower(h) + "]", Values: []string{m.Headers[h]}, Field: field})
		}
		out = append(out, c)
	}
	return out, diags
}

func mapsKeys(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// SelectSMI returns the SMI policies selecting the workload.
func SelectSMI(ps []*Policy, w Workload) []*Policy {
	var out []*Policy
	for _, p := range ps {
		if p.SMI && p.Namespace == w.Namespace && p.DestServiceAccount == w.serviceAccount() {
			out = append(out, p)
		}
	}
	return out
}

// WeightedBackend is one backend service of a TrafficSplit.
type WeightedBackend struct {
	Service string // name, in the TrafficSplit's namespace
	Host    string // <service>.<namespace>.svc.cluster.local
	Weight  uint32
}

// TrafficSplitWeights returns the backends of the TrafficSplit for
// rootService (a Service name of namespace) and their weights, for the
// routes of the root service's host; nil when no TrafficSplit applies.
//
// Precedence: an Istio VirtualService for the root service's host wins; the
// TrafficSplit is then ignored with a Warning. With several TrafficSplits
// for one service the first by name is used (Warning). Backends whose
// Service does not exist are dropped (Error); if no weight is left the split
// is ignored (Error). Splits with HTTPRouteGroup matches (v1alpha3+) apply
// to matching requests only: they are not returned here (Warning) — use
// TrafficSplitFor.
func TrafficSplitWeights(snap *config.Snapshot, namespace, rootService string) ([]WeightedBackend, []config.Diagnostic) {
	o, ts, diags := trafficSplitFor(snap, namespace, rootService)
	if ts == nil {
		return nil, diags
	}
	if len(ts.Matches) > 0 {
		return nil, append(diags, diag(config.SeverityWarning, o, "spec.matches",
			"a TrafficSplit with matches applies to matching requests only; not used as the service's default split"))
	}
	return splitBackends(snap, o, ts, diags)
}

// TrafficSplitRoute is the TrafficSplit of one root service, resolved.
type TrafficSplitRoute struct {
	Name     string // the TrafficSplit's name
	Backends []WeightedBackend
	// Matches restrict the split to requests matching one of them (the
	// HTTPRouteGroups of spec.matches); empty: every request.
	Matches []config.HTTPMatch
}

// TrafficSplitFor is TrafficSplitWeights with the split's HTTP matches.
func TrafficSplitFor(snap *config.Snapshot, namespace, rootService string) (*TrafficSplitRoute, []config.Diagnostic) {
	o, ts, diags := trafficSplitFor(snap, namespace, rootService)
	if ts == nil {
		return nil, diags
	}
	r := &TrafficSplitRoute{Name: o.Name}
	for i, m := range ts.Matches {
		g, ok := snap.Get(config.Key{Kind: config.KindHTTPRouteGroup, Namespace: o.Namespace, Name: m.Name})
		if !ok {
			diags = append(diags, diag(config.SeverityError, o, fmt.Sprintf("spec.matches[%d].name", i),
				"HTTPRouteGroup %s/%s not found: the TrafficSplit is ignored", o.Namespace, m.Name))
			return nil, diags
		}
		r.Matches = append(r.Matches, g.Spec.(*config.HTTPRouteGroup).Matches...)
	}
	r.Backends, diags = splitBackends(snap, o, ts, diags)
	if r.Backends == nil {
		return nil, diags
	}
	return r, diags
}

func splitBackends(snap *config.Snapshot, o *config.Object, ts *config.TrafficSplit, diags []config.Diagnostic) ([]WeightedBackend, []config.Diagnostic) {
	var out []WeightedBackend
	var total uint32
	for i, b := range ts.Backends {
		name := shortName(b.Service, o.Namespace)
		if _, ok := snap.Get(config.Key{Kind: config.KindService, Namespace: o.Namespace, Name: name}); !ok {
			diags = append(diags, diag(config.SeverityError, o, fmt.Sprintf("spec.backends[%d].service", i),
				"Service %s/%s not found: backend dropped", o.Namespace, name))
			continue
		}
		out = append(out, WeightedBackend{Service: name, Host: name + "." + o.Namespace + ".svc." + DomainSuffix, Weight: uint32(b.Weight)})
		total += uint32(b.Weight)
	}
	if total == 0 {
		return nil, append(diags, diag(config.SeverityError, o, "spec.backends", "no backend with a positive weight: the TrafficSplit is ignored"))
	}
	return out, diags
}

// DomainSuffix is the cluster's DNS domain.
const DomainSuffix = "cluster.local"

func shortName(svc, ns string) string {
	for _, suffix := range []string{"." + ns + ".svc." + DomainSuffix, "." + ns + ".svc", "." + ns} {
		if s, ok := strings.CutSuffix(svc, suffix); ok {
			return s
		}
	}
	return svc
}

func trafficSplitFor(snap *config.Snapshot, namespace, rootService string) (*config.Object, *config.TrafficSplit, []config.Diagnostic) {
	var found []*config.Object
	for _, o := range snap.ListInNamespace(config.KindTrafficSplit, namespace) {
		if ts, ok := o.Spec.(*config.TrafficSplit); ok && shortName(ts.Service, namespace) == rootService {
			found = append(found, o)
		}
	}
	if len(found) == 0 {
		return nil, nil, nil
	}
	o := found[0]
	var diags []config.Diagnostic
	for _, other := range found[1:] {
		diags = append(diags, diag(config.SeverityWarning, other, "spec.service",
			"TrafficSplit %s already splits service %s: this one is ignored", o.Name, rootService))
	}
	host := rootService + "." + namespace + ".svc." + DomainSuffix
	if vs := virtualServiceFor(snap, host); vs != nil {
		return nil, nil, append(diags, diag(config.SeverityWarning, o, "spec.service",
			"VirtualService %s/%s routes host %s and takes precedence: the TrafficSplit is ignored", vs.Namespace, vs.Name, host))
	}
	return o, o.Spec.(*config.TrafficSplit), diags
}

// virtualServiceFor returns the first VirtualService (not bound to a
// gateway only) whose hosts cover host.
func virtualServiceFor(snap *config.Snapshot, host string) *config.Object {
	for _, o := range snap.List(config.KindVirtualService) {
		vs, ok := o.Spec.(*networkingv1alpha3.VirtualService)
		if !ok {
			continue
		}
		if gws := vs.GetGateways(); len(gws) > 0 && !slices.Contains(gws, "mesh") {
			continue
		}
		for _, h := range vs.GetHosts() {
			if hostCovers(fqdn(h, o.Namespace), host) {
				return o
			}
		}
	}
	return nil
}

func fqdn(h, ns string) string {
	if strings.HasPrefix(h, "*") || strings.Count(h, ".") >= 3 || strings.HasSuffix(h, "."+DomainSuffix) {
		return h
	}
	switch strings.Count(h, ".") {
	case 0:
		return h + "." + ns + ".svc." + DomainSuffix
	case 1:
		return h + ".svc." + DomainSuffix
	case 2:
		if strings.HasSuffix(h, ".svc") {
			return h + "." + DomainSuffix
		}
	}
	return h
}

func hostCovers(pattern, host string) bool {
	if rest, ok := strings.CutPrefix(pattern, "*"); ok {
		return strings.HasSuffix(host, rest)
	}
	return pattern == host
}
