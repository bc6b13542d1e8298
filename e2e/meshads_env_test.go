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

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/nodeagent"
	"github.com/nodemesh/nodemesh/nodeagent/ads"
	meshagent "github.com/nodemesh/nodemesh/nodeagent/agent"
	"github.com/nodemesh/nodemesh/xds"
)

// meshADS is TestMeshADS's world: a cluster, a config directory served by
// an in-process meshd, and one nodeagent/agent per node attached to the
// node's cgroup subtree.
//
// Mesh pods are named after the harness pods (n1p0, ...), so the agent's
// default cgroup layout (<node cgroup>/<pod>) finds their cgroups.
type meshADS struct {
	t       *testing.T
	c       *Cluster
	dir     string
	vip     netip.Addr // Service echo (L4)
	webVIP  netip.Addr // Service web (routed by a VirtualService: L7)
	xdsAddr string
	cp      *xds.ControlPlane
	agents  map[string]*runningAgent // by node name
	echoes  map[string]*Echo         // by pod name

	longConns int // long connections started, to name their stop files
}

type runningAgent struct {
	node   *Node
	a      *meshagent.Agent
	cancel context.CancelFunc
	done   chan error
}

// Roles of the harness pods in the mesh YAML.
func (m *meshADS) client() *Pod { return m.c.Nodes[0].Pods[0] }
func (m *meshADS) intruders() []*Pod {
	return []*Pod{m.c.Nodes[0].Pods[2], m.c.Nodes[1].Pods[2]}
}

// echoCandidates can be echo backends; which ones are is the scale.
func (m *meshADS) echoCandidates() []*Pod {
	return []*Pod{m.c.Nodes[0].Pods[1], m.c.Nodes[1].Pods[0], m.c.Nodes[1].Pods[1]}
}

// meshYAML is the mesh with the given echo pods: namespace shop (client,
// echo pods), namespace tenant (one intruder per node), Service echo (L4,
// with a DestinationRule the kernel can honour) and Service web (a
// VirtualService routes it, so connects go to the node proxy).
func (m *meshADS) meshYAML(echo []*Pod) string {
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: tenant}\n")
	pod := func(p *Pod, ns, sa, app string) {
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s, labels: {app: %s}}
spec:
  nodeName: %s
  serviceAccountName: %s
  containers: [{name: c, image: x, ports: [{containerPort: %d}]}]
status: {phase: Running, podIP: %s, conditions: [{type: Ready, status: "True"}]}
`, p.Name, ns, app, p.Node.Name, sa, echoTCP, p.IP)
	}
	pod(m.client(), "shop", "client", "client")
	for _, p := range echo {
		pod(p, "shop", "echo", "echo")
	}
	for _, p := range m.intruders() {
		pod(p, "tenant", "intruder", "intruder")
	}
	fmt.Fprintf(&b, `---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  clusterIP: %s
  selector: {app: echo}
  ports: [{name: tcp-echo, port: 80, targetPort: %d}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: shop}
