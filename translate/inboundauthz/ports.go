package inboundauthz

import (
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nodemesh/nodemesh/config"
)

// httpPorts returns the target ports of pod that speak HTTP or gRPC: ports
// of Services of its namespace whose selector matches it, named or
// appProtocol'ed as translate reads them. A target port that some Service
// declares as plain TCP stays TCP (the network RBAC filters fail closed for
// HTTP-only rules; an HTTP connection manager would break a TCP client).
func httpPorts(snap *config.Snapshot, o *config.Object, pod *corev1.Pod) []uint32 {
	http, tcp := map[uint32]bool{}, map[uint32]bool{}
	for _, so := range snap.ListInNamespace(config.KindService, o.Namespace) {
		svc, ok := so.Spec.(*corev1.Service)
		if !ok || svc == nil || len(svc.Spec.Selector) == 0 || !labelsMatch(svc.Spec.Selector, o.Labels) {
			continue
		}
		for _, sp := range svc.Spec.Ports {
			if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
				continue
			}
			port := targetPort(pod, sp)
			if port == 0 {
				continue
			}
			if isHTTP(sp.Name, deref(sp.AppProtocol)) {
				http[port] = true
			} else {
				tcp[port] = true
			}
		}
	}
	var out []uint32
	for p := range http {
		if !tcp[p] {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// targetPort resolves a service port's targetPort on pod (0: unknown).
func targetPort(pod *corev1.Pod, sp corev1.ServicePort) uint32 {
	switch {
	case sp.TargetPort.Type == intstr.String && sp.TargetPort.StrVal != "":
		for _, c := range pod.Spec.Containers {
			for _, p := range c.Ports {
				if p.Name == sp.TargetPort.StrVal && p.ContainerPort > 0 && p.ContainerPort <= 65535 {
					return uint32(p.ContainerPort)
				}
			}
		}
		return 0
	case sp.TargetPort.Type == intstr.Int && sp.TargetPort.IntVal > 0 && sp.TargetPort.IntVal <= 65535:
		return uint32(sp.TargetPort.IntVal)
	case sp.Port > 0 && sp.Port <= 65535:
		return uint32(sp.Port)
	}
	return 0
}

// isHTTP follows translate's reading of a port: appProtocol, else Istio's
// port name prefix (http, http2, grpc, grpc-web, h2c).
func isHTTP(name, appProtocol string) bool {
	p := strings.ToLower(appProtocol)
	if p == "" {
		p, _, _ = strings.Cut(strings.ToLower(name), "-")
	}
	switch p {
	case "http", "http-web", "http2", "grpc", "grpc-web", "h2c", "kubernetes.io/h2c":
		return true
	}
	return false
}

func labelsMatch(selector, labels map[string]string) bool {
	for k, v := range selector {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
