package dataplane

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
)

// exportToAnnotation is Istio's exportTo for Kubernetes Services.
const exportToAnnotation = "networking.istio.io/exportTo"

// service is a Kubernetes Service with at least one VIP.
type service struct {
	obj      *config.Object
	ns, name string
	host     string // FQDN
	vips     []string
	export   []string // exportTo entries; empty: everywhere
	selector map[string]string
	ports    []*servicePort
}

// servicePort is one (port, protocol) of a service and its resource.
type servicePort struct {
	name       string
	port       uint32
	proto      dataplanev1.Protocol
	http       bool
	targetPort uint32 // 0: same as port
	targetName string // container port name to resolve per pod
	backends   []*dataplanev1.Backend
	workloads  []*workload // the workloads behind backends (for L7 marking)
	l7         bool
	msg        *dataplanev1.Service // built by markL7
}

// readServices models every Kubernetes Service that has a cluster IP.
// ExternalName services (nothing to balance) and headless services (no
// VIP: clients connect to pod IPs, which need no service entry) are left
// out; translate reports ExternalName services.
func (m *Mesh) readServices() {
	served := map[vipPort]*service{}
	for _, o := range m.src.List(config.KindService) {
		ks, ok := o.Spec.(*corev1.Service)
		if !ok {
			m.diags.Errorf(o, "spec", "unexpected spec type %T", o.Spec)
			continue
		}
		if ks.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		s := &service{obj: o, ns: o.Namespace, name: o.Name, selector: ks.Spec.Selector,
			host:   o.Name + "." + o.Namespace + ".svc." + translate.DomainSuffix,
			export: splitList(o.Annotations[exportToAnnotation])}
		s.vips = clusterIPs(o, ks, &m.diags)
		if len(s.vips) == 0 {
			continue
		}
		m.readPorts(s, ks)
		m.dropShared(s, served)
		m.services = append(m.services, s)
	}
}

type vipPort struct {
	vip   string
	port  uint32
	proto dataplanev1.Protocol
}

// dropShared removes the ports of s whose VIP, port and protocol an earlier
// service (by namespace and name) already serves: the kernel balances each
// to one service, and the agent would refuse the whole set.
func (m *Mesh) dropShared(s *service, served map[vipPort]*service) {
	s.ports = slices.DeleteFunc(s.ports, func(sp *servicePort) bool {
		for _, vip := range s.vips {
			if other := served[vipPort{vip, sp.port, sp.proto}]; other != nil {
				m.diags.Errorf(s.obj, "spec.clusterIPs", "%s port %d/%s is already served by service %s/%s; port skipped",
					vip, sp.port, protocolName(sp.proto), other.ns, other.name)
				return true
			}
		}
		for _, vip := range s.vips {
			served[vipPort{vip, sp.port, sp.proto}] = s
		}
		return false
	})
}

