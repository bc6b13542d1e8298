package dataplane

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
)

// source is what the translator reads from a snapshot; *config.Snapshot
// implements it.
type source interface {
	List(kind config.Kind) []*config.Object
	Get(k config.Key) (*config.Object, bool)
	PodsOnNode(node string) []*config.Object
	PodsMatching(ns string, selector map[string]string) []*config.Object
	EndpointSlicesFor(ns, service string) []*config.Object
}

// Mesh is a snapshot prepared for translation: workloads, identities,
// namespace ids, services and policies of the whole mesh, computed once and
// shared by every node translated from it. It is read-only after Prepare
// and safe for concurrent use.
type Mesh struct {
	src        source
	opts       Options
	td         spiffeid.TrustDomain
	diags      config.Diagnostics
	workloads  []*workload // every pod with an IP, sorted by namespace/name
	byIP       map[netip.Addr]*workload
	byIdentity map[uint32][]*workload // identity -> its workloads, sorted
	identities map[string]uint32      // "<ns>/<sa>" -> identity
	idNames    []idName               // every identity, sorted by name
	nsIDs      map[string]uint32
	ports      map[string]translate.NamespacePorts
	services   []*service
	sidecars   map[string]*egressScope // namespace -> Sidecar egress scope
	// Outputs in ResourceName order (sortOutputs).
	servicePorts []namedService
	outWorkloads []*workload
	policies     []*policy
	// kernel is the policy work per identity (policy.go).
	kernel map[uint32]*identityPolicy
}

// workload is a pod with at least one IP.
type workload struct {
	obj      *config.Object
	ns, name string
	sa       string
	node     string
	ips      []netip.Addr
	identity uint32
	msg      *dataplanev1.Workload
}

// Prepare builds the model of a snapshot.
func Prepare(snap *config.Snapshot, opts Options) *Mesh {
	return prepare(snap, opts)
}

func prepare(src source, opts Options) *Mesh {
	m := &Mesh{
		src:        src,
		opts:       opts,
		byIP:       map[netip.Addr]*workload{},
		byIdentity: map[uint32][]*workload{},
		kernel:     map[uint32]*identityPolicy{},
	}
	td, err := spiffeid.TrustDomainFromString(opts.trustDomain())
	if err != nil {
		m.diags.Errorf(nil, "trustDomain", "bad trust domain %q: %v; using %s", opts.TrustDomain, err, DefaultTrustDomain)
		m.opts.TrustDomain = DefaultTrustDomain
		td = spiffeid.RequireTrustDomainFromString(DefaultTrustDomain)
	}
	m.td = td
	m.allocateIDs()
	m.readWorkloads()
	m.readServices()
	m.sidecars = m.readSidecars()
	m.readPolicies()
	m.resolvePolicies()
	m.markL7()
	m.sortOutputs()
	return m
}

// sortOutputs orders what Translate emits by ResourceName once, so that a
// node's resources come out sorted without sorting per node.
func (m *Mesh) sortOutputs() {
	for _, s := range m.services {
		for _, sp := range s.ports {
			m.servicePorts = append(m.servicePorts, namedService{s, ResourceName(sp.msg), sp.msg})
		}
	}
	slices.SortFunc(m.servicePorts, func(a, b namedService) int { return cmp.Compare(a.name, b.name) })
	m.outWorkloads = slices.Clone(m.workloads)
	slices.SortFunc(m.outWorkloads, func(a, b *workload) int { return cmp.Compare(ResourceName(a.msg), ResourceName(b.msg)) })
	slices.SortStableFunc(m.policies, func(a, b *policy) int {
		return cmp.Compare(a.obj.Namespace+"/"+a.obj.Name, b.obj.Namespace+"/"+b.obj.Name)
	})
}

// namedService is one service port's resource with its service.
type namedService struct {
	svc  *service
	name string
	msg  *dataplanev1.Service
}

// allocateIDs numbers identities (every namespace/service account of a pod
// or ServiceAccount object) and namespaces (those of Namespace objects,
// Pods and Services: the set translate allocates listener ports over, so
// both agree).
func (m *Mesh) allocateIDs() {
	var ids, nss []string
	for _, o := range m.src.List(config.KindNamespace) {
		nss = append(nss, o.Name)
	}
	for _, o := range m.src.List(config.KindService) {
		nss = append(nss, o.Namespace)
	}
	for _, o := range m.src.List(config.KindServiceAccount) {
		ids = append(ids, identityName(o.Namespace, o.Name))
	}
	for _, o := range m.src.List(config.KindPod) {
		nss = append(nss, o.Namespace)
		if pod, ok := o.Spec.(*corev1.Pod); ok {
			ids = append(ids, identityName(o.Namespace, serviceAccount(pod)))
		}
	}
	m.identities = allocate(ids, IdentityBase, IdentitySlots)
	for _, n := range sortedKeys(m.identities) {
		ns, sa, _ := strings.Cut(n, "/")
		m.idNames = append(m.idNames, idName{ns: ns, sa: sa, id: m.identities[n]})
	}
	m.nsIDs = allocate(nss, NamespaceIDBase, NamespaceIDSlots)
	m.ports = translate.AllocateNamespacePorts(nss)
}

