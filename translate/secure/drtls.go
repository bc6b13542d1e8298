package secure

import (
	"slices"
	"strings"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/nodemesh/nodemesh/config"
)

// tlsOverride is what a DestinationRule says about client TLS towards a
// destination: nothing (auto mTLS decides), plaintext, or mesh mTLS.
type tlsOverride int

const (
	tlsAuto tlsOverride = iota
	tlsPlaintext
	tlsMesh
)

// drTLS finds the DestinationRule client namespace clientNS uses for the
// service name.ns (Istio's order: the client's namespace, then the
// service's, then any other exported to the client, by namespace and
// name; exact hosts only) and reads its TLS mode for subset and port:
// subset port-level, subset, port-level, top level. DISABLE is plaintext,
// ISTIO_MUTUAL mesh mTLS; SIMPLE and MUTUAL (certificates of the user's
// own) are not supported and leave the mesh's mTLS on, with a warning.
func (m *nodeModel) drTLS(name, ns, clientNS, subset string, port uint32) tlsOverride {
	var best *config.Object
	bestRank := 3
	for _, o := range m.drs() {
		dr, ok := o.Spec.(*networking.DestinationRule)
		if !ok || !hostIs(dr.GetHost(), o.Namespace, name, ns) || !exported(dr.GetExportTo(), o.Namespace, clientNS) {
			continue
		}
		rank := 2
		switch o.Namespace {
		case clientNS:
			rank = 0
		case ns:
			rank = 1
		}
		if rank < bestRank {
			best, bestRank = o, rank
		}
	}
	if best == nil {
		return tlsAuto
	}
	dr := best.Spec.(*networking.DestinationRule)
	var policies []*networking.TrafficPolicy
	for _, s := range dr.GetSubsets() {
		if subset != "" && s.GetName() == subset {
			policies = append(policies, s.GetTrafficPolicy())
		}
	}
	policies = append(policies, dr.GetTrafficPolicy())
	for _, tp := range policies {
		var tls *networking.ClientTLSSettings
		for _, pl := range tp.GetPortLevelSettings() {
			if pl.GetPort().GetNumber() == port && pl.GetTls() != nil {
				tls = pl.GetTls()
			}
		}
		if tls == nil {
			tls = tp.GetTls()
		}
		if tls == nil {
			continue
		}
		switch tls.GetMode() {
		case networking.ClientTLSSettings_DISABLE:
			return tlsPlaintext
		case networking.ClientTLSSettings_ISTIO_MUTUAL:
			return tlsMesh
		default:
			m.diag(best, "spec.trafficPolicy.tls.mode", "TLS mode "+tls.GetMode().String()+
				" (certificates of your own) is not supported for mesh services; the mesh's mTLS is used")
			return tlsMesh
		}
	}
	return tlsAuto
}

// drs lists the DestinationRules of the snapshot, sorted by namespace and
// name, once per node.
func (m *nodeModel) drs() []*config.Object {
	if m.drList == nil {
		m.drList = slices.Clone(m.snap.List(config.KindDestinationRule))
		slices.SortFunc(m.drList, func(a, b *config.Object) int {
			return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
		})
		if m.drList == nil {
			m.drList = []*config.Object{}
		}
	}
	return m.drList
}

// hostIs reports whether a DestinationRule host written in namespace drNS
// names the Kubernetes service name.ns: "name" (in ns), "name.ns",
// "name.ns.svc" or "name.ns.svc.<domain>".
func hostIs(host, drNS, name, ns string) bool {
	if host == name {
		return drNS == ns
	}
	return host == name+"."+ns || host == name+"."+ns+".svc" || strings.HasPrefix(host, name+"."+ns+".svc.")
}

// exported reports whether a rule of namespace ns with exportTo is
// visible to clientNS (empty or "*": everywhere; ".": its own namespace).
func exported(exportTo []string, ns, clientNS string) bool {
	if len(exportTo) == 0 || ns == clientNS {
		return true
	}
	for _, e := range exportTo {
		if e == "*" || e == clientNS || (e == "." && ns == clientNS) {
			return true
		}
	}
	return false
}
