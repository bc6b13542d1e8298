package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	meshagent "github.com/nodemesh/nodemesh/nodeagent/agent"
)

// TestMeshADSAgentProcess runs the real cmd/mesh-agent binary in
// --control-plane mode, one process per node (in the root netns, where
// meshd listens; they attach to the nodes' cgroup subtrees): the pods reach
// the VIP balanced across both nodes, the agents' status endpoints report
// the ACKed types, and a SIGTERMed agent leaves the maps forwarding.
func TestMeshADSAgentProcess(t *testing.T) {
	c := NewCluster(t, Config{})
	RequireBPFFS(t)
	bin := buildMeshAgent(t)
	m := &meshADS{t: t, c: c, dir: t.TempDir(), echoes: startEchoes(t, c), vip: netip.MustParseAddr("10.78.0.93"),
		webVIP: netip.MustParseAddr("10.78.0.94"), agents: map[string]*runningAgent{}}
	echo := m.echoCandidates()
	m.write("mesh.yaml", m.meshYAML(echo))
	m.startMeshd()
	t.Cleanup(m.stopMeshd)

	procs := map[string]*exec.Cmd{}
	status := map[string]string{}
	c.OnCleanup(func() {
		for _, n := range c.Nodes {
			if p := procs[n.Name]; p != nil && p.ProcessState == nil {
				_ = p.Process.Kill()
				_ = p.Wait()
			}
			m.uninstall(n) // the binary's temp dir is gone by now
		}
	})
	logs := map[string]*bytes.Buffer{}
	for _, n := range c.Nodes {
		status[n.Name] = freeAddr(t)
		cmd := exec.Command(bin, "--node", n.Name, "--control-plane", m.xdsAddr, "--cgroup", n.Cgroup,
			"--pin-dir", c.PinDir(n), "--node-ip", n.IP.String(), "--status-addr", status[n.Name],
			"--envoy-socket", filepath.Join(c.RunDir, "proc-"+n.Name, "xds.sock"))
		logs[n.Name] = &bytes.Buffer{}
		cmd.Stderr = logs[n.Name]
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		procs[n.Name] = cmd
	}
	defer func() {
		if t.Failed() {
			for name, l := range logs {
				t.Logf("mesh-agent %s:\n%s", name, tail(l.String(), 3000))
			}
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range c.Nodes {
		for httpCode("http://"+status[n.Name]+"/readyz") != http.StatusOK {
			if time.Now().After(deadline) {
				t.Fatalf("mesh-agent on %s never became ready", n.Name)
			}
			time.Sleep(20 * time.Millisecond)
		}
		var st meshagent.Status
		getJSONURL(t, "http://"+status[n.Name]+"/status", &st)
		for _, typ := range dataplanev1.Types {
			if ts := st.ADS.Types[typ]; ts.Acks == 0 || ts.Version == "" || ts.Nacks != 0 {
				t.Errorf("%s: %s not ACKed cleanly: %+v", n.Name, typ, ts)
			}
		}
		if st.Envoy == nil || st.Envoy.Absent == "" {
			t.Errorf("%s: status does not say that envoy is absent: %+v", n.Name, st.Envoy)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	addr := netip.AddrPortFrom(m.vip, 80).String()
	check := func(what string) {
		const n = 1000
		res, err := m.client().Connect(ctx, ClientConfig{Addr: addr, Count: n})
		if err != nil {
			t.Fatal(err)
		}
		if res.OK != n {
			t.Fatalf("%s: %d of %d connections worked: %+v", what, res.OK, n, res)
		}
		w := map[string]uint32{}
		for _, p := range echo {
			w[p.Name] = 1
		}
		checkWeights(t, res.Backends, w, n)
	}
	check("agents running")
	for _, n := range c.Nodes {
		if err := procs[n.Name].Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := procs[n.Name].Wait(); err != nil {
			t.Errorf("mesh-agent on %s exited with %v", n.Name, err)
		}
	}
	check("agents stopped (pinned maps)")
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func httpCode(url string) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

func getJSONURL(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("%s: %v", url, err)
	}
}
