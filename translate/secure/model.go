package secure

import (
	"errors"
	"slices"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"

	"github.com/nodemesh/nodemesh/config"
)

// localPod is a running pod of the node with an address.
type localPod struct {
	obj  *config.Object
	ip   string
	id   spiffeid.ID
	mode podMode
}

// account is one service account of a namespace with pods on the node.
type account struct {
	name string
	id   spiffeid.ID
	ips  []string // sorted
}

// nodeModel is what Apply needs to know about one node.
type nodeModel struct {
	opts     Options
	snap     *config.Snapshot
	pa       *peerAuth
	diags    *[]config.Diagnostic
	byIP     map[string]*localPod
	accounts map[string][]*account // namespace -> service accounts, by name
	dests    map[string]destination
	shared   *sharedCache // per-account resources, shared by the nodes of a Prepared
	drList   []*config.Object
}

func running(o *config.Object) (*corev1.Pod, bool) {
	pod, ok := o.Spec.(*corev1.Pod)
	if !ok || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil, false
	}
	return pod, true
}

func serviceAccount(pod *corev1.Pod) string {
	if pod.Spec.ServiceAccountName != "" {
		return pod.Spec.ServiceAccountName
	}
	return "default"
}

func newNodeModel(snap *config.Snapshot, node string, opts Options, diags *[]config.Diagnostic, shared *sharedCache) *nodeModel {
	m := &nodeModel{opts: opts, snap: snap, diags: diags, pa: newPeerAuth(snap, opts.RootNamespace, diags),
		byIP: map[string]*localPod{}, accounts: map[string][]*account{}, dests: map[string]destination{},
		shared: shared}
	if node == "" {
		return m
	}
	accts := map[string]map[string]*account{}
	for _, o := range snap.PodsOnNode(node) {
		pod, ok := running(o)
		if !ok || pod.Status.PodIP == "" || pod.Spec.HostNetwork {
			continue
		}
		id, err := WorkloadID(opts.TrustDomain, o.Namespace, serviceAccount(pod))
		if errors.Is(err, ErrReservedNamespace) {
			continue // nodemesh's own pods are not mesh workloads
		}
		if err != nil {
			m.diag(o, "spec.serviceAccountName", err.Error())
			continue
		}
		m.byIP[pod.Status.PodIP] = &localPod{obj: o, ip: pod.Status.PodIP, id: id, mode: m.pa.forPod(o)}
		if accts[o.Namespace] == nil {
			accts[o.Namespace] = map[string]*account{}
		}
		a := accts[o.Namespace][serviceAccount(pod)]
		if a == nil {
			a = &account{name: serviceAccount(pod), id: id}
			accts[o.Namespace][a.name] = a
		}
		a.ips = append(a.ips, pod.Status.PodIP)
	}
	for ns, byName := range accts {
		for _, a := range byName {
			slices.Sort(a.ips)
			a.ips = slices.Compact(a.ips)
			m.accounts[ns] = append(m.accounts[ns], a)
		}
		slices.SortFunc(m.accounts[ns], func(x, y *account) int { return strings.Compare(x.name, y.name) })
	}
	return m
}

func (m *nodeModel) diag(o *config.Object, field, msg string) {
	*m.diags = append(*m.diags, config.Diagnostic{Severity: config.SeverityWarning, Origin: o.Origin, Object: o.Key, Field: field, Message: msg})
}

// destination is what a client needs to know about the server side of a
// cluster: whether it is in the mesh, whether it accepts mTLS, and whom to
// expect.
type destination struct {
	key       string // namespace/name of the service
	mesh      bool   // a Kubernetes service of the mesh (not a ServiceEntry, not passthrough)
	plaintext bool   // every selected pod DISABLEs mTLS on the target port
	peers     peerMatcher
}

// destinationOf parses Istio's cluster name outbound|<port>|<subset>|<host>
// and looks the host up as <name>.<namespace>.svc.<domain>.
func (m *nodeModel) destinationOf(cluster, clientNS string) destination {
	k := cluster + "\x00" + clientNS
	if d, ok := m.dests[k]; ok {
		return d
	}
	d := m.resolve(cluster)
	if d.mesh {
		parts := strings.Split(cluster, "|")
		port, _ := strconv.ParseUint(parts[1], 10, 32)
		labels := strings.Split(parts[3], ".")
		switch m.drTLS(labels[0], labels[1], clientNS, parts[2], uint32(port)) {
		case tlsPlaintext:
			d.plaintext = true
		case tlsMesh:
			d.plaintext = false
		}
	}
	m.dests[k] = d
	return d
}

