package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/nodeagent"
	meshagent "github.com/nodemesh/nodemesh/nodeagent/agent"
)

// TestMeshADS runs the whole system with the real node agent
// (nodeagent/agent, in this process, one per node): Kubernetes and Istio
// YAML -> meshd (xds.StartControlPlane) -> one ADS stream per node -> the
// kernel maps -> traffic between pods. It scales the echo deployment by
// editing the YAML, enforces and lifts an L4 AuthorizationPolicy, kills
// meshd and an agent under a load of new connections, and compares the
// maps after the resync with what meshd serves.
func TestMeshADS(t *testing.T) {
	c := NewCluster(t, Config{})
	RequireBPFFS(t)
	m := &meshADS{t: t, c: c, echoes: startEchoes(t, c), dir: t.TempDir(), vip: netip.MustParseAddr("10.78.0.91"), webVIP: netip.MustParseAddr("10.78.0.92"),
		agents: map[string]*runningAgent{}}
	cands := m.echoCandidates()
	echo := cands[:2] // n1p1 (node 1) and n2p0 (node 2)
	m.write("mesh.yaml", m.meshYAML(echo))
	m.startMeshd()
	t.Cleanup(m.stopMeshd)
	c.OnCleanup(func() {
		for _, n := range c.Nodes {
			m.stopAgent(n)
			m.uninstall(n)
		}
	})
	start := time.Now()
	for _, n := range c.Nodes {
		m.startAgent(n)
	}
	m.waitReady(20 * time.Second)
	t.Logf("both agents synced in %v", time.Since(start))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	addr := netip.AddrPortFrom(m.vip, 80).String()

	t.Run("balanced-across-nodes", func(t *testing.T) {
		const n = 1000
		res, err := m.client().Connect(ctx, ClientConfig{Addr: addr, Count: n})
		if err != nil {
			t.Fatal(err)
		}
		if res.OK != n || res.Peers[addr] != n {
			t.Fatalf("%d of %d connections to the VIP worked: %+v", res.OK, n, res)
		}
		checkWeights(t, res.Backends, map[string]uint32{echo[0].Name: 1, echo[1].Name: 1}, n)
		t.Logf("backends: %v", res.Backends)
	})

	t.Run("l7-service-to-node-proxy", func(t *testing.T) {
		// Service web is routed by a VirtualService: the kernel sends its
		// connects to the client namespace's listener on the node proxy. An
		// echo server on the node stands in for Envoy and reports the
		// original destination it reads with SO_ORIGINAL_DST.
		n := c.Nodes[0]
		st, err := m.agents[n.Name].a.Dump()
		if err != nil {
			t.Fatal(err)
		}
		var port uint16
		for _, r := range st.Redirects {
			if r.Namespace == "shop" && r.ProxyIP == n.IP {
				port = r.ProxyPort
			}
		}
		l7 := false
		for _, s := range st.Services {
			l7 = l7 || s.VIP == m.webVIP && s.L7ProxyPort != 0
		}
		if port == 0 || !l7 {
			t.Fatalf("no redirect of namespace shop to %s, or web is not L7: %+v %+v", n.IP, st.Redirects, st.Services)
		}
		if _, err := n.StartEcho("nodeproxy", EchoConfig{TCPPorts: []int{int(port)}, OrigDst: true}); err != nil {
			t.Fatal(err)
		}
		web := netip.AddrPortFrom(m.webVIP, 80).String()
		const k = 50
		res, err := m.client().Connect(ctx, ClientConfig{Addr: web, Count: k})
		if err != nil {
			t.Fatal(err)
		}
		if want := "nodeproxy " + web; res.OK != k || res.Backends[want] != k {
			t.Fatalf("connects to %s: want all %d at the node proxy port %d with original destination %s: %+v", web, k, port, web, res)
		}
		t.Logf("%d connects to the L7 service %s reached the node proxy port %s:%d with SO_ORIGINAL_DST %s", k, web, n.IP, port, web)
	})

	t.Run("scale", func(t *testing.T) {
		// A connection to the pod that the scale-down removes.
		var long *longConn
		for i := 0; i < 20 && long == nil; i++ {
			lc := m.startLongConn(t, m.client(), addr)
			if lc.backend == cands[0].Name {
				long = lc
			} else {
				lc.stop(t)
			}
		}
		if long == nil {
			t.Fatalf("no connection reached %s in 20 tries", cands[0].Name)
		}
		// Scale up: a third pod (node 2).
		echo = cands
		at := time.Now()
		m.write("mesh.yaml", m.meshYAML(echo))
		up := m.waitBackends(echo, at, 5*time.Second)
		m.checkBackendsServed(ctx, t, echo)
		// Scale down: remove the node 1 pod.
		echo = cands[1:]
		at = time.Now()
		m.write("mesh.yaml", m.meshYAML(echo))
		down := m.waitBackends(echo, at, 5*time.Second)
		m.checkBackendsServed(ctx, t, echo)
		t.Logf("YAML edit -> backends changed in both kernels: add a pod %v, remove a pod %v", up.Round(time.Millisecond), down.Round(time.Millisecond))
		fmt.Printf("meshads: backend change latency (YAML write -> both kernels): add %v, remove %v\n", up.Round(time.Millisecond), down.Round(time.Millisecond))
		if up > time.Second || down > time.Second {
			t.Errorf("backend change took more than 1s: add %v, remove %v", up, down)
		}
		exchanges := long.stop(t)
		t.Logf("a connection to %s opened before scaling kept working through both changes and its pod's removal (%d exchanges)", long.backend, exchanges)
	})

	t.Run("l4-policy", func(t *testing.T) {
		// Echo pods on both nodes, so that both kernels hold the policy of
		// the echo identity.
		echo = cands
		m.write("mesh.yaml", m.meshYAML(echo))
		m.waitBackends(echo, time.Now(), 5*time.Second)
		at := time.Now()
		m.write("policy.yaml", meshADSPolicy)
		took := m.waitPolicies(true, at, 5*time.Second)
		t.Logf("YAML write -> DENY rule in both kernels in %v", took.Round(time.Millisecond))
		for _, e := range m.echoes {
			_ = e.Reset()
		}
		for _, p := range m.intruders() {
			res, err := p.Connect(ctx, ClientConfig{Addr: addr, Count: 12, Timeout: 500 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			if res.OK != 0 {
				t.Errorf("intruder %s (node %s) got through %d of 12 times", p.Name, p.Node.Name, res.OK)
			}
			t.Logf("intruder %s on %s: %v", p.Name, p.Node.Name, res.Errors)
		}
		m.checkNoAccepts(t, m.intruders())
		res, err := m.client().Connect(ctx, ClientConfig{Addr: addr, Count: 50})
		if err != nil || res.OK != 50 {
			t.Fatalf("the shop client is denied too: %+v %v", res, err)
		}
		m.checkDenied(t)
		for _, n := range c.Nodes {
			m.compareDump(t, n)
		}
		at = time.Now()
		m.remove("policy.yaml")
		took = m.waitPolicies(false, at, 5*time.Second)
		for _, p := range m.intruders() {
			m.waitConnect(ctx, t, p, addr, true, at)
		}
		t.Logf("deleting the policy: rule gone from both kernels in %v, traffic from both intruders restored in %v",
			took.Round(time.Millisecond), time.Since(at).Round(time.Millisecond))
	})

	t.Run("meshd-restart-under-load", func(t *testing.T) {
		load := m.startLoad(ctx, addr)
		time.Sleep(700 * time.Millisecond)
		m.stopMeshd()
		// Scale while meshd is away: the restarted meshd must bring both
		// kernels to the new set, without duplicates or leftovers.
		echo = cands[1:]
		m.write("mesh.yaml", m.meshYAML(echo))
		time.Sleep(time.Second)
		m.startMeshd()
		at := time.Now()
		resync := m.waitBackends(echo, at, 10*time.Second)
		res := load.wait(t)
		t.Logf("meshd stopped and restarted under load: %d/%d new connections OK, resync %v", res.OK, res.Attempts, resync.Round(time.Millisecond))
		fmt.Printf("meshads: meshd kill/restart under load: %d connections, %d failures; agents resynced %v after restart\n", res.Attempts, res.Failed, resync.Round(time.Millisecond))
		if res.Failed != 0 || res.OK != res.Attempts {
			t.Errorf("connections failed while meshd restarted: %+v", res)
		}
		m.waitReady(5 * time.Second)
		for _, n := range c.Nodes {
			m.compareDump(t, n)
			if st := m.agents[n.Name].a.Status(); st.ADS.Reconnects == 0 {
				t.Errorf("%s: the agent never reconnected: %+v", n.Name, st.ADS)
			}
		}
	})

	t.Run("agent-restart-under-load", func(t *testing.T) {
		load := m.startLoad(ctx, addr)
		time.Sleep(700 * time.Millisecond)
		n := c.Nodes[0]
		m.stopAgent(n)
		time.Sleep(700 * time.Millisecond)
		at := time.Now()
		m.startAgent(n)
		m.waitReady(10 * time.Second)
		t.Logf("restarted agent on %s synced in %v", n.Name, time.Since(at).Round(time.Millisecond))
		res := load.wait(t)
		fmt.Printf("meshads: agent kill/restart under load: %d connections, %d failures\n", res.Attempts, res.Failed)
		if res.Failed != 0 || res.OK != res.Attempts {
			t.Errorf("connections failed while the agent restarted: %+v", res)
		}
		m.compareDump(t, n)
	})

	t.Run("nack-keeps-last-state", func(t *testing.T) {
		// Translation already drops what no node could hold (clashing
		// VIPs, IPs), so the rejected resource here is one this agent
		// cannot hold: restarted without the node IP, it cannot point
		// namespace listeners (L7 redirects) anywhere and NACKs them. The
		// maps pinned by the agent before keep forwarding.
		n := c.Nodes[0]
		before, err := m.agents[n.Name].a.Dump()
		if err != nil {
			t.Fatal(err)
		}
		m.stopAgent(n)
		ra := m.startAgentWith(n, func(cfg *meshagent.Config) { cfg.NodeIP = netip.Addr{} })
		detail := m.waitNACK(t, n.Name, "NamespaceListener", 10*time.Second)
		t.Logf("meshd shows %s's NACK: %s", n.Name, detail)
		if !strings.Contains(detail, "no node proxy address") {
			t.Errorf("NACK detail %q does not say what is wrong", detail)
		}
		if ts := ra.a.Status().ADS.Types[dataplanev1.NamespaceListenerType]; ts.LastNack == "" || ts.Nacks == 0 {
			t.Errorf("the agent's status shows no NACK: %+v", ts)
		}
		if ra.a.Ready() == nil {
			t.Errorf("the agent is ready although it applied nothing")
		}
		after, err := ra.a.Dump()
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(before, after, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
			t.Errorf("the rejected update changed the maps (-before +after):\n%s", diff)
		}
		m.checkBackendsServed(ctx, t, echo) // the last applied state keeps forwarding
		m.stopAgent(n)
		m.startAgent(n)
		m.waitReady(10 * time.Second)
		m.compareDump(t, n)
	})

	t.Run("sync-status", func(t *testing.T) { m.checkSyncStatus(ctx, t) })
}

// waitPolicies waits until both kernels hold a policy rule (present) or
// none (!present).
func (m *meshADS) waitPolicies(present bool, since time.Time, timeout time.Duration) time.Duration {
	m.t.Helper()
	for _, n := range m.c.Nodes {
		for {
			st, err := m.agents[n.Name].a.Dump()
			if err != nil {
				m.t.Fatal(err)
			}
			if (len(st.Policies) > 0) == present {
				break
			}
			if time.Since(since) > timeout {
				m.t.Fatalf("%s: policies %v after %v, want present=%v", n.Name, st.Policies, timeout, present)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return time.Since(since)
}

// checkNoAccepts checks that no echo server accepted a connection from the
// given pods since its last reset.
func (m *meshADS) checkNoAccepts(t *testing.T, from []*Pod) {
	t.Helper()
	for name, e := range m.echoes {
		st, err := e.Stats()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range from {
			if k := st.Peers[p.IP.String()]; k != 0 {
				t.Errorf("%s accepted %d connections from %s", name, k, p.Name)
			}
		}
	}
}

// checkBackendsServed checks that traffic from the client reaches exactly
// the echo pods.
func (m *meshADS) checkBackendsServed(ctx context.Context, t *testing.T, echo []*Pod) {
	t.Helper()
	const n = 1000
	res, err := m.client().Connect(ctx, ClientConfig{Addr: netip.AddrPortFrom(m.vip, 80).String(), Count: n})
	if err != nil {
		t.Fatal(err)
	}
	w := map[string]uint32{}
	for _, p := range echo {
		w[p.Name] = 1
	}
	if res.OK != n {
		t.Fatalf("%d of %d connections worked: %+v", res.OK, n, res)
	}
	checkWeights(t, res.Backends, w, n)
}

// waitConnect waits until one connection from p to addr succeeds (ok) or
// fails (!ok).
func (m *meshADS) waitConnect(ctx context.Context, t *testing.T, p *Pod, addr string, ok bool, since time.Time) {
	t.Helper()
	for {
		res, err := p.Connect(ctx, ClientConfig{Addr: addr, Count: 1, Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if (res.OK == 1) == ok {
			return
		}
		if time.Since(since) > 10*time.Second {
			t.Fatalf("%s -> %s: still ok=%v after 10s: %+v", p.Name, addr, !ok, res)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkDenied checks that the policy decisions were the kernel's: denials
// counted on every node (at connect when the destination pod is local to
// the client's node, else at the destination node's ingress: a node only
// carries the policies of its own identities).
func (m *meshADS) checkDenied(t *testing.T) {
	t.Helper()
	for _, p := range m.intruders() {
		st := m.agents[p.Node.Name].a.Status()
		if st.Counters == nil || st.Counters.Connect.Denied+st.Counters.Ingress.Denied == 0 {
			t.Errorf("%s: no denial in the kernel counters: %+v (%s)", p.Node.Name, st.Counters, st.CountersError)
			continue
		}
		t.Logf("%s kernel counters: connect %+v, ingress %+v", p.Node.Name, st.Counters.Connect, st.Counters.Ingress)
	}
}

// compareDump compares node n's maps with what meshd serves it: services,
// policies and redirects exactly; workloads by IP (identity, namespace);
// and the cgroups of local pods as a set of cgroup ids, since the kernel
// keys those by cgroup alone (Dump lists a cgroup it cannot pair with an
// IP as a workload without one).
func (m *meshADS) compareDump(t *testing.T, n *Node) {
	t.Helper()
	want := m.expectedState(n)
	var wantCgroups []uint64
	for _, w := range want.Workloads {
		if w.Cgroup != "" {
			id, err := nodeagent.CgroupID(w.Cgroup)
			if err != nil {
				t.Fatal(err)
			}
			wantCgroups = append(wantCgroups, id)
		}
	}
	got, err := m.agents[n.Name].a.Dump()
	if err != nil {
		t.Fatal(err)
	}
	var gotCgroups []uint64
	byIP := got.Workloads[:0:0]
	for _, w := range got.Workloads {
		if w.CgroupID != 0 {
			gotCgroups = append(gotCgroups, w.CgroupID)
		}
		if w.IP.IsValid() {
			byIP = append(byIP, w)
		}
	}
	got.Workloads = byIP
	slices.Sort(wantCgroups)
	slices.Sort(gotCgroups)
	opts := cmp.Options{cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmpopts.EquateEmpty(),
		cmpopts.IgnoreFields(nodeagent.Workload{}, "Cgroup", "CgroupID", "Local")}
	if diff := cmp.Diff(want, got, opts); diff != "" {
		t.Errorf("%s: map dump differs from meshd's resources (-want +got):\n%s", n.Name, diff)
	}
	if len(wantCgroups) == 0 {
		t.Errorf("%s: no local pod's cgroup was found: the pod cgroup layout did not match", n.Name)
	}
	if !slices.Equal(wantCgroups, gotCgroups) {
		t.Errorf("%s: cgroup ids in the maps %v, want %v (the local pods')", n.Name, gotCgroups, wantCgroups)
	}
	t.Logf("%s: map dump equals meshd's resources: %d services, %d workloads by IP, %d pods by cgroup, %d policy rules, %d redirects",
		n.Name, len(got.Services), len(got.Workloads), len(gotCgroups), len(got.Policies), len(got.Redirects))
}

// longConn is a TCP connection held open by bash in a pod, exchanging a
// line every 50 ms until stopped.
type longConn struct {
	backend string // the greeting: which pod answered
	stop    func(t *testing.T) int
}

func (m *meshADS) startLongConn(t *testing.T, p *Pod, addr string) *longConn {
	t.Helper()
	m.longConns++
	stopFile := filepath.Join(m.c.RunDir, fmt.Sprintf("meshads-long-stop-%d", m.longConns))
	host, port, _ := strings.Cut(addr, ":")
	script := fmt.Sprintf(`exec 3<>/dev/tcp/%s/%s || exit 2
read -r -t 5 g <&3 || { echo "FAIL greeting"; exit 3; }
echo "greeting $g"
i=0
while [ ! -e %s ]; do
  i=$((i+1))
  echo "ping $i" >&3 || { echo "FAIL write $i"; exit 4; }
  read -r -t 3 line <&3 || { echo "FAIL read $i"; exit 5; }
  [ "$line" = "ping $i" ] || { echo "FAIL mismatch $i $line"; exit 6; }
  sleep 0.05
done
echo "OK $i"
`, host, port, stopFile)
	proc, err := p.Start("bash", "-c", script)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(proc.Output(), "greeting") {
		if time.Now().After(deadline) {
			t.Fatalf("long connection never got its greeting: %q", proc.Output())
		}
		time.Sleep(10 * time.Millisecond)
	}
	greeting, _, _ := strings.Cut(proc.Output(), "\n")
	return &longConn{backend: strings.TrimPrefix(greeting, "greeting "), stop: func(t *testing.T) int {
		t.Helper()
		if err := os.WriteFile(stopFile, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		select {
		case <-proc.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("long connection did not stop: %q", proc.Output())
		}
		out := proc.Output()
		var n int
		if i := strings.Index(out, "OK "); i < 0 || proc.Wait() != nil {
			t.Fatalf("the long connection broke: %q (%v)", out, proc.Wait())
		} else if _, err := fmt.Sscanf(out[i:], "OK %d", &n); err != nil || n == 0 {
			t.Fatalf("the long connection exchanged nothing: %q", out)
		}
		return n
	}}
}

// load is a burst of new connections from the client pod spread over 4 s.
type load struct {
	done chan struct{}
	res  ClientResult
	err  error
}

func (m *meshADS) startLoad(ctx context.Context, addr string) *load {
	l := &load{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		l.res, l.err = m.client().Connect(ctx, ClientConfig{Addr: addr, Count: 800, Concurrency: 8, Duration: 4 * time.Second, Timeout: 3 * time.Second})
	}()
	return l
}

func (l *load) wait(t *testing.T) ClientResult {
	t.Helper()
	<-l.done
	if l.err != nil {
		t.Fatal(l.err)
	}
	if l.res.Attempts == 0 {
		t.Fatalf("the load made no connection: %+v", l.res)
	}
	return l.res
}

// waitNACK waits until meshd's sync status shows a NACK of typ from node
// and returns its detail.
func (m *meshADS) waitNACK(t *testing.T, node, typ string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		rows, table := m.syncz(t)
		for _, r := range rows {
			for _, ts := range r.Types {
				if r.ID == node && ts.Type == typ && ts.State == "NACK" && ts.NACK != nil {
					t.Logf("meshd sync status:\n%s", table)
					return ts.NACK.Detail
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no NACK of %s from %s after %v:\n%s", typ, node, timeout, table)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkSyncStatus checks that meshd's /debug/syncz shows every node's agent
// (dataplane types ACKed at the versions meshd holds) and, once an
// Envoy-like ADS client connects through the agent's xDS socket, the
// node's Envoy types too.
func (m *meshADS) checkSyncStatus(ctx context.Context, t *testing.T) {
	t.Helper()
	n := m.c.Nodes[1]
	stopEnvoy := m.fakeEnvoy(ctx, t, n)
	defer stopEnvoy()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rows, table := m.syncz(t)
		problems := syncProblems(rows, m.c.Nodes, n.Name)
		if len(problems) == 0 {
			t.Logf("meshd sync status:\n%s", table)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sync status: %v\n%s", problems, table)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (m *meshADS) syncz(t *testing.T) ([]syncRow, string) {
	t.Helper()
	get := func(q string) []byte {
		resp, err := http.Get("http://" + m.cp.DebugAddr() + "/debug/syncz" + q)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		buf := make([]byte, 32<<10)
		for {
			k, err := resp.Body.Read(buf)
			b.Write(buf[:k])
			if err != nil {
				break
			}
		}
		return []byte(b.String())
	}
	var rows []syncRow
	if err := json.Unmarshal(get("?format=json"), &rows); err != nil {
		t.Fatal(err)
	}
	return rows, string(get(""))
}

type syncRow struct {
	ID      string `json:"id"`
	Streams int    `json:"streams"`
	Types   []struct {
		Type    string `json:"type"`
		State   string `json:"state"`
		Desired string `json:"desired_version"`
		Acked   string `json:"acked_version"`
		NACK    *struct {
			Detail string `json:"Detail"`
		} `json:"nack"`
	} `json:"types"`
}

// syncProblems lists what is missing: every node's four dataplane types
// SYNCED at the desired version, and CDS SYNCED on envoyNode.
func syncProblems(rows []syncRow, nodes []*Node, envoyNode string) []string {
	var out []string
	for _, n := range nodes {
		var row *syncRow
		for i := range rows {
			if rows[i].ID == n.Name {
				row = &rows[i]
			}
		}
		if row == nil {
			out = append(out, n.Name+": not listed")
			continue
		}
		want := []string{"NamespaceListener", "Workload", "Service", "Policy"}
		if n.Name == envoyNode {
			want = append(want, "CDS")
			if row.Streams < 2 {
				out = append(out, fmt.Sprintf("%s: %d streams, want the agent's and the Envoy's", n.Name, row.Streams))
			}
		}
		for _, typ := range want {
			ok := false
			for _, ts := range row.Types {
				if ts.Type == typ && ts.State == "SYNCED" && ts.Acked != "" {
					ok = true
				}
			}
			if !ok {
				out = append(out, fmt.Sprintf("%s: %s not SYNCED", n.Name, typ))
			}
		}
	}
	return out
}
