package bpf

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// The kernel tests attach the programs to a cgroup of their own and run the
// clients (and the servers whose cgroup matters) as children started
// directly inside it: the test binary re-executes itself with childEnv set
// to a JSON childReq, runs that mode (child_test.go) and exits.
const childEnv = "NODEMESH_BPFTEST_CHILD"

func TestMain(m *testing.M) {
	if req := os.Getenv(childEnv); req != "" {
		os.Exit(runChild(req))
	}
	os.Exit(m.Run())
}

// env is a loaded and attached data plane in a test cgroup.
type env struct {
	t      *testing.T
	cgroup string
	objs   *MeshObjects
}

func requireKernel(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping kernel test: needs root")
	}
	data, err := os.ReadFile("/proc/mounts")
	if err != nil {
		t.Skipf("skipping kernel test: %v", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[2] == "cgroup2" {
			return f[1]
		}
	}
	t.Skip("skipping kernel test: no cgroup v2 mount in /proc/mounts")
	return ""
}

// newEnv loads the programs with fresh (unpinned) maps and attaches them to
// a new cgroup; everything is detached and removed at the end of the test.
func newEnv(t *testing.T) *env {
	t.Helper()
	mount := requireKernel(t)
	b := make([]byte, 4)
	rand.Read(b)
	cg := filepath.Join(mount, "nodemesh-bpftest-"+hex.EncodeToString(b))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatalf("create test cgroup: %v", err)
	}
	e := &env{t: t, cgroup: cg, objs: &MeshObjects{}}
	t.Cleanup(func() {
		os.WriteFile(filepath.Join(cg, "cgroup.kill"), []byte("1"), 0)
		removeCgroupTree(t, cg)
	})
	if err := LoadMeshObjects(e.objs, nil); err != nil {
		t.Fatalf("load programs: %v", err)
	}
	t.Cleanup(func() { e.objs.Close() })
	progs := map[string]*ebpf.Program{}
	for _, a := range Attachments {
		progs[a.Program] = e.prog(a.Program)
	}
	for _, a := range Attachments {
		var l link.Link
		var err error
		if a.Map != "" {
			l, err = link.AttachRawLink(link.RawLinkOptions{Target: e.objs.SockHash.FD(), Program: progs[a.Program], Attach: a.Type})
		} else {
			l, err = link.AttachCgroup(link.CgroupOptions{Path: cg, Attach: a.Type, Program: progs[a.Program]})
		}
		if err != nil {
			t.Fatalf("attach %s: %v", a.Program, err)
		}
		t.Cleanup(func() { l.Close() })
	}
	return e
}

func (e *env) prog(name string) *ebpf.Program {
	p := map[string]*ebpf.Program{
		MeshProgConnect4: e.objs.Connect4, MeshProgConnect6: e.objs.Connect6,
		MeshProgSendmsg4: e.objs.Sendmsg4, MeshProgSendmsg6: e.objs.Sendmsg6,
		MeshProgRecvmsg4: e.objs.Recvmsg4, MeshProgRecvmsg6: e.objs.Recvmsg6,
		MeshProgGetpeername4: e.objs.Getpeername4, MeshProgGetpeername6: e.objs.Getpeername6,
		MeshProgGetsockoptOrigdst: e.objs.GetsockoptOrigdst, MeshProgSockOps: e.objs.SockOps,
		MeshProgIngressPolicy: e.objs.IngressPolicy, MeshProgSkMsgRedirect: e.objs.SkMsgRedirect,
		MeshProgEgressFlows: e.objs.EgressFlows,
	}[name]
	if p == nil {
		e.t.Fatalf("no program %s", name)
	}
	return p
}

func removeCgroupTree(t *testing.T, dir string) {
	entries, _ := os.ReadDir(dir)
	for _, en := range entries {
		if en.IsDir() {
			removeCgroupTree(t, filepath.Join(dir, en.Name()))
		}
	}
	for i := 0; i < 50; i++ {
		if err := os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("could not remove cgroup %s", dir)
}

// subCgroup makes a child cgroup (programs of the parent apply to it) and
// returns its path and id.
func (e *env) subCgroup(name string) (string, uint64) {
	p := filepath.Join(e.cgroup, name)
	if err := os.Mkdir(p, 0o755); err != nil {
		e.t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		e.t.Fatal(err)
	}
	return p, fi.Sys().(*syscall.Stat_t).Ino
}

// childReq is what a child process is asked to do.
type childReq struct {
	Mode  string `json:"mode"`
	Net   string `json:"net,omitempty"`   // tcp4, tcp6, udp4
	Addr  string `json:"addr,omitempty"`  // where to dial or listen
	Local string `json:"local,omitempty"` // source address to bind
	N     int    `json:"n,omitempty"`
	// TimeoutMS bounds one dial/read.
	TimeoutMS int `json:"timeoutMS,omitempty"`
}

// childResult is what a client child prints.
type childResult struct {
	Replies map[string]int `json:"replies"`
	Peers   map[string]int `json:"peers"`
	Errors  map[string]int `json:"errors"`
}

func (e *env) command(ctx context.Context, cgroup string, req childReq) *exec.Cmd {
	b, _ := json.Marshal(req)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(b))
	f, err := os.Open(cgroup)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { f.Close() })
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	return cmd
}

