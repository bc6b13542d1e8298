package dataplane

import (
	"cmp"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/config"
)

// AccelerateAnnotation on a Namespace, set to "true", opts the namespace
// into same-node socket acceleration. It is the operator's statement that
// no workload of the namespace reads from a TCP socket with splice(2) (see
// nodeagent.Acceleration).
const AccelerateAnnotation = "nodemesh.io/accelerate"

// Translate builds the resources of one node.
//
//   - Listeners: one per namespace with a (not finished) pod on the node,
//     with translate.AllocateNamespacePorts' ports.
//   - Services: every TCP/UDP port of every Service with a cluster IP that
//     one of those namespaces may reach (Istio exportTo and namespace-wide
//     Sidecar egress hosts, visibility.go).
//   - Policies: those the kernel enforces for an identity with a workload
//     on the node, their selected identities narrowed to those.
//   - Workloads: the node's pods with an IP, and the workloads whose
//     identity is a source of one of those policies; nothing else, so a
//     node does not carry the whole cluster.
func (m *Mesh) Translate(node string) *Resources {
	res := &Resources{Diagnostics: m.diags.Sorted()}
	localNS := map[string]bool{}
	localIDs := map[uint32]bool{}
	want := map[*workload]bool{}
	for _, o := range m.src.PodsOnNode(node) {
		if pod, ok := o.Spec.(*corev1.Pod); ok && !finished(pod) {
			localNS[o.Namespace] = true
		}
		if w := m.byKey(o.Key); w != nil {
			want[w] = true
			localIDs[w.identity] = true
		}
	}
	namespaces := slices.Sorted(maps.Keys(localNS))
	for _, ns := range namespaces {
		if l := m.listener(ns); l != nil {
			res.Listeners = append(res.Listeners, l)
		}
	}
	visible := map[*service]bool{}
	for _, s := range m.services {
		visible[s] = slices.ContainsFunc(namespaces, func(ns string) bool { return m.reachable(ns, s) })
	}
	for _, sp := range m.servicePorts {
		if visible[sp.svc] {
			res.Services = append(res.Services, sp.msg)
		}
	}
	for _, p := range m.policies {
		pm := p.policyFor(localIDs)
		if pm == nil {
			continue
		}
		res.Policies = append(res.Policies, pm)
		for _, r := range pm.GetRules() {
			for _, src := range r.GetSources() {
				for _, w := range m.byIdentity[src] {
					want[w] = true
				}
			}
		}
	}
	for _, w := range m.outWorkloads {
		if want[w] {
			res.Workloads = append(res.Workloads, w.msg)
		}
	}
	return res
}

func (m *Mesh) listener(ns string) *dataplanev1.NamespaceListener {
	ports, ok := m.ports[ns]
	if !ok {
		return nil // more namespaces than listener slots; translate has none either
	}
	l := &dataplanev1.NamespaceListener{Namespace: ns, NamespaceId: m.nsIDs[ns], OutboundPort: ports.Outbound, InboundPort: ports.Inbound}
	if o, ok := m.src.Get(config.Key{Kind: config.KindNamespace, Name: ns}); ok {
		l.Accelerate = strings.EqualFold(o.Annotations[AccelerateAnnotation], "true")
	}
	return l
}

// byKey finds the workload of a pod.
func (m *Mesh) byKey(k config.Key) *workload {
	i, ok := slices.BinarySearchFunc(m.workloads, k, func(w *workload, k config.Key) int {
		return cmp.Or(cmp.Compare(w.ns, k.Namespace), cmp.Compare(w.name, k.Name))
	})
	if !ok {
		return nil
	}
	return m.workloads[i]
}
