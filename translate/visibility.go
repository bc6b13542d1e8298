package translate

import (
	"strings"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/nodemesh/nodemesh/config"
)

// RootNamespace holds mesh-wide defaults, such as a Sidecar without a
// workload selector that applies to namespaces without one of their own.
const RootNamespace = "istio-system"

// exportToAnnotation is Istio's exportTo for Kubernetes Services.
const exportToAnnotation = "networking.istio.io/exportTo"

// exportSet says which namespaces may see an object (Istio exportTo).
type exportSet struct {
	all bool
	ns  map[string]bool
}

// parseExportTo reads an exportTo list of the object in namespace own:
// empty or "*" means everywhere, "." the own namespace, "~" nowhere, other
// entries are namespace names.
func parseExportTo(list []string, own string) exportSet {
	if len(list) == 0 {
		return exportSet{all: true}
	}
	e := exportSet{ns: map[string]bool{}}
	for _, v := range list {
		switch v = strings.TrimSpace(v); v {
		case "*":
			e.all = true
		case ".":
			e.ns[own] = true
		case "~", "":
		default:
			e.ns[v] = true
		}
	}
	return e
}

func (e exportSet) visibleTo(ns string) bool { return e.all || e.ns[ns] }

// egressScope is what an Istio Sidecar's egress hosts let a namespace see.
// A nil scope lets everything exported to the namespace through.
type egressScope struct {
	obj   *config.Object
	hosts []egressHost
}

type egressHost struct {
	ns   string // namespace, or "*" for any
	host string // "*", "*.suffix" or an FQDN
	port uint32 // the egress listener's port; 0 for any
}

// parseSidecar reads the egress hosts of a Sidecar in namespace ns.
// It returns nil when the Sidecar does not restrict egress.
func parseSidecar(o *config.Object, sc *networking.Sidecar, d *config.Diagnostics) *egressScope {
	if len(sc.GetEgress()) == 0 {
		return nil
	}
	s := &egressScope{obj: o}
	for i, l := range sc.GetEgress() {
		port := l.GetPort().GetNumber()
		for j, h := range l.GetHosts() {
			nsPart, hostPart, ok := strings.Cut(h, "/")
			if !ok || nsPart == "" || hostPart == "" {
				d.Errorf(o, fieldf("spec.egress[%d].hosts[%d]", i, j), "host %q is not of the form namespace/dnsName; ignored", h)
				continue
			}
			switch nsPart {
			case "~":
				continue // matches nothing
			case ".":
				nsPart = o.Namespace
			}
			s.hosts = append(s.hosts, egressHost{ns: nsPart, host: hostPart, port: port})
		}
	}
	return s
}

// admit returns svc as the scope lets a client see it: nil if not at all,
// else svc itself, or a copy with only the ports that egress listeners with
// a port let through.
func (s *egressScope) admit(svc *service) *service {
	if s == nil {
		return svc
	}
	anyPort, ports := false, map[uint32]bool{}
	for _, h := range s.hosts {
		if (h.ns == "*" || h.ns == svc.Namespace) && hostMatches(h.host, svc.Hostname) {
			anyPort = anyPort || h.port == 0
			ports[h.port] = true
		}
	}
	switch {
	case anyPort:
		return svc
	case len(ports) == 0:
		return nil
	}
	cp := *svc
	cp.Ports = nil
	for _, p := range svc.Ports {
		if ports[p.Port] {
			cp.Ports = append(cp.Ports, p)
		}
	}
	if len(cp.Ports) == 0 {
		return nil
	}
	return &cp
}

// hostMatches reports whether an Istio host pattern ("*", "*.example.com",
// or an exact name) matches the concrete host name.
func hostMatches(pattern, host string) bool {
	switch {
	case pattern == "*":
		return true
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(host, pattern[1:])
	default:
		return pattern == host
	}
}

// resolveHost turns a short host name used in an object of namespace ns into
// an FQDN, as Istio does: a name without dots gets ".<ns>.svc.<suffix>".
func resolveHost(h, ns string) string {
	if h == "" || h == "*" || strings.HasPrefix(h, "*") || strings.Contains(h, ".") {
		return h
	}
	return h + "." + ns + ".svc." + DomainSuffix
}
