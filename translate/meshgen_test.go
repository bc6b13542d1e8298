package translate

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/internal/meshgen"
)

// The synthetic benchmark mesh translates into consistent configs, and its
// VirtualServices route 80/20 from every namespace of every node.
func TestGeneratedMesh(t *testing.T) {
	p := meshgen.Params{Services: 60, EndpointsPerService: 4, Namespaces: 5, Nodes: 4, VirtualServiceRatio: 0.25}
	objs, err := meshgen.Generate(p)
	if err != nil {
		t.Fatal(err)
	}
	st := config.NewStore()
	if err := st.Replace("meshgen", objs); err != nil {
		t.Fatal(err)
	}
	m := Prepare(st.Snapshot())
	for n := range p.Nodes {
		nc := m.Translate(Proxy{Node: meshgen.NodeName(n)})
		if err := m.Check(nc); err != nil {
			t.Fatalf("node %d: %v", n, err)
		}
		if len(nc.Diagnostics) != 0 {
			t.Errorf("node %d: unexpected diagnostics %v", n, nc.Diagnostics)
		}
		for ns := range p.Namespaces {
			for i := range p.Services {
				svc := meshgen.ServiceName(i)
				host := svc + "." + meshgen.NamespaceName(i%p.Namespaces) + ".svc.cluster.local"
				got, err := simulate(nc, request{Namespace: meshgen.NamespaceName(ns), DestIP: vipOf(t, nc, host), Port: 8080, Host: host})
				if err != nil {
					t.Fatalf("node %d ns %d -> %s: %v", n, ns, host, err)
				}
				want := map[string]uint32{clusterName(host, 8080, ""): 1}
				if p.HasVirtualService(i) {
					want = map[string]uint32{clusterName(host, 8080, "v1"): 80, clusterName(host, 8080, "v2"): 20}
				}
				if diff := cmp.Diff(want, got.Clusters); diff != "" {
					t.Fatalf("node %d ns %d -> %s (-want +got):\n%s", n, ns, host, diff)
				}
			}
		}
	}
	if eps := endpointsOf(m.Translate(Proxy{Node: meshgen.NodeName(0)}), clusterName("svc-00003.ns-0003.svc.cluster.local", 8080, "v2")); len(eps) != 2 {
		t.Errorf("subset v2 of svc-00003 (the first with a VirtualService) has endpoints %v, want the 2 pods labelled v2", eps)
	}
}

// vipOf finds the address a client would connect to for host: the domain
// of its virtual host that is an IP.
func vipOf(t *testing.T, nc *NodeConfig, host string) string {
	t.Helper()
	for _, rc := range nc.Routes {
		for _, vh := range rc.GetVirtualHosts() {
			if vh.GetName() != host+":8080" {
				continue
			}
			for _, d := range vh.GetDomains() {
				if cidrRange(d) != nil {
					return d
				}
			}
		}
	}
	t.Fatalf("no VIP for %s", host)
	return ""
}
