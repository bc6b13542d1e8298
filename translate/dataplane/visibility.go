package dataplane

import (
	"strings"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
)

// Which services a client namespace may reach: Istio exportTo
// (services.go) and the egress hosts of a namespace-wide Istio Sidecar
// (the namespace's own, else the root namespace's), as translate scopes the
// namespace's Envoy listener. Egress listeners restricted to a port are
// read as admitting the whole service, so a node may get a service port
// its Envoy does not route, never miss one it does. Sidecars with a
// workload selector do not scope a namespace; translate reports them and
// reports conflicting Sidecars, as it owns the Envoy side.

// egressScope is what a Sidecar's egress hosts let a namespace see; nil
// lets everything through.
type egressScope struct {
	hosts []egressHost
}

type egressHost struct {
	ns   string // namespace, or "*"
	host string // "*", "*.suffix" or an FQDN
}

// readSidecars returns namespace -> egress scope of the namespace-wide
// Sidecars (the first by name wins).
func (m *Mesh) readSidecars() map[string]*egressScope {
	out := map[string]*egressScope{}
	for _, o := range m.src.List(config.KindSidecar) {
		sc, ok := o.Spec.(*networking.Sidecar)
		if !ok || sc.GetWorkloadSelector() != nil {
			continue
		}
		if _, dup := out[o.Namespace]; dup {
			continue
		}
		out[o.Namespace] = parseSidecar(o, sc)
	}
	return out
}

func parseSidecar(o *config.Object, sc *networking.Sidecar) *egressScope {
	if len(sc.GetEgress()) == 0 {
		return nil
	}
	s := &egressScope{}
	for _, l := range sc.GetEgress() {
		for _, h := range l.GetHosts() {
			nsPart, hostPart, ok := strings.Cut(h, "/")
			if !ok || nsPart == "" || hostPart == "" || nsPart == "~" {
				continue
			}
			if nsPart == "." {
				nsPart = o.Namespace
			}
			s.hosts = append(s.hosts, egressHost{ns: nsPart, host: hostPart})
		}
	}
	return s
}

// admits reports whether the scope lets a client reach svc.
func (s *egressScope) admits(svc *service) bool {
	if s == nil {
		return true
	}
	for _, h := range s.hosts {
		if (h.ns == "*" || h.ns == svc.ns) && hostMatches(h.host, svc.host) {
			return true
		}
	}
	return false
}

// scopeFor returns the egress scope of a client namespace.
func (m *Mesh) scopeFor(ns string) *egressScope {
	if s, ok := m.sidecars[ns]; ok {
		return s
	}
	return m.sidecars[translate.RootNamespace]
}

// reachable reports whether clients in ns may reach svc.
func (m *Mesh) reachable(ns string, svc *service) bool {
	return svc.visibleTo(ns) && m.scopeFor(ns).admits(svc)
}
