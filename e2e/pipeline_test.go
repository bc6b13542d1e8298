package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/nodeagent/ads"
	"github.com/nodemesh/nodemesh/xds"
)

// pipelineYAML is the mesh of TestPipeline: a Service "echo" whose pods run
// on both nodes, clients and an intruder, and an L4 AuthorizationPolicy
// that only lets the "client" service account reach the echo pods.
func pipelineYAML(c *Cluster, vip netip.Addr, stopped ...string) string {
	pod := func(name, sa, app string, p *Pod) string {
		phase := "Running"
		if slices.Contains(stopped, name) {
			phase = "Succeeded"
		}
		return fmt.Sprintf(`---
apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: shop, labels: {app: %s}}
spec:
  nodeName: %s
  serviceAccountName: %s
  containers: [{name: c, image: x, ports: [{name: echo, containerPort: %d}]}]
status: {phase: %s, podIP: %s, conditions: [{type: Ready, status: "True"}]}
`, name, app, p.Node.Name, sa, echoTCP, phase, p.IP)
	}
	n1, n2 := c.Nodes[0], c.Nodes[1]
	var b strings.Builder
	b.WriteString(`apiVersion: v1
kind: Namespace
metadata: {name: shop}
`)
	b.WriteString(pod("client-0", "client", "client", n1.Pods[0]))
	b.WriteString(pod("echo-a", "echo", "echo", n1.Pods[1]))
	b.WriteString(pod("intruder-0", "intruder", "intruder", n1.Pods[2]))
	b.WriteString(pod("echo-b", "echo", "echo", n2.Pods[0]))
	b.WriteString(pod("echo-c", "echo", "echo", n2.Pods[1]))
	b.WriteString(pod("client-1", "client", "client", n2.Pods[2]))
	fmt.Fprintf(&b, `---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  clusterIP: %s
  selector: {app: echo}
  ports:
  - {name: tcp-echo, port: 80, targetPort: %d}
  - {name: udp-echo, port: 53, targetPort: %d, protocol: UDP}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-from-clients, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]
`, vip, echoTCP, echoUDP)
	return b.String()
}

// TestPipeline drives the whole path: Kubernetes and Istio YAML in a
// directory -> meshd's control plane (translate, ADS) -> one ADS client per
// node -> the kernel data plane -> traffic between pods. Pod identities
// reach the kernel through the pods' cgroups.
func TestPipeline(t *testing.T) {
	c := NewCluster(t, Config{})
	RequireBPFFS(t)
	echoes := startEchoes(t, c)
	vip := netip.MustParseAddr("10.78.0.70")
	dir := t.TempDir()
	write := func(yaml string) {
		tmp := filepath.Join(dir, ".mesh.yaml.tmp")
		if err := os.WriteFile(tmp, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "mesh.yaml")); err != nil {
			t.Fatal(err)
		}
	}
	write(pipelineYAML(c, vip))
	cp, err := xds.StartControlPlane(xds.ControlPlaneConfig{ConfigDir: dir, XDSAddr: "127.0.0.1:0", DebugAddr: "127.0.0.1:0",
		PollInterval: 50 * time.Millisecond, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Stop() })
	if d := cp.Server().Diagnostics(); len(d) > 0 {
		t.Logf("diagnostics: %v", d)
	}

	agents := startAgents(t, c)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	podCgroup := map[string]string{}
	for _, p := range c.Pods() {
		podCgroup[p.Name] = p.Cgroup
	}
	names := map[string]*Pod{"client-0": c.Nodes[0].Pods[0], "echo-a": c.Nodes[0].Pods[1], "intruder-0": c.Nodes[0].Pods[2],
		"echo-b": c.Nodes[1].Pods[0], "echo-c": c.Nodes[1].Pods[1], "client-1": c.Nodes[1].Pods[2]}
	var clients []*ads.Client
	for _, a := range agents {
		a := a
		cl, err := ads.New(ads.Config{Node: a.node.Name, ControlPlane: cp.XDSAddr(), Logger: testLogger(),
			Applier: ads.NewDataplaneApplier(a.dp, ads.StateConfig{Node: a.node.Name, ProxyIP: a.node.IP,
				PodCgroup: func(ns, pod, _ string) string {
					if p := names[pod]; p != nil && ns == "shop" {
						return p.Cgroup
					}
					return ""
				}})})
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, cl)
		done := make(chan struct{})
		go func() { defer close(done); _ = cl.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	addr := vip.String() + ":80"
	echoPods := []string{"echo-a", "echo-b", "echo-c"}

	// Wait for the first push to reach both kernels.
	deadline := time.Now().Add(20 * time.Second)
	for {
		res, err := names["client-0"].Connect(ctx, ClientConfig{Addr: addr, Count: 1, Timeout: time.Second})
		if err == nil && res.OK == 1 {
			res2, err2 := names["client-1"].Connect(ctx, ClientConfig{Addr: addr, Count: 1, Timeout: time.Second})
			if err2 == nil && res2.OK == 1 {
				break
			}
		}
		if time.Now().After(deadline) {
			for _, cl := range clients {
				t.Logf("ads status: %+v", cl.Status())
			}
			t.Fatalf("the VIP never worked from both nodes: %+v %v", res, err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	for _, client := range []string{"client-0", "client-1"} {
		t.Run("balanced-from-"+client, func(t *testing.T) {
			const n = 1500
			res, err := names[client].Connect(ctx, ClientConfig{Addr: addr, Count: n})
			if err != nil {
				t.Fatal(err)
			}
			if res.OK != n || res.Peers[addr] != n {
				t.Fatalf("%+v", res)
			}
			weights := map[string]uint32{}
			for _, e := range echoPods {
				weights[names[e].Name] = 1
			}
			checkWeights(t, res.Backends, weights, n)
		})
	}
	t.Run("policy-denies-intruder", func(t *testing.T) {
		for _, e := range echoes {
			_ = e.Reset()
		}
		res, err := names["intruder-0"].Connect(ctx, ClientConfig{Addr: addr, Count: 10, Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if res.OK != 0 {
			t.Fatalf("intruder got through: %+v", res)
		}
		for _, e := range echoPods {
			if st, _ := echoes[names[e].Name].Stats(); st.TCPAccepts != 0 {
				t.Errorf("%s accepted %d connections from the intruder", e, st.TCPAccepts)
			}
		}
		t.Logf("intruder: %v", res.Errors)
	})
	t.Run("stopped-pod-leaves-every-kernel", func(t *testing.T) {
		start := time.Now()
		write(pipelineYAML(c, vip, "echo-c"))
		for _, client := range []string{"client-0", "client-1"} {
			for {
				res, err := names[client].Connect(ctx, ClientConfig{Addr: addr, Count: 30, Timeout: 3 * time.Second})
				if err != nil {
					t.Fatal(err)
				}
				if res.OK == 30 && res.Backends[names["echo-c"].Name] == 0 {
					break
				}
				if time.Since(start) > 10*time.Second {
					t.Fatalf("%s still reaches %v 10s after echo-c stopped", client, res.Backends)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		t.Logf("file written -> no connection to echo-c from either node within %v", time.Since(start))
	})
}
