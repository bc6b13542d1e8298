package dataplane

import (
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
)

// TestAgreesWithEnvoyTranslation checks every golden case against
// translate's output for the same node's shared Envoy: the kernel gets a
// Service for exactly the TCP ports of Kubernetes services with a VIP that
// the Envoy has a cluster for, and each NamespaceListener's ports are the
// ports of that namespace's Envoy listeners.
func TestAgreesWithEnvoyTranslation(t *testing.T) {
	dirs, _ := filepath.Glob(filepath.Join("testdata", "golden", "*"))
	if len(dirs) == 0 {
		t.Fatal("no golden cases")
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			snap := load(t, append(base, filepath.Join(dir, "input.yaml"))...)
			for _, node := range goldenNodes {
				r := Translate(snap, node)
				nc := translate.Translate(snap, translate.Proxy{Node: node})
				// Hosts the kernel balances: Kubernetes services with a VIP.
				kube := map[string]bool{}
				mine := map[string]bool{}
				for _, s := range r.Services {
					host := s.GetName() + "." + s.GetNamespace() + ".svc." + translate.DomainSuffix
					kube[host] = true
					if s.GetProtocol() == dataplanev1.Protocol_TCP {
						mine["outbound|"+strconv.Itoa(int(s.GetPort()))+"||"+host] = true
					}
				}
				envoy := map[string]bool{}
				for _, c := range nc.Clusters {
					parts := strings.Split(c.GetName(), "|")
					if len(parts) == 4 && parts[2] == "" && strings.HasSuffix(parts[3], ".svc."+translate.DomainSuffix) && hasVIP(t, snap, parts[3]) {
						envoy[c.GetName()] = true
					}
				}
				if diff := cmp.Diff(slices.Sorted(maps.Keys(envoy)), slices.Sorted(maps.Keys(mine))); diff != "" {
					t.Errorf("%s: kernel services vs Envoy clusters (-envoy +kernel):\n%s", node, diff)
				}
				ports := map[string]uint32{}
				for _, l := range nc.Listeners {
					ports[l.GetName()] = l.GetAddress().GetSocketAddress().GetPortValue()
				}
				for _, l := range r.Listeners {
					if ports["outbound_"+l.GetNamespace()] != l.GetOutboundPort() || ports["inbound_"+l.GetNamespace()] != l.GetInboundPort() {
						t.Errorf("%s: namespace %s: kernel redirects to %d/%d, Envoy listens on %d/%d", node, l.GetNamespace(),
							l.GetOutboundPort(), l.GetInboundPort(), ports["outbound_"+l.GetNamespace()], ports["inbound_"+l.GetNamespace()])
					}
					delete(ports, "outbound_"+l.GetNamespace())
				}
				for name := range ports {
					if strings.HasPrefix(name, "outbound_") {
						t.Errorf("%s: Envoy listener %s has no NamespaceListener", node, name)
					}
				}
			}
		})
	}
}

// hasVIP reports whether the Kubernetes service of an FQDN has a cluster IP.
func hasVIP(t *testing.T, snap interface {
	Get(config.Key) (*config.Object, bool)
}, host string) bool {
	t.Helper()
	name, rest, _ := strings.Cut(host, ".")
	ns, _, _ := strings.Cut(rest, ".")
	o, ok := snap.Get(config.Key{Kind: config.KindService, Namespace: ns, Name: name})
	if !ok {
		return false
	}
	svc := o.Spec.(*corev1.Service)
	return svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != corev1.ClusterIPNone || len(svc.Spec.ClusterIPs) > 0 && svc.Spec.ClusterIPs[0] != corev1.ClusterIPNone
}
