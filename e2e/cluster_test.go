package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestClusterConnectivity proves the bare harness: pods reach each other on
// the same node and across nodes with real TCP and UDP bytes, without any
// address translation, and every process sits in its pod's netns and cgroup.
func TestClusterConnectivity(t *testing.T) {
	c := NewCluster(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	echoes := map[string]*Echo{}
	for _, p := range c.Pods() {
		e, err := p.StartEcho(EchoConfig{TCPPorts: []int{8080}, UDPPorts: []int{8081}})
		if err != nil {
			t.Fatal(err)
		}
		echoes[p.Name] = e
		checkPlacement(t, e.Proc.Pid(), p.Netns, p.Cgroup)
	}

	src := c.Nodes[0].Pods[0]
	for _, tc := range []struct {
		name  string
		dst   *Pod
		proto string
		port  int
	}{
		{"same-node/tcp", c.Nodes[0].Pods[1], "tcp", 8080},
		{"cross-node/tcp", c.Nodes[1].Pods[0], "tcp", 8080},
		{"same-node/udp", c.Nodes[0].Pods[2], "udp", 8081},
		{"cross-node/udp", c.Nodes[1].Pods[2], "udp", 8081},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 20
			addr := fmt.Sprintf("%s:%d", tc.dst.IP, tc.port)
			res, err := src.Connect(ctx, ClientConfig{Addr: addr, Proto: tc.proto, Count: n})
			if err != nil {
				t.Fatal(err)
			}
			if res.OK != n || res.Backends[tc.dst.Name] != n || res.Peers[addr] != n {
				t.Fatalf("%s -> %s: %+v, want %d exchanges answered by %s from %s", src.Name, addr, res, n, tc.dst.Name, addr)
			}
			st, err := echoes[tc.dst.Name].Stats()
			if err != nil {
				t.Fatal(err)
			}
			got := st.TCPAccepts
			if tc.proto == "udp" {
				got = st.UDPPackets
			}
			// The server saw the client's own pod IP: no NAT on the path.
			if got != n || st.Peers[src.IP.String()] != n {
				t.Fatalf("server %s stats %+v, want %d from %s", tc.dst.Name, st, n, src.IP)
			}
		})
	}

	t.Run("node-processes", func(t *testing.T) {
		n := c.Nodes[1]
		out, err := n.Run(ctx, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), n.IP.String()+"/24") {
			t.Fatalf("node %s eth0: %s, want %s/24", n.Name, out, n.IP)
		}
		e, err := n.StartEcho("n2host", EchoConfig{TCPPorts: []int{9000}})
		if err != nil {
			t.Fatal(err)
		}
		checkPlacement(t, e.Proc.Pid(), n.Netns, filepath.Join(n.Cgroup, "host"))
		res, err := src.Connect(ctx, ClientConfig{Addr: n.IP.String() + ":9000", Count: 3})
		if err != nil || res.Backends["n2host"] != 3 {
			t.Fatalf("pod -> node: %+v, %v", res, err)
		}
	})

	t.Run("root-netns-untouched", func(t *testing.T) {
		out, err := exec.Command("ip", "-4", "-o", "addr").CombinedOutput()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(out), "10.77.") {
			t.Fatalf("root netns carries a test address:\n%s", out)
		}
	})
}

// checkPlacement asserts that pid lives in the named netns and in cgroup dir.
func checkPlacement(t *testing.T, pid int, netns, cgroupDir string) {
	t.Helper()
	mount, _ := CgroupMount()
	want := "/" + strings.TrimPrefix(strings.TrimPrefix(cgroupDir, mount), "/")
	got, err := ProcCgroup(pid)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("pid %d in cgroup %q, want %q", pid, got, want)
	}
	var procNS, named syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &procNS); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(NetnsPath(netns), &named); err != nil {
		t.Fatal(err)
	}
	if procNS.Ino != named.Ino || procNS.Dev != named.Dev {
		t.Fatalf("pid %d not in netns %s", pid, netns)
	}
}

// TestSweepRemovesDeadRuns leaves resources behind for a run whose owner has
// exited and checks that Sweep removes them while a live run's stay.
func TestSweepRemovesDeadRuns(t *testing.T) {
	RequireCluster(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	prefix := newPrefix()
	if err := claim(prefix); err != nil {
		t.Fatal(err)
	}
	if err := claim(prefix); err == nil {
		t.Fatal("a prefix was claimed twice")
	}
	// Rewrite the owner as the exited process.
	if err := os.WriteFile(filepath.Join(ownerDir, prefix), []byte(fmt.Sprint(dead.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = removeRun(prefix) })
	ctx := context.Background()
	ns := prefix + "-n1"
	if err := addNetns(ctx, ns); err != nil {
		t.Fatal(err)
	}
	mount, _ := CgroupMount()
	cg := filepath.Join(mount, prefix, "n1", "n1p1")
	if err := makeCgroup(cg); err != nil {
		t.Fatal(err)
	}
	scratch, err := os.MkdirTemp("", prefix+"-")
	if err != nil {
		t.Fatal(err)
	}
	live := NewCluster(t, Config{Nodes: 1, PodsPerNode: 1}) // sweeps on creation
	for _, p := range []string{NetnsPath(ns), filepath.Join(mount, prefix), filepath.Join(ownerDir, prefix), scratch} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s survived the sweep (stat: %v)", p, err)
		}
	}
	if err := Sweep(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{NetnsPath(live.Fabric), live.CgroupRoot} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("live run lost %s: %v", p, err)
		}
	}
}
