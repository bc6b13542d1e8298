package translate

import (
	"cmp"
	"slices"
	"strings"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/nodemesh/nodemesh/config"
)

// source is what the translator reads from a config snapshot;
// *config.Snapshot implements it.
type source interface {
	List(kind config.Kind) []*config.Object
	Get(k config.Key) (*config.Object, bool)
	PodsOnNode(node string) []*config.Object
	PodsMatching(ns string, selector map[string]string) []*config.Object
	EndpointSlicesFor(ns, service string) []*config.Object
}

// mesh is the model of a whole snapshot, before any per-node choice.
type mesh struct {
	src        source
	diags      *config.Diagnostics
	services   []*service            // sorted by hostname, Kubernetes first, then namespace
	byHost     map[string][]*service // hostname -> services in the order above
	namespaces []string              // every namespace of the mesh, sorted
	ports      map[string]NamespacePorts
	vsByHost   map[string][]*vsEntry // exact host -> VirtualServices bound to the mesh, by ns/name
	vsWildcard []*vsEntry            // VirtualServices with a wildcard host
	drByHost   map[string][]*destinationRule
	drWildcard []*destinationRule
	sidecars   map[string]sidecar // namespace -> its namespace-wide Sidecar
	endpoints  map[endpointKey][]endpoint
	share      routeShare // shared outbound route configurations
}

// endpointKey names a service port by content, so that a Mesh prepared
// from a later snapshot finds the endpoints of the same service port.
type endpointKey struct {
	obj  config.Key // the Service or ServiceEntry
	host string
	port uint32
}

func (s *service) endpointKey(port uint32) endpointKey {
	return endpointKey{obj: s.obj.Key, host: s.Hostname, port: port}
}

func buildMesh(src source, d *config.Diagnostics) *mesh {
	m := &mesh{
		src:       src,
		diags:     d,
		byHost:    map[string][]*service{},
		sidecars:  map[string]sidecar{},
		endpoints: map[endpointKey][]endpoint{},
		vsByHost:  map[string][]*vsEntry{},
		drByHost:  map[string][]*destinationRule{},
	}
	for _, o := range src.List(config.KindService) {
		if svc := kubeService(o, d); svc != nil {
			m.services = append(m.services, svc)
		}
	}
	for _, o := range src.List(config.KindServiceEntry) {
		m.services = append(m.services, serviceEntryServices(o, d)...)
	}
	slices.SortStableFunc(m.services, func(a, b *service) int {
		return cmp.Or(strings.Compare(a.Hostname, b.Hostname), compareBool(a.ServiceEntry, b.ServiceEntry),
			strings.Compare(a.Namespace, b.Namespace))
	})
	for _, s := range m.services {
		m.byHost[s.Hostname] = append(m.byHost[s.Hostname], s)
	}
	m.namespaces = meshNamespaces(src)
	m.ports = AllocateNamespacePorts(m.namespaces)
	m.readSidecars()
	m.readDestinationRules()
	m.readVirtualServices()
	for _, svc := range m.services {
		for _, sp := range svc.Ports {
			m.endpointsFor(svc, sp)
		}
	}
	return m
}

// meshNamespaces is the set listener ports are allocated over: names of
// Namespace objects and namespaces of Pods and Services, sorted.
func meshNamespaces(src source) []string {
	var nss []string
	for _, o := range src.List(config.KindNamespace) {
		nss = append(nss, o.Name)
	}
	for _, kind := range []config.Kind{config.KindPod, config.KindService} {
		for _, o := range src.List(kind) {
			nss = append(nss, o.Namespace)
		}
	}
	slices.Sort(nss)
	return slices.Compact(nss)
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case !a:
		return -1
	default:
		return 1
	}
}

// readSidecars keeps the namespace-wide Sidecars (no workload selector).
func (m *mesh) readSidecars() {
	for _, o := range m.src.List(config.KindSidecar) {
		sc, ok := o.Spec.(*networking.Sidecar)
		if !ok || sc == nil {
			m.diags.Errorf(o, "spec", "unexpected spec type %T", o.Spec)
			continue
		}
		if sc.GetWorkloadSelector() != nil {
			m.diags.Warnf(o, "spec.workloadSelector", "Sidecars with a workload selector are not supported by per-namespace listeners; ignored")
			continue
		}
		if _, dup := m.sidecars[o.Namespace]; dup {
			m.diags.Errorf(o, "metadata.name", "namespace %s already has a Sidecar without workload selector; ignored", o.Namespace)
			continue
		}
		otp := sc.GetOutboundTrafficPolicy()
		m.sidecars[o.Namespace] = sidecar{
			egress:       parseSidecar(o, sc, m.diags),
			registryOnly: otp != nil && otp.GetMode() == networking.OutboundTrafficPolicy_REGISTRY_ONLY,
		}
	}
}

// sidecar is what a namespace-wide Istio Sidecar says.
type sidecar struct {
	egress       *egressScope // nil: no restriction
	registryOnly bool         // outboundTrafficPolicy REGISTRY_ONLY: unknown destinations are dropped
}

// sidecarFor returns the Sidecar of a client namespace: its own, else the
// root namespace's, else the zero value (see everything, allow any).
func (m *mesh) sidecarFor(ns string) sidecar {
	if s, ok := m.sidecars[ns]; ok {
		return s
	}
	return m.sidecars[RootNamespace]
}

// readVirtualServices keeps the VirtualServices that apply to mesh traffic.
func (m *mesh) readVirtualServices() {
	for _, o := range m.src.List(config.KindVirtualService) {
		vs, ok := o.Spec.(*networking.VirtualService)
		if !ok || vs == nil {
			m.diags.Errorf(o, "spec", "unexpected spec type %T", o.Spec)
			continue
		}
		if len(vs.GetGateways()) > 0 && !slices.Contains(vs.GetGateways(), "mesh") {
			continue // gateway-only; gateways are not served yet
		}
		e := &vsEntry{obj: o, spec: vs, export: parseExportTo(vs.GetExportTo(), o.Namespace)}
		wildcard := false
		for i, h := range vs.GetHosts() {
			h = resolveHost(h, o.Namespace)
			e.hosts = append(e.hosts, h)
			if !strings.HasPrefix(h, "*") && len(m.byHost[h]) == 0 {
				m.diags.Warnf(o, fieldf("spec.hosts[%d]", i), "host %s is not a known service or ServiceEntry host; no traffic is routed by it", h)
			}
			if strings.HasPrefix(h, "*") {
				wildcard = true
			} else if l := m.vsByHost[h]; len(l) == 0 || l[len(l)-1] != e {
				m.vsByHost[h] = append(l, e)
			}
		}
		if wildcard {
			m.vsWildcard = append(m.vsWildcard, e)
		}
	}
}

// vsEntry is a VirtualService with its hosts resolved to FQDNs.
type vsEntry struct {
	obj    *config.Object
	spec   *networking.VirtualService
	export exportSet
	hosts  []string
}

// visibleServices returns the services a client namespace can reach,
// sorted by hostname, one per hostname.
func (m *mesh) visibleServices(ns string) []*service {
	scope := m.sidecarFor(ns).egress
	var out []*service
	for _, s := range m.services {
		if !s.ExportTo.visibleTo(ns) && s.Namespace != ns {
			continue
		}
		if s = scope.admit(s); s == nil {
			continue
		}
		if n := len(out); n > 0 && out[n-1].Hostname == s.Hostname {
			continue // first (Kubernetes, then by namespace) wins
		}
		out = append(out, s)
	}
	return out
}