// client runs a client child in cgroup and returns what it saw.
func (e *env) client(cgroup string, req childReq) childResult {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := e.command(ctx, cgroup, req)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		e.t.Fatalf("client %s: %v", req.Mode, err)
	}
	var res childResult
	if err := json.Unmarshal(out, &res); err != nil {
		e.t.Fatalf("client %s output %q: %v", req.Mode, out, err)
	}
	return res
}

// server starts a server child in cgroup and waits until it listens.
func (e *env) server(cgroup string, req childReq) {
	e.t.Helper()
	cmd := e.command(context.Background(), cgroup, req)
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		e.t.Fatalf("server %s did not start: %q %v", req.Mode, line, err)
	}
}

// nameServers starts TCP (and UDP) servers in the test process (outside the
// cgroup) that answer with their own address.
func nameServers(t *testing.T, network string, addrs ...string) {
	t.Helper()
	for _, a := range addrs {
		switch network {
		case "tcp", "tcp4", "tcp6":
			ln, err := net.Listen(network, a)
			if err != nil {
				t.Fatalf("listen %s: %v", a, err)
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					fmt.Fprint(c, ln.Addr().String())
					c.Close()
				}
			}()
		case "udp", "udp4", "udp6":
			pc, err := net.ListenPacket(network, a)
			if err != nil {
				t.Fatalf("listen %s: %v", a, err)
			}
			t.Cleanup(func() { pc.Close() })
			go func() {
				buf := make([]byte, 1500)
				for {
					_, from, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					pc.WriteTo([]byte(pc.LocalAddr().String()), from)
				}
			}()
		}
	}
}

// freePort returns a port free on ip for network (tcp or udp).
func freePort(t *testing.T, network, ip string) uint16 {
	t.Helper()
	if strings.HasPrefix(network, "udp") {
		pc, err := net.ListenPacket(network, net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		return uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	}
	ln, err := net.Listen(network, net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// ---- map writers ----

func (e *env) putService(vip string, port uint16, proto uint8, l7 uint16, backends []netip.AddrPort, weights []uint32) {
	e.t.Helper()
	v := netip.MustParseAddr(vip)
	var cum uint32
	for i, b := range backends {
		id := uint32(1000 + i)
		for {
			var old MeshBackend
			if e.objs.Backends.Lookup(id, &old) != nil || old.AddrPort() == b {
				break
			}
			id += 100
		}
		be := Backend(b.Addr(), b.Port())
		if err := e.objs.Backends.Put(id, &be); err != nil {
			e.t.Fatal(err)
		}
		sv := MeshSvcValue{BackendId: id}
		if weights != nil {
			cum += weights[i]
			sv.Weight = cum
		}
		k := ServiceKey(v, port, proto, uint16(i+1))
		if err := e.objs.Services.Put(&k, &sv); err != nil {
			e.t.Fatal(err)
		}
	}
	m := MeshSvcValue{Count: uint32(len(backends)), L7ProxyPort: l7}
	if weights != nil {
		m.Flags = SvcWeighted
		m.Weight = cum
	}
	k := ServiceKey(v, port, proto, 0)
	if err := e.objs.Services.Put(&k, &m); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) putWorkload(ip string, identity, ns uint32, local bool) {
	e.t.Helper()
	k := Addr(netip.MustParseAddr(ip))
	v := MeshEndpointInfo{Identity: identity, Ns: ns}
	if local {
		v.Flags = EndpointLocal
	}
	if err := e.objs.Workloads.Put(&k, &v); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) putCgroupWorkload(id uint64, identity, ns uint32) {
	e.t.Helper()
	v := MeshEndpointInfo{Identity: identity, Ns: ns}
	if err := e.objs.CgroupWorkloads.Put(id, &v); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) putPolicy(dst, src uint32, port uint16, proto uint8, verdict uint32) {
	e.t.Helper()
	k := MeshPolicyKey{DstIdentity: dst, SrcIdentity: src, Port: port, Proto: proto}
	v := MeshPolicyValue{Verdict: verdict}
	if err := e.objs.Policy.Put(&k, &v); err != nil {
		e.t.Fatal(err)
	}
	if verdict == VerdictAllow {
		if err := e.objs.PolicyMode.Put(dst, uint32(ModeDefaultDeny)); err != nil {
			e.t.Fatal(err)
		}
	}
}

func (e *env) serviceStats(vip string, port uint16, proto uint8) MeshSvcStats {
	e.t.Helper()
	k := ServiceKey(netip.MustParseAddr(vip), port, proto, 0)
	var per []MeshSvcStats
	if err := e.objs.ServiceStats.Lookup(&k, &per); err != nil {
		e.t.Fatalf("service stats %s:%d: %v", vip, port, err)
	}
	var sum MeshSvcStats
	for _, p := range per {
		sum.Connects += p.Connects
		sum.Redirects += p.Redirects
		sum.NoBackend += p.NoBackend
	}
	return sum
}

func (e *env) verdicts(hook int) (allowed, denied uint64) {
	e.t.Helper()
	for d := 0; d < 2; d++ {
		var per []uint64
		if err := e.objs.VerdictStats.Lookup(uint32(hook*2+d), &per); err != nil {
			e.t.Fatal(err)
		}
		for _, v := range per {
			if d == 0 {
				allowed += v
			} else {
				denied += v
			}
		}
	}
	return allowed, denied
}
