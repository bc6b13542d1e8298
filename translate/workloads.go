package translate

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/nodemesh/nodemesh/config"
)

// endpointsFor returns the backends of one service port, sorted by address
// and port: ServiceEntry endpoints, else the service's EndpointSlices, else
// the running pods its selector picks.
func (m *mesh) endpointsFor(s *service, sp servicePort) []endpoint {
	key := s.endpointKey(sp.Port)
	if eps, ok := m.endpoints[key]; ok {
		return eps
	}
	var eps []endpoint
	switch {
	case s.ServiceEntry:
		eps = staticEndpoints(s, sp)
	default:
		if ess := m.src.EndpointSlicesFor(s.Namespace, s.Name); len(ess) > 0 {
			eps = m.sliceEndpoints(ess, sp)
		} else if len(s.Selector) > 0 {
			eps = podEndpoints(m.src.PodsMatching(s.Namespace, s.Selector), sp)
		}
	}
	slices.SortFunc(eps, func(a, b endpoint) int {
		return cmp.Or(strings.Compare(a.Address, b.Address), cmp.Compare(a.Port, b.Port))
	})
	eps = slices.CompactFunc(eps, func(a, b endpoint) bool { return a.Address == b.Address && a.Port == b.Port })
	m.endpoints[key] = eps
	return eps
}

func staticEndpoints(s *service, sp servicePort) []endpoint {
	var out []endpoint
	for _, e := range s.Static {
		port := sp.Port
		if sp.TargetPort != 0 {
			port = sp.TargetPort
		}
		if p, ok := e.Ports[sp.Name]; ok && p > 0 && p <= 65535 {
			port = p
		}
		out = append(out, endpoint{Address: e.Address, Port: port, Labels: e.Labels})
	}
	return out
}

// sliceEndpoints reads ready endpoints of the slice port named like sp.
// Labels come from the pod the endpoint refers to, for subsets.
func (m *mesh) sliceEndpoints(objs []*config.Object, sp servicePort) []endpoint {
	var out []endpoint
	for _, o := range objs {
		es, ok := o.Spec.(*discoveryv1.EndpointSlice)
		if !ok || es == nil {
			m.diags.Errorf(o, "spec", "unexpected spec type %T", o.Spec)
			continue
		}
		if es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		port, found := uint32(0), false
		for _, p := range es.Ports {
			if deref(p.Name) == sp.Name && p.Port != nil && *p.Port > 0 && *p.Port <= 65535 {
				port, found = uint32(*p.Port), true
				break
			}
		}
		if !found {
			continue
		}
		for _, e := range es.Endpoints {
			if (e.Conditions.Ready != nil && !*e.Conditions.Ready) || (e.Conditions.Terminating != nil && *e.Conditions.Terminating) {
				continue
			}
			labels := m.podLabels(o.Namespace, e.TargetRef)
			for _, a := range e.Addresses {
				if _, err := netip.ParseAddr(a); err != nil {
					continue
				}
				out = append(out, endpoint{Address: a, Port: port, Labels: labels})
			}
		}
	}
	return out
}

func (m *mesh) podLabels(ns string, ref *corev1.ObjectReference) map[string]string {
	if ref == nil || ref.Kind != "Pod" {
		return nil
	}
	if ref.Namespace != "" {
		ns = ref.Namespace
	}
	o, ok := m.src.Get(config.Key{Kind: config.KindPod, Namespace: ns, Name: ref.Name})
	if !ok {
		return nil
	}
	return o.Labels
}

// podEndpoints turns running pods into endpoints, resolving a named target
// port from the pod's container ports (pods without that port are skipped,
// as the Kubernetes endpoints controller does).
func podEndpoints(pods []*config.Object, sp servicePort) []endpoint {
	var out []endpoint
	for _, o := range pods {
		pod, ok := o.Spec.(*corev1.Pod)
		if !ok || pod == nil || !podReady(pod) {
			continue
		}
		port := sp.Port
		switch {
		case sp.TargetName != "":
			port = namedPort(pod, sp.TargetName)
		case sp.TargetPort != 0:
			port = sp.TargetPort
		}
		if port == 0 {
			continue
		}
		out = append(out, endpoint{Address: pod.Status.PodIP, Port: port, Labels: o.Labels})
	}
	return out
}

// podReady: running, with an IP, not being deleted, and not marked unready.
func podReady(pod *corev1.Pod) bool {
	if pod.Status.Phase != corev1.PodRunning || pod.DeletionTimestamp != nil {
		return false
	}
	if _, err := netip.ParseAddr(pod.Status.PodIP); err != nil {
		return false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionFalse {
			return false
		}
	}
	return true
}

func namedPort(pod *corev1.Pod, name string) uint32 {
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == name && p.ContainerPort > 0 && p.ContainerPort <= 65535 {
				return uint32(p.ContainerPort)
			}
		}
	}
	return 0
}

// labelsMatch reports whether labels contain every key/value of selector.
func labelsMatch(selector, labels map[string]string) bool {
	for k, v := range selector {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}