func serviceAccount(pod *corev1.Pod) string {
	if pod.Spec.ServiceAccountName != "" {
		return pod.Spec.ServiceAccountName
	}
	return "default"
}

// readWorkloads keeps every pod that is not finished, has an IP and has a
// network namespace of its own: a hostNetwork pod has the node's IP, which
// the agent registers as the host, and no identity of its own on the wire.
func (m *Mesh) readWorkloads() {
	for _, o := range m.src.List(config.KindPod) {
		pod, ok := o.Spec.(*corev1.Pod)
		if !ok {
			m.diags.Errorf(o, "spec", "unexpected spec type %T", o.Spec)
			continue
		}
		if finished(pod) || pod.Spec.HostNetwork {
			continue
		}
		ips := podIPs(o, pod, &m.diags)
		if len(ips) == 0 {
			continue
		}
		w := &workload{obj: o, ns: o.Namespace, name: o.Name, sa: serviceAccount(pod), node: pod.Spec.NodeName, ips: ips}
		w.identity = m.identities[identityName(w.ns, w.sa)]
		var kept []netip.Addr
		for _, ip := range ips {
			if other, dup := m.byIP[ip]; dup {
				m.diags.Errorf(o, "status.podIPs", "IP %s is also the IP of pod %s/%s; ignored here", ip, other.ns, other.name)
				continue
			}
			m.byIP[ip] = w
			kept = append(kept, ip)
		}
		if len(kept) == 0 {
			continue
		}
		w.ips = kept
		w.msg = &dataplanev1.Workload{Namespace: w.ns, Name: w.name, Ips: addrStrings(kept), Identity: w.identity,
			SpiffeId: m.spiffeID(w), ServiceAccount: w.sa, Node: w.node, NamespaceId: m.nsIDs[w.ns], PodUid: string(pod.UID)}
		m.workloads = append(m.workloads, w)
		m.byIdentity[w.identity] = append(m.byIdentity[w.identity], w)
	}
}

func finished(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}

// podIPs reads status.podIPs (or status.podIP), sorted, without duplicates.
func podIPs(o *config.Object, pod *corev1.Pod, d *config.Diagnostics) []netip.Addr {
	raw := []string{pod.Status.PodIP}
	for _, p := range pod.Status.PodIPs {
		raw = append(raw, p.IP)
	}
	var out []netip.Addr
	for _, s := range raw {
		if s == "" {
			continue
		}
		ip, err := netip.ParseAddr(s)
		if err != nil {
			d.Errorf(o, "status.podIPs", "%q is not an IP address; ignored", s)
			continue
		}
		out = append(out, ip.Unmap())
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// spiffeID builds spiffe://<td>/ns/<ns>/sa/<sa>, or "" when a segment is
// not a valid SPIFFE path segment (diagnosed once per workload).
func (m *Mesh) spiffeID(w *workload) string {
	id, err := spiffeid.FromSegments(m.td, "ns", w.ns, "sa", w.sa)
	if err != nil {
		m.diags.Errorf(w.obj, "spec.serviceAccountName", "no SPIFFE ID for %s/%s: %v", w.ns, w.sa, err)
		return ""
	}
	return id.String()
}

// describe names a workload in messages.
func (w *workload) String() string { return fmt.Sprintf("%s/%s", w.ns, w.name) }

// idName is an allocated identity with its parts.
type idName struct {
	ns, sa string
	id     uint32
}

// identity returns the set holding the identity of ns/sa (empty when the
// mesh has no such identity).
func (m *Mesh) identity(ns, sa string) idSet {
	out := idSet{ids: map[uint32]bool{}}
	if id, ok := m.identities[identityName(ns, sa)]; ok {
		out.ids[id] = true
	}
	return out
}

// identitiesWhere returns the identities of the mesh for which match holds.
func (m *Mesh) identitiesWhere(match func(ns, sa string) bool) idSet {
	out := idSet{ids: map[uint32]bool{}}
	for _, n := range m.idNames {
		if match(n.ns, n.sa) {
			out.ids[n.id] = true
		}
	}
	return out
}

func addrStrings(ips []netip.Addr) []string {
	out := make([]string, len(ips))
	for i, ip := range ips {
		out[i] = ip.String()
	}
	return out
}

func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K { return slices.Sorted(maps.Keys(m)) }
