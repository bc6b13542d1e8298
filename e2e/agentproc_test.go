package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/nodeagent"
)

// buildMeshAgent builds cmd/mesh-agent into a temporary directory.
func buildMeshAgent(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "mesh-agent")
	out, err := exec.Command(goTool, "build", "-o", bin, "github.com/nodemesh/nodemesh/cmd/mesh-agent").CombinedOutput()
	if err != nil {
		t.Fatalf("build mesh-agent: %v\n%s", err, out)
	}
	return bin
}

// agentProc is a mesh-agent process of one node fed by a state file.
type agentProc struct {
	bin, stateFile string
	node           *Node
	c              *Cluster
	proc           *Proc
}

// writeState replaces the state file atomically, as the agent expects.
func (a *agentProc) writeState(t *testing.T, st any) {
	t.Helper()
	data, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	tmp := a.stateFile + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, a.stateFile); err != nil {
		t.Fatal(err)
	}
}

func (a *agentProc) start(t *testing.T) {
	t.Helper()
	p, err := a.node.Start(a.bin, "--node", a.node.Name, "--cgroup", a.node.Cgroup,
		"--pin-dir", a.c.PinDir(a.node), "--state", a.stateFile, "--interval", "100ms")
	if err != nil {
		t.Fatal(err)
	}
	a.proc = p
}

// TestMeshAgentProcess runs the real cmd/mesh-agent binary on each node: it
// programs the VIP from its state file, follows edits of the file, keeps the
// last good state when the file turns bad, is restarted (SIGTERM, new
// process) under load without a failed connection, and --uninstall detaches
// everything.
func TestMeshAgentProcess(t *testing.T) {
	c := NewCluster(t, Config{})
	RequireBPFFS(t)
	bin := buildMeshAgent(t)
	startEchoes(t, c)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	client, a, b := n1.Pods[0], n1.Pods[1], n2.Pods[0]
	vip := netip.MustParseAddr("10.78.0.60")
	addr := vip.String() + ":80"
	spec := func(backends ...*Pod) meshSpec {
		s := meshSpec{Services: []nodeagent.Service{{VIP: vip, Port: 80, Proto: nodeagent.TCP}}}
		for _, p := range backends {
			s.Services[0].Backends = append(s.Services[0].Backends, backend(p, echoTCP, 0))
		}
		return s
	}
	var agents []*agentProc
	for _, n := range c.Nodes {
		ap := &agentProc{bin: bin, stateFile: filepath.Join(c.RunDir, n.Name+".state.yaml"), node: n, c: c}
		ap.writeState(t, spec(a, b).nodeState(c, n))
		ap.start(t)
		agents = append(agents, ap)
	}
	c.OnCleanup(func() {
		// Pins outlive the agents; teardown removes them with the cgroups.
		for _, ap := range agents {
			ap.proc.Stop(2 * time.Second)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// until polls until 20 connections in a row are all answered by want.
	until := func(t *testing.T, want ...*Pod) time.Duration {
		t.Helper()
		start := time.Now()
		for time.Since(start) < 10*time.Second {
			res, err := client.Connect(ctx, ClientConfig{Addr: addr, Count: 20, Timeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			var got int
			for _, p := range want {
				got += res.Backends[p.Name]
			}
			if got == 20 && len(res.Backends) == len(want) {
				return time.Since(start)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("VIP never answered only by %v", names(want))
		return 0
	}

	t.Run("programs-the-vip", func(t *testing.T) {
		t.Logf("VIP served by %v after %v", names([]*Pod{a, b}), until(t, a, b))
	})
	t.Run("follows-state-file", func(t *testing.T) {
		for _, ap := range agents {
			ap.writeState(t, spec(b).nodeState(c, ap.node))
		}
		t.Logf("edit took effect after %v", until(t, b))
	})
	t.Run("keeps-last-good-state", func(t *testing.T) {
		for _, ap := range agents {
			ap.writeState(t, map[string]any{"services": []map[string]any{{"vip": vip.String(), "port": 0, "proto": "TCP"}}})
		}
		time.Sleep(500 * time.Millisecond) // five checks of the file
		until(t, b)
		for _, ap := range agents {
			if out := ap.proc.Output(); !strings.Contains(out, ap.stateFile) {
				t.Errorf("agent on %s did not report the bad file %s:\n%s", ap.node.Name, ap.stateFile, tail(out, 1000))
			}
			ap.writeState(t, spec(a, b).nodeState(c, ap.node))
		}
		until(t, a, b)
	})
	t.Run("restart-under-load", func(t *testing.T) {
		const n = 1500
		done := make(chan ClientResult, 1)
		go func() {
			res, err := client.Connect(ctx, ClientConfig{Addr: addr, Count: n, Duration: 3 * time.Second, Concurrency: 16})
			if err != nil {
				res.Errors = map[string]int{err.Error(): 1}
			}
			done <- res
		}()
		time.Sleep(time.Second)
		for _, ap := range agents {
			ap.proc.Stop(5 * time.Second)
			ap.start(t)
		}
		res := <-done
		if res.OK != n || res.Peers[addr] != n {
			t.Fatalf("%d of %d connections failed across agent restarts: %v", n-res.OK, n, res.Errors)
		}
		t.Logf("%d connections in %v across a restart of both agents: %v", n, res.Elapsed, res.Backends)
	})
	t.Run("uninstall", func(t *testing.T) {
		for _, ap := range agents {
			ap.proc.Stop(5 * time.Second)
			if out, err := ap.node.Run(ctx, bin, "--node", ap.node.Name, "--cgroup", ap.node.Cgroup,
				"--pin-dir", c.PinDir(ap.node), "--uninstall"); err != nil {
				t.Fatalf("uninstall on %s: %v %s", ap.node.Name, err, out)
			}
			if _, err := os.Stat(c.PinDir(ap.node)); !os.IsNotExist(err) {
				t.Errorf("pins of %s remain after uninstall: %v", ap.node.Name, err)
			}
		}
		// Nothing translates the VIP any more: it has no route.
		res, err := client.Connect(ctx, ClientConfig{Addr: addr, Count: 3, Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if res.OK != 0 {
			t.Fatalf("VIP still answered after uninstall: %+v", res)
		}
		t.Logf("after uninstall: %v", res.Errors)
	})
}

func names(pods []*Pod) string {
	var s []string
	for _, p := range pods {
		s = append(s, p.Name)
	}
	return fmt.Sprint(s)
}
