package secure

import (
	"net/netip"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	corev1 "k8s.io/api/core/v1"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
)

// A workload's traffic is never sent under another workload's identity:
// for every outbound filter chain, every cluster it can reach (directly or
// through its route configuration) that presents a certificate presents
// the SVID of the service account of EVERY source address the chain
// matches, and no chain that matches any source presents one.
func TestNoTrafficUnderAnotherIdentity(t *testing.T) {
	extra := `apiVersion: v1
kind: Pod
metadata: {name: reviews-odd, namespace: default, labels: {app: reviews, version: v1}}
spec: {nodeName: node-a, serviceAccountName: odd-one, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.1.0.99}
`
	for name, yaml := range goldenCases {
		snap := decode(t, yaml+"---\n"+extra)
		// Pod IP -> its identity, computed here from the pods themselves.
		owner := map[netip.Addr]string{}
		for _, o := range snap.List(config.KindPod) {
			pod := o.Spec.(*corev1.Pod)
			if pod.Status.PodIP == "" {
				continue
			}
			id, err := WorkloadID(td, o.Namespace, pod.Spec.ServiceAccountName)
			if err != nil {
				t.Fatal(err)
			}
			owner[netip.MustParseAddr(pod.Status.PodIP)] = id.String()
		}
		for _, node := range []string{"node-a", "node-b"} {
			t.Run(name+"/"+node, func(t *testing.T) {
				nc, _ := secured(t, snap, translate.Proxy{Node: node})
				clusters := map[string]*clusterv3.Cluster{}
				for _, c := range nc.Clusters {
					clusters[c.Name] = c
				}
				routes := map[string]*routev3.RouteConfiguration{}
				for _, r := range nc.Routes {
					routes[r.Name] = r
				}
				checked := 0
				for _, l := range nc.Listeners {
					if l.GetTrafficDirection().String() != "OUTBOUND" {
						continue
					}
					chains := append([]*listenerv3.FilterChain{l.GetDefaultFilterChain()}, l.GetFilterChains()...)
					for _, fc := range chains {
						var sources []string
						for _, r := range fc.GetFilterChainMatch().GetSourcePrefixRanges() {
							p := netip.PrefixFrom(netip.MustParseAddr(r.GetAddressPrefix()), int(r.GetPrefixLen().GetValue()))
							if !p.IsSingleIP() {
								t.Errorf("chain %s matches source range %s, wider than one pod", fc.GetName(), p)
							}
							sources = append(sources, owner[p.Addr()])
						}
						for _, cl := range reachable(t, fc, routes) {
							c := clusters[cl]
							if c == nil {
								t.Fatalf("chain %s reaches missing cluster %s", fc.GetName(), cl)
							}
							secret := presented(t, c)
							if secret == "" {
								continue
							}
							checked++
							if len(sources) == 0 {
								t.Errorf("chain %s matches any source but cluster %s presents %s", fc.GetName(), cl, secret)
							}
							for i, s := range sources {
								if s != secret {
									t.Errorf("chain %s: source %s (%s) would be sent as %s through %s", fc.GetName(),
										fc.GetFilterChainMatch().GetSourcePrefixRanges()[i].GetAddressPrefix(), s, secret, cl)
								}
							}
						}
					}
				}
				if name != "disable" && checked == 0 {
					t.Fatal("no chain reaches a cluster presenting a certificate; the test checked nothing")
				}
			})
		}
	}
}

// reachable lists the clusters a filter chain can send to.
func reachable(t *testing.T, fc *listenerv3.FilterChain, routes map[string]*routev3.RouteConfiguration) []string {
	var out []string
	for _, f := range fc.GetFilters() {
		tc := f.GetTypedConfig()
		switch {
		case tc.MessageIs(&tcpv3.TcpProxy{}):
			tp := &tcpv3.TcpProxy{}
			if err := tc.UnmarshalTo(tp); err != nil {
				t.Fatal(err)
			}
			if tp.GetCluster() != "" {
				out = append(out, tp.GetCluster())
			}
			for _, w := range tp.GetWeightedClusters().GetClusters() {
				out = append(out, w.GetName())
			}
		case tc.MessageIs(&hcmv3.HttpConnectionManager{}):
			hcm := &hcmv3.HttpConnectionManager{}
			if err := tc.UnmarshalTo(hcm); err != nil {
				t.Fatal(err)
			}
			rc := routes[hcm.GetRds().GetRouteConfigName()]
			if rc == nil {
				t.Fatalf("chain %s: route configuration %q missing", fc.GetName(), hcm.GetRds().GetRouteConfigName())
			}
			for _, vh := range rc.GetVirtualHosts() {
				for _, r := range vh.GetRoutes() {
					if c := r.GetRoute().GetCluster(); c != "" {
						out = append(out, c)
					}
					for _, w := range r.GetRoute().GetWeightedClusters().GetClusters() {
						out = append(out, w.GetName())
					}
				}
			}
		}
	}
	return out
}

// presented is the SDS secret a cluster presents as its client certificate.
func presented(t *testing.T, c *clusterv3.Cluster) string {
	tc := c.GetTransportSocket().GetTypedConfig()
	if tc == nil {
		return ""
	}
	u := &tlsv3.UpstreamTlsContext{}
	if err := tc.UnmarshalTo(u); err != nil {
		t.Fatalf("cluster %s: %v", c.GetName(), err)
	}
	certs := u.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs()
	if len(certs) != 1 {
		t.Fatalf("cluster %s presents %d certificates", c.GetName(), len(certs))
	}
	return certs[0].GetName()
}
