package xds

import (
	"fmt"
	"testing"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// TestPushToManyNodes: 50 nodes connect and get their endpoints; one change
// reaches all of them. It reports the time for both.
func TestPushToManyNodes(t *testing.T) {
	const nodes = 50
	src := newFakeSource("127.0.0.1")
	srv := startServer(t, src)
	clients := make([]*sotwClient, nodes)
	start := time.Now()
	for i := range clients {
		clients[i] = newSotwClient(t, srv.addr, envoyNode(fmt.Sprintf("node-%02d", i)))
		clients[i].send(resourcev3.EndpointType, "", "", nil, fakeCluster)
	}
	last := make([]string, nodes)
	for i, c := range clients {
		r := c.recv(wait)
		c.send(resourcev3.EndpointType, r.GetVersionInfo(), r.GetNonce(), nil, fakeCluster)
		last[i] = r.GetVersionInfo()
	}
	cold := time.Since(start)

	start = time.Now()
	src.set(false, "127.0.0.2")
	for i, c := range clients {
		r := c.recv(wait)
		if r.GetVersionInfo() == last[i] {
			t.Fatalf("node %d: same version pushed", i)
		}
		c.send(resourcev3.EndpointType, r.GetVersionInfo(), r.GetNonce(), nil, fakeCluster)
	}
	eventually(t, "all ACKed", func() bool {
		for _, n := range srv.Status() {
			for _, ts := range n.Types {
				if ts.Type == "EDS" && ts.State != "SYNCED" {
					return false
				}
			}
		}
		return true
	})
	t.Logf("%d nodes: cold start %v, change ACKed by all in %v", nodes, cold, time.Since(start))
}
