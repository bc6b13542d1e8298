package secure

import (
	"bytes"
	"sync"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"

	"github.com/nodemesh/nodemesh/translate"
)

// Prepared.Apply gives the same configs as Apply, node by node, even when
// nodes are applied concurrently, and nodes with pods of the same service
// account share that account's cluster messages.
func TestPreparedSharesAccountResources(t *testing.T) {
	for name, yaml := range goldenCases {
		t.Run(name, func(t *testing.T) {
			snap := decode(t, yaml)
			mesh := translate.Prepare(snap)
			p := Prepare(snap, Options{TrustDomain: td})
			proxies := []translate.Proxy{{Node: "node-a"}, {Node: "node-b"}, {Kind: translate.ProxylessGRPC, Namespace: "default"}}
			shared := make([]*translate.NodeConfig, len(proxies))
			var wg sync.WaitGroup
			for i, proxy := range proxies {
				wg.Go(func() {
					nc := mesh.Translate(proxy)
					p.Apply(nc)
					shared[i] = nc
				})
			}
			wg.Wait()
			for i, proxy := range proxies {
				alone, diags := secured(t, snap, proxy)
				if err := translate.Check(shared[i]); err != nil {
					t.Fatalf("%+v: %v", proxy, err)
				}
				if !bytes.Equal(goldenJSON(t, shared[i], diags), goldenJSON(t, alone, diags)) {
					t.Fatalf("%+v: Prepared.Apply and Apply differ", proxy)
				}
			}
			find := func(nc *translate.NodeConfig, n string) *clusterv3.Cluster {
				for _, c := range nc.Clusters {
					if c.Name == n {
						return c
					}
				}
				return nil
			}
			// Both nodes' reviews pods reach details with the same accounts
			// (node-b has the only other account reaching it): the clusters
			// are shared when the accounts are, and their sockets always.
			n := "outbound|9080||details.default.svc.cluster.local"
			a, b := find(shared[0], n), find(shared[1], n)
			if a == nil || b == nil {
				t.Fatalf("%s missing (%p, %p)", n, a, b)
			}
			if name == "disable" {
				if a.GetTransportSocketMatcher() != nil || b.GetTransportSocketMatcher() != nil {
					t.Fatalf("DISABLE: %s selects transport sockets", n)
				}
				return
			}
			sock := func(c *clusterv3.Cluster, sock string) any {
				for _, tm := range c.GetTransportSocketMatches() {
					if tm.GetName() == sock {
						return tm.GetTransportSocket()
					}
				}
				return nil
			}
			sa, sb := sock(a, "default/bookinfo-reviews"), sock(b, "default/bookinfo-reviews")
			if sa == nil || sa != sb {
				t.Fatalf("node-a and node-b do not share reviews' socket of %s (%p, %p)", n, sa, sb)
			}
		})
	}
}
