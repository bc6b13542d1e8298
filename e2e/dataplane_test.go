package e2e

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"

	"github.com/nodemesh/nodemesh/bpf"
	"github.com/nodemesh/nodemesh/nodeagent"
)

var (
	vipLB       = netip.MustParseAddr("10.78.0.10")
	vipRedirect = netip.MustParseAddr("10.78.0.20")
	vipPolicy   = netip.MustParseAddr("10.78.0.30")
	vipRestart  = netip.MustParseAddr("10.78.0.40")
)

const (
	echoTCP = 8080
	echoUDP = 8081
)

// startEchoes starts an echo server on every pod (TCP 8080, UDP 8081).
func startEchoes(t *testing.T, c *Cluster) map[string]*Echo {
	t.Helper()
	echoes := map[string]*Echo{}
	for _, p := range c.Pods() {
		e, err := p.StartEcho(EchoConfig{TCPPorts: []int{echoTCP}, UDPPorts: []int{echoUDP}})
		if err != nil {
			t.Fatal(err)
		}
		echoes[p.Name] = e
	}
	return echoes
}

func backend(p *Pod, port uint16, weight uint32) nodeagent.Backend {
	return nodeagent.Backend{IP: p.IP, Port: port, Weight: weight}
}

// TestDataplaneLoadBalancing: a VIP with weighted backends on both nodes;
// 2,000 connections per case
// connections from pods on either node are spread by the weights, TCP and
// UDP (connected and unconnected), and the client sees the VIP as its peer.
func TestDataplaneLoadBalancing(t *testing.T) {
	c := NewCluster(t, Config{})
	agents := startAgents(t, c)
	echoes := startEchoes(t, c)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	weights := map[string]uint32{n1.Pods[1].Name: 1, n2.Pods[0].Name: 1, n2.Pods[1].Name: 2}
	var tcpBackends, udpBackends []nodeagent.Backend
	for _, p := range []*Pod{n1.Pods[1], n2.Pods[0], n2.Pods[1]} {
		tcpBackends = append(tcpBackends, backend(p, echoTCP, weights[p.Name]))
		udpBackends = append(udpBackends, backend(p, echoUDP, weights[p.Name]))
	}
	applyMesh(t, c, agents, meshSpec{Services: []nodeagent.Service{
		{VIP: vipLB, Port: 80, Proto: nodeagent.TCP, Backends: tcpBackends},
		{VIP: vipLB, Port: 53, Proto: nodeagent.UDP, Backends: udpBackends},
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	for _, tc := range []struct {
		name   string
		client *Pod
		cfg    ClientConfig
	}{
		{"tcp/from-node1", n1.Pods[0], ClientConfig{Addr: vipLB.String() + ":80", Proto: "tcp", Count: 2000}},
		{"tcp/from-node2", n2.Pods[2], ClientConfig{Addr: vipLB.String() + ":80", Proto: "tcp", Count: 2000}},
		{"udp-connected/from-node1", n1.Pods[0], ClientConfig{Addr: vipLB.String() + ":53", Proto: "udp", Count: 2000}},
		{"udp-unconnected/from-node2", n2.Pods[2], ClientConfig{Addr: vipLB.String() + ":53", Proto: "udp", Count: 2000, Unconnected: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, e := range echoes {
				if err := e.Reset(); err != nil {
					t.Fatal(err)
				}
			}
			res, err := tc.client.Connect(ctx, tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			n := tc.cfg.Count
			if res.OK != n {
				t.Fatalf("%d of %d failed: %v", res.Failed, n, res.Errors)
			}
			// The client's view: the VIP, never a backend address.
			if res.Peers[tc.cfg.Addr] != n {
				t.Errorf("peer addresses %v, want all %d to be %s", res.Peers, n, tc.cfg.Addr)
			}
			checkWeights(t, res.Backends, weights, n)
			// The servers' view: the real client address (no SNAT), and
			// exactly one accept or datagram per exchange.
			var total int64
			for name := range weights {
				st, err := echoes[name].Stats()
				if err != nil {
					t.Fatal(err)
				}
				got := st.TCPAccepts + st.UDPPackets
				if got != int64(res.Backends[name]) || st.Peers[tc.client.IP.String()] != got {
					t.Errorf("server %s saw %+v, client counted %d", name, st, res.Backends[name])
				}
				total += got
			}
			if total != int64(n) {
				t.Errorf("servers saw %d exchanges, want %d", total, n)
			}
		})
	}
}

// checkWeights asserts that each backend got its weight's share of n
// within 4.5 standard deviations of the binomial count (about 5
// percentage points at n=2000, and a false alarm about once in 150,000
// checks).
func checkWeights(t *testing.T, got map[string]int, weights map[string]uint32, n int) {
	t.Helper()
	var sum uint32
	for _, w := range weights {
		sum += w
	}
	for name, w := range weights {
		want := float64(w) / float64(sum)
		share := float64(got[name]) / float64(n)
		tol := 4.5 * math.Sqrt(want*(1-want)/float64(n))
		if math.Abs(share-want) > tol {
			t.Errorf("backend %s got %.1f%% (%d of %d), want %.1f%% +-%.1f", name, 100*share, got[name], n, 100*want, 100*tol)
		}
	}
	for name := range got {
		if _, ok := weights[name]; !ok {
			t.Errorf("answered by %s, which is not a backend", name)
		}
	}
	t.Logf("distribution over %d: %v (weights %v)", n, got, weights)
}

// TestDataplaneRedirect: an L7 service is redirected to the node proxy
// listener of the client's namespace; the stand-in proxy (in the node netns)
// reads SO_ORIGINAL_DST and gets the VIP:port; the client still sees the VIP.
// A namespace without a listener is load balanced as usual.
func TestDataplaneRedirect(t *testing.T) {
	c := NewCluster(t, Config{})
	agents := startAgents(t, c)
	echoes := startEchoes(t, c)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	const proxyPort = 15001
	spec := meshSpec{
		Services: []nodeagent.Service{{VIP: vipRedirect, Port: 80, Proto: nodeagent.TCP, L7ProxyPort: proxyPort,
			Backends: []nodeagent.Backend{backend(n2.Pods[0], echoTCP, 0)}}},
		Namespace: map[string]string{n1.Pods[0].Name: "shop", n2.Pods[2].Name: "shop", n1.Pods[1].Name: "plain"},
		Redirects: map[int][]nodeagent.Redirect{},
	}
	proxies := map[int]*Echo{}
	for _, n := range c.Nodes {
		spec.Redirects[n.Index] = []nodeagent.Redirect{{Namespace: "shop", ProxyIP: n.IP, ProxyPort: proxyPort}}
		e, err := n.StartEcho("proxy-"+n.Name, EchoConfig{TCPPorts: []int{proxyPort}, OrigDst: true})
		if err != nil {
			t.Fatal(err)
		}
		proxies[n.Index] = e
	}
	applyMesh(t, c, agents, spec)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	vip := vipRedirect.String() + ":80"

	for _, client := range []*Pod{n1.Pods[0], n2.Pods[2]} {
		t.Run("shop/"+client.Name, func(t *testing.T) {
			const n = 50
			res, err := client.Connect(ctx, ClientConfig{Addr: vip, Count: n})
			if err != nil {
				t.Fatal(err)
			}
			// The greeting carries the proxy's name and SO_ORIGINAL_DST.
			want := fmt.Sprintf("proxy-%s %s", client.Node.Name, vip)
			if res.OK != n || res.Backends[want] != n || res.Peers[vip] != n {
				t.Fatalf("got %+v, want %d greetings %q with peer %s", res, n, want, vip)
			}
			st, err := proxies[client.Node.Index].Stats()
			if err != nil {
				t.Fatal(err)
			}
			if st.OrigDsts[vip] != n || st.Peers[client.IP.String()] != n {
				t.Errorf("proxy saw %+v", st)
			}
		})
	}
	t.Run("plain-namespace-is-balanced", func(t *testing.T) {
		res, err := n1.Pods[1].Connect(ctx, ClientConfig{Addr: vip, Count: 20})
		if err != nil {
			t.Fatal(err)
		}
		if res.OK != 20 || res.Backends[n2.Pods[0].Name] != 20 || res.Peers[vip] != 20 {
			t.Fatalf("got %+v, want 20 answers from %s", res, n2.Pods[0].Name)
		}
		// Exactly these 20: none of the redirected connections above
		// reached the backend.
		if st, _ := echoes[n2.Pods[0].Name].Stats(); st.TCPAccepts != 20 {
			t.Errorf("backend saw %+v", st)
		}
	})
}

// TestDataplanePolicy: identity-based L4 policy. The servers (identity
// "api") allow only "web" on TCP 8080. Allowed flows pass; denied ones fail
// at connect (socket hook on the client's node) or are dropped at the
// server's node (ingress hook) before accept: the servers' accept counts
// prove nothing got through. Same-node and cross-node, direct and via a VIP.
func TestDataplanePolicy(t *testing.T) {
	c := NewCluster(t, Config{})
	agents := startAgents(t, c)
	echoes := startEchoes(t, c)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	const web, api, other = 2001, 2002, 2003
	web1, other1, api1 := n1.Pods[0], n1.Pods[1], n1.Pods[2]
	api2, web2, other2 := n2.Pods[0], n2.Pods[1], n2.Pods[2]
	spec := meshSpec{
		Identity: map[string]uint32{web1.Name: web, web2.Name: web, api1.Name: api, api2.Name: api, other1.Name: other, other2.Name: other},
		Policies: []nodeagent.PolicyRule{{DstIdentity: api, SrcIdentity: web, Port: echoTCP, Proto: nodeagent.TCP, Verdict: nodeagent.Allow}},
		Services: []nodeagent.Service{{VIP: vipPolicy, Port: 80, Proto: nodeagent.TCP,
			Backends: []nodeagent.Backend{backend(api2, echoTCP, 0)}}},
	}
	applyMesh(t, c, agents, spec)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	type flow struct {
		name     string
		client   *Pod
		server   *Pod
		addr     string
		proto    string
		unmeshed bool
		allowed  bool
	}
	at := func(p *Pod, port int) string { return fmt.Sprintf("%s:%d", p.IP, port) }
	for _, f := range []flow{
		{"allow/same-node", web1, api1, at(api1, echoTCP), "tcp", false, true},
		{"allow/cross-node", web1, api2, at(api2, echoTCP), "tcp", false, true},
		{"allow/cross-node-reverse", web2, api1, at(api1, echoTCP), "tcp", false, true},
		{"allow/vip", web1, api2, vipPolicy.String() + ":80", "tcp", false, true},
		{"deny/same-node", other1, api1, at(api1, echoTCP), "tcp", false, false},
		{"deny/cross-node", other1, api2, at(api2, echoTCP), "tcp", false, false},
		{"deny/vip", other2, api2, vipPolicy.String() + ":80", "tcp", false, false},
		{"deny/udp-port-not-allowed", web1, api2, at(api2, echoUDP), "udp", false, false},
		// No socket hook sees this client: only the server node's
		// ingress program can stop it.
		{"deny/ingress-only", other2, api1, at(api1, echoTCP), "tcp", true, false},
		{"allow/ingress-only", web2, api1, at(api1, echoTCP), "tcp", true, true},
		// Identities without rules stay open.
		{"allow/no-policy-on-destination", other1, web2, at(web2, echoTCP), "tcp", false, true},
	} {
		t.Run(f.name, func(t *testing.T) {
			if err := echoes[f.server.Name].Reset(); err != nil {
				t.Fatal(err)
			}
			const n = 10
			// Denied flows time out (SYNs dropped) after 1s; allowed
			// ones get time to spare on a busy machine.
			cfg := ClientConfig{Addr: f.addr, Proto: f.proto, Count: n, Timeout: time.Second}
			if f.allowed {
				cfg.Timeout = 5 * time.Second
			}
			connect := f.client.Connect
			if f.unmeshed {
				connect = f.client.ConnectUnmeshed
			}
			res, err := connect(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			st, err := echoes[f.server.Name].Stats()
			if err != nil {
				t.Fatal(err)
			}
			seen := st.TCPAccepts + st.UDPPackets
			if f.allowed {
				if res.OK != n || res.Backends[f.server.Name] != n || seen != n {
					t.Fatalf("allowed flow: client %+v, server saw %d", res, seen)
				}
				return
			}
			if res.OK != 0 || seen != 0 {
				t.Fatalf("denied flow got through: client %+v, server saw %d", res, seen)
			}
			t.Logf("denied: %v", res.Errors)
		})
	}
}

// TestDataplaneUDPReplyToProtectedClient: a workload whose identity has
// Allow rules (so is default deny for new inbound flows) opens a UDP flow of
// its own; the replies must reach it, as they do for TCP and as Kubernetes
// NetworkPolicy (stateful) promises. The server must see every datagram and
// the client every reply.
func TestDataplaneUDPReplyToProtectedClient(t *testing.T) {
	c := NewCluster(t, Config{})
	agents := startAgents(t, c)
	echoes := startEchoes(t, c)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	const web, api = 2001, 2002
	client, server := n1.Pods[0], n2.Pods[0]
	applyMesh(t, c, agents, meshSpec{
		Identity: map[string]uint32{client.Name: api, n2.Pods[1].Name: web},
		Policies: []nodeagent.PolicyRule{{DstIdentity: api, SrcIdentity: web, Port: echoTCP, Proto: nodeagent.TCP, Verdict: nodeagent.Allow}},
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const n = 10
	addr := fmt.Sprintf("%s:%d", server.IP, echoUDP)
	for _, tc := range []struct {
		name string
		run  func(context.Context, ClientConfig) (ClientResult, error)
	}{{"connected", client.Connect}, {"unmeshed-client", client.ConnectUnmeshed}} {
		t.Run(tc.name, func(t *testing.T) {
			if err := echoes[server.Name].Reset(); err != nil {
				t.Fatal(err)
			}
			res, err := tc.run(ctx, ClientConfig{Addr: addr, Proto: "udp", Count: n, Timeout: 3 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			st, err := echoes[server.Name].Stats()
			if err != nil {
				t.Fatal(err)
			}
			if st.UDPPackets != n || res.OK != n {
				t.Fatalf("server got %d of %d datagrams, failed to send %v; client got %d replies (%v): "+
					"policy treats replies to the client's own flow as new inbound flows",
					st.UDPPackets, n, st.SendErrors, res.OK, res.Errors)
			}
		})
	}
}

// TestDataplaneRestart: while a client opens 2,000 connections to a VIP
// over about four seconds, each node agent is closed and a new one opened
// that adopts the pinned maps and swaps its programs into the existing
// links. Not one connection may fail.
func TestDataplaneRestart(t *testing.T) {
	c := NewCluster(t, Config{})
	agents := startAgents(t, c)
	echoes := startEchoes(t, c)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	spec := meshSpec{Services: []nodeagent.Service{{VIP: vipRestart, Port: 80, Proto: nodeagent.TCP,
		Backends: []nodeagent.Backend{backend(n1.Pods[2], echoTCP, 0), backend(n2.Pods[2], echoTCP, 0)}}}}
	applyMesh(t, c, agents, spec)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	const n = 2000
	type result struct {
		res ClientResult
		err error
	}
	done := map[string]chan result{}
	for _, client := range []*Pod{n1.Pods[0], n2.Pods[0]} {
		ch := make(chan result, 1)
		done[client.Name] = ch
		go func() {
			res, err := client.Connect(ctx, ClientConfig{Addr: vipRestart.String() + ":80", Count: n, Duration: 4 * time.Second, Concurrency: 16})
			ch <- result{res, err}
		}()
	}
	// Two restarts of each agent in the middle of the load. Each must swap
	// the program inside the same pinned link (a detach/attach would leave
	// a window without load balancing).
	for round := 0; round < 2; round++ {
		time.Sleep(time.Second)
		for _, a := range agents {
			before := connect4Link(t, c, a.node)
			a.restart(t)
			after := connect4Link(t, c, a.node)
			if after.ID != before.ID || after.Program == before.Program {
				t.Errorf("restart on %s: connect4 link %d prog %d -> link %d prog %d, want same link, new program",
					a.node.Name, before.ID, before.Program, after.ID, after.Program)
			}
			if _, err := a.dp.Apply(ctx, spec.nodeState(c, a.node)); err != nil {
				t.Fatalf("apply after restart on %s: %v", a.node.Name, err)
			}
		}
	}
	for name, ch := range done {
		r := <-ch
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.res.OK != n || r.res.Peers[vipRestart.String()+":80"] != n {
			t.Errorf("client %s: %d of %d failed (%v), peers %v", name, r.res.Failed, n, r.res.Errors, r.res.Peers)
		}
		t.Logf("client %s: %d connections in %v, by backend %v", name, r.res.OK, r.res.Elapsed, r.res.Backends)
	}
	var accepted int64
	for _, p := range []*Pod{n1.Pods[2], n2.Pods[2]} {
		st, err := echoes[p.Name].Stats()
		if err != nil {
			t.Fatal(err)
		}
		accepted += st.TCPAccepts
	}
	if accepted != 2*n {
		t.Errorf("backends accepted %d connections, want %d", accepted, 2*n)
	}
}

// connect4Link reads the pinned connect4 link of node n.
func connect4Link(t *testing.T, c *Cluster, n *Node) *link.Info {
	t.Helper()
	l, err := link.LoadPinnedLink(filepath.Join(c.PinDir(n), "links", bpf.MeshProgConnect4), nil)
	if err != nil {
		t.Fatalf("load pinned connect4 link of %s: %v", n.Name, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	return info
}