func (m *nodeModel) resolve(cluster string) destination {
	parts := strings.Split(cluster, "|")
	if len(parts) != 4 || parts[0] != "outbound" {
		return destination{}
	}
	port, err := strconv.ParseUint(parts[1], 10, 32)
	if err != nil {
		return destination{}
	}
	labels := strings.Split(parts[3], ".")
	if len(labels) < 3 || labels[2] != "svc" {
		return destination{}
	}
	obj, ok := m.snap.Get(config.Key{Kind: config.KindService, Namespace: labels[1], Name: labels[0]})
	if !ok {
		return destination{}
	}
	svc, ok := obj.Spec.(*corev1.Service)
	if !ok {
		return destination{}
	}
	d := destination{key: obj.Namespace + "/" + obj.Name, mesh: true, peers: peerMatcher{prefix: namespacePrefix(m.opts.TrustDomain, obj.Namespace)}}
	var sport *corev1.ServicePort
	for i, sp := range svc.Spec.Ports {
		if uint32(sp.Port) == uint32(port) {
			sport = &svc.Spec.Ports[i]
		}
	}
	pods := m.snap.PodsMatching(obj.Namespace, svc.Spec.Selector)
	seen := map[string]bool{}
	disabled := 0
	target := uint32(port)
	for _, o := range pods {
		pod, ok := running(o)
		if !ok {
			continue
		}
		target = targetPort(sport, pod, uint32(port))
		if m.pa.forPod(o).at(target) == Disable {
			disabled++
		}
		id, err := WorkloadID(m.opts.TrustDomain, o.Namespace, serviceAccount(pod))
		if err != nil || seen[id.String()] {
			continue
		}
		seen[id.String()] = true
		d.peers.ids = append(d.peers.ids, id)
	}
	slices.SortFunc(d.peers.ids, func(a, b spiffeid.ID) int { return strings.Compare(a.String(), b.String()) })
	d.plaintext = len(pods) > 0 && disabled == len(pods)
	if disabled > 0 && disabled < len(pods) {
		m.diag(obj, "", "some pods of the service DISABLE mutual TLS on port "+strconv.FormatUint(uint64(target), 10)+
			" and others do not; clients use mTLS, so the DISABLEd pods will refuse them")
	}
	return d
}

// Identities lists, sorted, the workload identities of the running pods
// scheduled on node: the only SVIDs that node may receive.
func Identities(snap *config.Snapshot, node string, td spiffeid.TrustDomain) []spiffeid.ID {
	seen := map[string]spiffeid.ID{}
	for _, o := range snap.PodsOnNode(node) {
		pod, ok := running(o)
		if !ok || pod.Spec.HostNetwork {
			continue
		}
		if id, err := WorkloadID(td, o.Namespace, serviceAccount(pod)); err == nil {
			seen[id.String()] = id
		}
	}
	out := make([]spiffeid.ID, 0, len(seen))
	for _, id := range seen {
		out = append(out, id)
	}
	slices.SortFunc(out, func(a, b spiffeid.ID) int { return strings.Compare(a.String(), b.String()) })
	return out
}

// upstreamSocket is the upstream TLS of id towards d, built once per pair.
func (m *nodeModel) upstreamSocket(id spiffeid.ID, d destination) *corev3.TransportSocket {
	return m.shared.socket(id.String()+"|"+d.key, func() *corev3.TransportSocket { return upstreamSDS(id, d.peers) })
}

// targetPort is the pod port a service port forwards to: a number, or a
// named container port of the pod (the service port when neither).
func targetPort(sp *corev1.ServicePort, pod *corev1.Pod, port uint32) uint32 {
	if sp == nil {
		return port
	}
	if n := sp.TargetPort.IntValue(); n > 0 {
		return uint32(n)
	}
	if name := sp.TargetPort.String(); name != "" && name != "0" {
		for _, c := range pod.Spec.Containers {
			for _, cp := range c.Ports {
				if cp.Name == name {
					return uint32(cp.ContainerPort)
				}
			}
		}
	}
	return port
}
