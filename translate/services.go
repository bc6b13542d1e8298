package translate

import (
	"net/netip"
	"slices"
	"strings"

	networking "istio.io/api/networking/v1alpha3"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nodemesh/nodemesh/config"
)

// kubeService models a Kubernetes Service; nil when it has nothing to serve.
func kubeService(o *config.Object, d *config.Diagnostics) *service {
	ks, ok := o.Spec.(*corev1.Service)
	if !ok || ks == nil {
		d.Errorf(o, "spec", "unexpected spec type %T", o.Spec)
		return nil
	}
	if ks.Spec.Type == corev1.ServiceTypeExternalName {
		d.Infof(o, "spec.type", "ExternalName services are not supported; skipped")
		return nil
	}
	s := &service{
		obj:       o,
		Hostname:  o.Name + "." + o.Namespace + ".svc." + DomainSuffix,
		Name:      o.Name,
		Namespace: o.Namespace,
		Selector:  ks.Spec.Selector,
		ExportTo:  parseExportTo(splitList(o.Annotations[exportToAnnotation]), o.Namespace),
	}
	ips := ks.Spec.ClusterIPs
	if len(ips) == 0 && ks.Spec.ClusterIP != "" {
		ips = []string{ks.Spec.ClusterIP}
	}
	for _, ip := range ips {
		if ip == "" || ip == corev1.ClusterIPNone {
			continue
		}
		if _, err := netip.ParseAddr(ip); err != nil {
			d.Errorf(o, "spec.clusterIPs", "bad cluster IP %q; ignored", ip)
			continue
		}
		s.VIPs = append(s.VIPs, ip)
	}
	slices.Sort(s.VIPs)
	for i, p := range ks.Spec.Ports {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			continue // UDP and SCTP stay in the kernel data plane
		}
		if p.Port <= 0 || p.Port > 65535 {
			d.Errorf(o, fieldf("spec.ports[%d].port", i), "port %d out of range; skipped", p.Port)
			continue
		}
		sp := servicePort{Name: p.Name, Port: uint32(p.Port), Protocol: portProtocol(p.Name, deref(p.AppProtocol))}
		switch {
		case p.TargetPort.Type == intstr.String && p.TargetPort.StrVal != "":
			sp.TargetName = p.TargetPort.StrVal
		case p.TargetPort.Type == intstr.Int && p.TargetPort.IntVal > 0 && p.TargetPort.IntVal <= 65535:
			sp.TargetPort = uint32(p.TargetPort.IntVal)
		}
		if _, dup := s.port(sp.Port); dup {
			d.Errorf(o, fieldf("spec.ports[%d].port", i), "duplicate port %d; skipped", p.Port)
			continue
		}
		s.Ports = append(s.Ports, sp)
	}
	return s
}

// serviceEntryServices models each host of a ServiceEntry as a service.
func serviceEntryServices(o *config.Object, d *config.Diagnostics) []*service {
	se, ok := o.Spec.(*networking.ServiceEntry)
	if !ok || se == nil {
		d.Errorf(o, "spec", "unexpected spec type %T", o.Spec)
		return nil
	}
	dns := false
	switch se.GetResolution() {
	case networking.ServiceEntry_STATIC:
	case networking.ServiceEntry_DNS, networking.ServiceEntry_DNS_ROUND_ROBIN:
		dns = true
	default:
		d.Warnf(o, "spec.resolution", "resolution %s is not supported yet; skipped", se.GetResolution())
		return nil
	}
	if se.GetWorkloadSelector() != nil {
		d.Warnf(o, "spec.workloadSelector", "ServiceEntry workload selectors are not supported yet; skipped")
		return nil
	}
	var vips []string
	for i, a := range se.GetAddresses() {
		if _, err := netip.ParsePrefix(a); err != nil {
			if _, err := netip.ParseAddr(a); err != nil {
				d.Errorf(o, fieldf("spec.addresses[%d]", i), "%q is neither an IP nor a CIDR; ignored", a)
				continue
			}
		}
		vips = append(vips, a)
	}
	slices.Sort(vips)
	var ports []servicePort
	for i, p := range se.GetPorts() {
		if p.GetNumber() == 0 || p.GetNumber() > 65535 {
			d.Errorf(o, fieldf("spec.ports[%d].number", i), "port %d out of range; skipped", p.GetNumber())
			continue
		}
		ports = append(ports, servicePort{Name: p.GetName(), Port: p.GetNumber(), TargetPort: p.GetTargetPort(),
			Protocol: portProtocol(strings.ToLower(p.GetProtocol()), "")})
	}
	var static []staticEndpoint
	for i, e := range se.GetEndpoints() {
		if _, err := netip.ParseAddr(e.GetAddress()); err != nil && !(dns && isDNSName(e.GetAddress())) {
			d.Errorf(o, fieldf("spec.endpoints[%d].address", i), "%q is not an IP address (or a DNS name with DNS resolution); skipped", e.GetAddress())
			continue
		}
		static = append(static, staticEndpoint{Address: e.GetAddress(), Ports: e.GetPorts(), Labels: e.GetLabels()})
	}
	exp := parseExportTo(se.GetExportTo(), o.Namespace)
	var out []*service
	for i, h := range se.GetHosts() {
		if h == "" || strings.HasPrefix(h, "*") {
			d.Warnf(o, fieldf("spec.hosts[%d]", i), "wildcard host %q is not supported yet; skipped", h)
			continue
		}
		svc := &service{obj: o, Hostname: resolveHost(h, o.Namespace), Namespace: o.Namespace,
			VIPs: vips, Ports: ports, ExportTo: exp, Static: static, ServiceEntry: true, DNS: dns}
		if dns && len(static) == 0 {
			if !isDNSName(svc.Hostname) {
				d.Errorf(o, fieldf("spec.hosts[%d]", i), "%q is not a DNS name to resolve; skipped", h)
				continue
			}
			svc.Static = []staticEndpoint{{Address: svc.Hostname}}
		}
		out = append(out, svc)
	}
	return out
}

// portProtocol derives the protocol of a port from its appProtocol or,
// following Istio's port naming, from its name ("http-web", "grpc", ...).
func portProtocol(name, appProtocol string) protocol {
	p := strings.ToLower(appProtocol)
	if p == "" {
		p, _, _ = strings.Cut(strings.ToLower(name), "-")
	}
	switch p {
	case "http", "http-web":
		return protoHTTP
	case "http2", "grpc", "grpc-web", "h2c", "kubernetes.io/h2c":
		return protoHTTP2
	default:
		return protoTCP
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func splitList(s string) []string {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// isDNSName reports whether s looks like a host name Envoy can resolve.
func isDNSName(s string) bool {
	if s == "" || len(s) > 253 || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}