func clusterIPs(o *config.Object, ks *corev1.Service, d *config.Diagnostics) []string {
	ips := ks.Spec.ClusterIPs
	if len(ips) == 0 && ks.Spec.ClusterIP != "" {
		ips = []string{ks.Spec.ClusterIP}
	}
	var out []string
	for _, s := range ips {
		if s == "" || s == corev1.ClusterIPNone {
			continue
		}
		ip, err := netip.ParseAddr(s)
		if err != nil {
			d.Errorf(o, "spec.clusterIPs", "bad cluster IP %q; ignored", s)
			continue
		}
		out = append(out, ip.Unmap().String())
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// readPorts reads the TCP and UDP ports of a service and their backends.
func (m *Mesh) readPorts(s *service, ks *corev1.Service) {
	for i, p := range ks.Spec.Ports {
		sp := &servicePort{name: p.Name, port: uint32(p.Port)}
		switch p.Protocol {
		case "", corev1.ProtocolTCP:
			sp.proto = dataplanev1.Protocol_TCP
		case corev1.ProtocolUDP:
			sp.proto = dataplanev1.Protocol_UDP
		default:
			m.diags.Infof(s.obj, fieldf("spec.ports[%d].protocol", i), "protocol %s is not balanced by the node data plane; skipped", p.Protocol)
			continue
		}
		if p.Port <= 0 || p.Port > 65535 {
			m.diags.Errorf(s.obj, fieldf("spec.ports[%d].port", i), "port %d out of range; skipped", p.Port)
			continue
		}
		if slices.ContainsFunc(s.ports, func(o *servicePort) bool { return o.port == sp.port && o.proto == sp.proto }) {
			m.diags.Errorf(s.obj, fieldf("spec.ports[%d].port", i), "duplicate port %d/%s; skipped", p.Port, p.Protocol)
			continue
		}
		sp.http = isHTTP(p.Name, deref(p.AppProtocol))
		switch {
		case p.TargetPort.Type == intstr.String && p.TargetPort.StrVal != "":
			sp.targetName = p.TargetPort.StrVal
		case p.TargetPort.Type == intstr.Int && p.TargetPort.IntVal > 0 && p.TargetPort.IntVal <= 65535:
			sp.targetPort = uint32(p.TargetPort.IntVal)
		}
		m.readBackends(s, sp)
		s.ports = append(s.ports, sp)
	}
}

// readBackends fills the backends of a service port from its EndpointSlices
// (ready, not terminating endpoints of the slice port with the same name
// and protocol) or, when it has none, from the ready pods its selector
// picks, resolving a named target port from each pod's container ports.
// Backends are sorted by IP and port, weight 1 each.
func (m *Mesh) readBackends(s *service, sp *servicePort) {
	type be struct {
		ip   netip.Addr
		port uint32
		node string
	}
	var list []be
	if ess := m.src.EndpointSlicesFor(s.ns, s.name); len(ess) > 0 {
		for _, o := range ess {
			es, ok := o.Spec.(*discoveryv1.EndpointSlice)
			if !ok {
				m.diags.Errorf(o, "spec", "unexpected spec type %T", o.Spec)
				continue
			}
			port := slicePort(es, sp)
			if port == 0 {
				continue
			}
			for _, e := range es.Endpoints {
				if (e.Conditions.Ready != nil && !*e.Conditions.Ready) || (e.Conditions.Terminating != nil && *e.Conditions.Terminating) {
					continue
				}
				for _, a := range e.Addresses {
					ip, err := netip.ParseAddr(a)
					if err != nil {
						continue
					}
					ip = ip.Unmap()
					node := deref(e.NodeName)
					if w := m.byIP[ip]; w != nil && node == "" {
						node = w.node
					}
					list = append(list, be{ip, port, node})
				}
			}
		}
	} else if len(s.selector) > 0 {
		for _, o := range m.src.PodsMatching(s.ns, s.selector) {
			pod, ok := o.Spec.(*corev1.Pod)
			if !ok || !podReady(pod) {
				continue
			}
			port := sp.port
			switch {
			case sp.targetName != "":
				port = namedPort(pod, sp.targetName, sp.proto)
			case sp.targetPort != 0:
				port = sp.targetPort
			}
			if port == 0 {
				continue
			}
			for _, ip := range podIPs(o, pod, &config.Diagnostics{}) {
				list = append(list, be{ip, port, pod.Spec.NodeName})
			}
		}
	}
	slices.SortFunc(list, func(a, b be) int { return cmp.Or(a.ip.Compare(b.ip), cmp.Compare(a.port, b.port)) })
	list = slices.CompactFunc(list, func(a, b be) bool { return a.ip == b.ip && a.port == b.port })
	for _, b := range list {
		sp.backends = append(sp.backends, &dataplanev1.Backend{Ip: b.ip.String(), Port: b.port, Weight: 1, Node: b.node})
		if w := m.byIP[b.ip]; w != nil && (len(sp.workloads) == 0 || sp.workloads[len(sp.workloads)-1] != w) {
			sp.workloads = append(sp.workloads, w)
		}
	}
}

// slicePort is the port of the slice named like sp with its protocol, or 0.
func slicePort(es *discoveryv1.EndpointSlice, sp *servicePort) uint32 {
	if es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6 {
		return 0
	}
	for _, p := range es.Ports {
		proto := dataplanev1.Protocol_TCP
		if p.Protocol != nil && *p.Protocol == corev1.ProtocolUDP {
			proto = dataplanev1.Protocol_UDP
		} else if p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP {
			continue
		}
		if deref(p.Name) == sp.name && proto == sp.proto && p.Port != nil && *p.Port > 0 && *p.Port <= 65535 {
			return uint32(*p.Port)
		}
	}
	return 0
}

// podReady: running, not being deleted, and not marked unready.
func podReady(pod *corev1.Pod) bool {
	if pod.Status.Phase != corev1.PodRunning || pod.DeletionTimestamp != nil {
		return false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionFalse {
			return false
		}
	}
	return true
}

// namedPort resolves a container port name (of the same protocol), or 0.
func namedPort(pod *corev1.Pod, name string, proto dataplanev1.Protocol) uint32 {
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			pp := dataplanev1.Protocol_TCP
			if p.Protocol == corev1.ProtocolUDP {
				pp = dataplanev1.Protocol_UDP
			}
			if p.Name == name && pp == proto && p.ContainerPort > 0 && p.ContainerPort <= 65535 {
				return uint32(p.ContainerPort)
			}
		}
	}
	return 0
}

// visibleTo reports whether a client namespace may reach the service
// (Istio exportTo: empty or "*" everywhere, "." its own namespace, "~"
// nowhere else, other entries namespace names). The own namespace always
// sees its services.
func (s *service) visibleTo(ns string) bool {
	if ns == s.ns || len(s.export) == 0 {
		return true
	}
	for _, e := range s.export {
		if e = strings.TrimSpace(e); e == "*" || e == ns {
			return true
		}
	}
	return false
}

// isHTTP follows translate's (and Istio's) protocol selection: the
// appProtocol, else the port name's prefix before "-".
func isHTTP(name, appProtocol string) bool {
	p := strings.ToLower(appProtocol)
	if p == "" {
		p, _, _ = strings.Cut(strings.ToLower(name), "-")
	}
	switch p {
	case "http", "http2", "grpc", "grpc-web", "h2c", "kubernetes.io/h2c":
		return true
	}
	return false
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func splitList(s string) []string {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	return strings.Split(s, ",")
}