spec:
  host: echo.shop.svc.cluster.local
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: %s
  selector: {app: echo}
  ports: [{name: http-web, port: 80, targetPort: %d}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec:
  hosts: [web]
  http: [{route: [{destination: {host: web}}], timeout: 5s}]
`, m.vip, echoTCP, m.webVIP, echoTCP)
	return b.String()
}

const meshADSPolicy = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-tenant, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - from: [{source: {namespaces: ["tenant"]}}]
`

// write replaces file name in the config directory atomically.
func (m *meshADS) write(name, content string) {
	m.t.Helper()
	tmp := filepath.Join(m.dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		m.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(m.dir, name)); err != nil {
		m.t.Fatal(err)
	}
}

func (m *meshADS) remove(name string) {
	m.t.Helper()
	if err := os.Remove(filepath.Join(m.dir, name)); err != nil {
		m.t.Fatal(err)
	}
}

// startMeshd starts the control plane on m.xdsAddr (a free port the first
// time, the same one after a restart).
func (m *meshADS) startMeshd() {
	m.t.Helper()
	addr := m.xdsAddr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	cp, err := xds.StartControlPlane(xds.ControlPlaneConfig{ConfigDir: m.dir, XDSAddr: addr, DebugAddr: "127.0.0.1:0",
		PollInterval: 50 * time.Millisecond, ShutdownTimeout: 500 * time.Millisecond, Logger: testLogger()})
	if err != nil {
		m.t.Fatalf("start meshd: %v", err)
	}
	m.cp, m.xdsAddr = cp, cp.XDSAddr()
}

func (m *meshADS) stopMeshd() {
	if m.cp != nil {
		if err := m.cp.Stop(); err != nil {
			m.t.Logf("stop meshd: %v", err)
		}
		m.cp = nil
	}
}

// startAgent starts node n's agent (adopting the pins of a previous one).
func (m *meshADS) startAgent(n *Node) *runningAgent {
	m.t.Helper()
	return m.startAgentWith(n, func(*meshagent.Config) {})
}

// startAgentWith is startAgent with a config changed by edit.
func (m *meshADS) startAgentWith(n *Node, edit func(*meshagent.Config)) *runningAgent {
	m.t.Helper()
	cfg := meshagent.Config{
		Node: n.Name, ControlPlane: m.xdsAddr, CgroupPath: n.Cgroup, PinDir: m.c.PinDir(n), NodeIP: n.IP,
		EnvoySocket: filepath.Join(m.c.RunDir, "meshads-"+n.Name, "xds.sock"),
		StatusAddr:  "127.0.0.1:0",
		Backoff:     ads.Backoff{Initial: 50 * time.Millisecond, Max: 500 * time.Millisecond},
		Logger:      testLogger(),
	}
	edit(&cfg)
	a, err := meshagent.New(cfg)
	if err != nil {
		m.t.Fatalf("agent on %s: %v", n.Name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ra := &runningAgent{node: n, a: a, cancel: cancel, done: make(chan error, 1)}
	go func() { ra.done <- a.Run(ctx) }()
	m.agents[n.Name] = ra
	return ra
}

// stopAgent stops node n's agent the way a killed agent leaves the node:
// programs and maps stay pinned and attached.
func (m *meshADS) stopAgent(n *Node) {
	ra := m.agents[n.Name]
	if ra == nil {
		return
	}
	ra.cancel()
	if err := <-ra.done; err != nil {
		m.t.Errorf("agent on %s: %v", n.Name, err)
	}
	delete(m.agents, n.Name)
}

// uninstall removes node n's programs and pins (cleanup).
func (m *meshADS) uninstall(n *Node) {
	dp, err := nodeagent.Open(nodeagent.Config{Node: n.Name, CgroupPath: n.Cgroup, PinDir: m.c.PinDir(n)})
	if err == nil {
		err = dp.Uninstall()
	}
	if err != nil {
		m.t.Logf("uninstall %s: %v", n.Name, err)
	}
}

// waitReady waits until every agent applied a full set.
func (m *meshADS) waitReady(timeout time.Duration) {
	m.t.Helper()
	deadline := time.Now().Add(timeout)
	for _, ra := range m.agents {
		for ra.a.Ready() != nil {
			if time.Now().After(deadline) {
				m.t.Fatalf("agent on %s not ready after %v: %v; status %+v", ra.node.Name, timeout, ra.a.Ready(), ra.a.Status().ADS)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// backends returns node n's kernel backends of (vip, 80/TCP), sorted.
func (m *meshADS) backends(n *Node, vip netip.Addr) []string {
	m.t.Helper()
	st, err := m.agents[n.Name].a.Dump()
	if err != nil {
		m.t.Fatalf("dump %s: %v", n.Name, err)
	}
	var out []string
	for _, s := range st.Services {
		if s.VIP == vip && s.Port == 80 && s.Proto == nodeagent.TCP {
			for _, b := range s.Backends {
				out = append(out, netip.AddrPortFrom(b.IP, b.Port).String())
			}
		}
	}
	slices.Sort(out)
	return out
}

// waitBackends waits until every node's kernel holds exactly the echo pods
// as backends of the echo VIP and returns how long that took.
func (m *meshADS) waitBackends(echo []*Pod, since time.Time, timeout time.Duration) time.Duration {
	m.t.Helper()
	var want []string
	for _, p := range echo {
		want = append(want, netip.AddrPortFrom(p.IP, echoTCP).String())
	}
	slices.Sort(want)
	for _, n := range m.c.Nodes {
		for !slices.Equal(m.backends(n, m.vip), want) {
			if time.Since(since) > timeout {
				m.t.Fatalf("%s: backends %v, want %v after %v", n.Name, m.backends(n, m.vip), want, timeout)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return time.Since(since)
}

// expectedState is what node n's maps must hold according to meshd: the
// dataplane resources of its config dump, converted by the agent's rules,
// plus the node's host workload.
func (m *meshADS) expectedState(n *Node) nodeagent.State {
	m.t.Helper()
	resp, err := http.Get("http://" + m.cp.DebugAddr() + "/debug/config_dump?node=" + n.Name)
	if err != nil {
		m.t.Fatal(err)
	}
	defer resp.Body.Close()
	var dump struct {
		Dataplane map[string][]json.RawMessage `json:"dataplane"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&dump); err != nil || resp.StatusCode != http.StatusOK {
		m.t.Fatalf("config_dump of %s: %s %v", n.Name, resp.Status, err)
	}
	res := &ads.Resources{Listeners: map[string]*dataplanev1.NamespaceListener{}, Workloads: map[string]*dataplanev1.Workload{},
		Services: map[string]*dataplanev1.Service{}, Policies: map[string]*dataplanev1.Policy{}}
	for typ, items := range dump.Dataplane {
		for i, raw := range items {
			name := fmt.Sprintf("%s-%d", typ, i)
			decode := func(msg proto.Message) {
				if err := protojson.Unmarshal(raw, msg); err != nil {
					m.t.Fatalf("config_dump of %s: %s[%d]: %v", n.Name, typ, i, err)
				}
			}
			switch typ {
			case "NamespaceListener":
				l := &dataplanev1.NamespaceListener{}
				decode(l)
				res.Listeners[name] = l
			case "Workload":
				w := &dataplanev1.Workload{}
				decode(w)
				res.Workloads[name] = w
			case "Service":
				s := &dataplanev1.Service{}
				decode(s)
				res.Services[name] = s
			case "Policy":
				pol := &dataplanev1.Policy{}
				decode(pol)
				res.Policies[name] = pol
			default:
				m.t.Fatalf("config_dump of %s: unknown dataplane type %q", n.Name, typ)
			}
		}
	}
	return m.convert(n, res)
}

// convert is the agent's conversion of res for node n, with the host
// workload, in Dump's order.
func (m *meshADS) convert(n *Node, res *ads.Resources) nodeagent.State {
	m.t.Helper()
	st, err := ads.ToState(res, ads.StateConfig{Node: n.Name, ProxyIP: n.IP, PodCgroup: meshagent.CgroupLayout(n.Cgroup)})
	if err != nil {
		m.t.Fatalf("converting %s's resources from meshd: %v", n.Name, err)
	}
	st.Workloads = append(st.Workloads, nodeagent.Workload{IP: n.IP, Identity: nodeagent.IdentityHost, Local: true})
	return st.Canonical()
}

// fakeEnvoy opens the Delta ADS stream node n's Envoy would, through the
// agent's xDS socket (so over the agent's connection to meshd), subscribes
// to clusters and ACKs every response until the returned stop is called.
func (m *meshADS) fakeEnvoy(ctx context.Context, t *testing.T, n *Node) (stop func()) {
	t.Helper()
	st := m.agents[n.Name].a.Status()
	if st.Envoy == nil {
		t.Fatalf("%s: the agent runs no Envoy side", n.Name)
	}
	conn, err := grpc.NewClient("unix://"+st.Envoy.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	// Envoy's node id is its node name (nodeagent/envoy.Bootstrap); the
	// proxy forces it anyway.
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: n.Name}, TypeUrl: resourcev3.ClusterType,
		ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}); err != nil {
				return
			}
		}
	}()
	return func() {
		cancel()
		<-done
		_ = conn.Close()
	}
}
