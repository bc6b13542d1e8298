package bpf

import (
	"fmt"
	"testing"
)

// TestPolicyAtConnect: the client is identified by its cgroup, the server by
// IP; a refused connect fails with EPERM before any packet is sent.
func TestPolicyAtConnect(t *testing.T) {
	e := newEnv(t)
	clientCg, clientID := e.subCgroup("client")
	const client, server, other = 200, 300, 201
	port := freePort(t, "tcp4", "127.0.0.21")
	addr := fmt.Sprintf("127.0.0.21:%d", port)
	nameServers(t, "tcp4", addr)
	e.putCgroupWorkload(clientID, client, 0)
	e.putWorkload("127.0.0.21", server, 0, true)

	steps := []struct {
		name   string
		change func()
		allow  bool
	}{
		{"no policy: allowed", func() {}, true},
		{"allow from another identity only: default deny", func() { e.putPolicy(server, other, 0, 0, VerdictAllow) }, false},
		{"allow from client on the port", func() { e.putPolicy(server, client, port, ProtoTCP, VerdictAllow) }, true},
		{"deny from any wins", func() { e.putPolicy(server, 0, 0, 0, VerdictDeny) }, false},
	}
	var wantAllowed, wantDenied uint64
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			s.change()
			res := e.client(clientCg, childReq{Mode: "dial", Net: "tcp4", Addr: addr, N: 5})
			if s.allow {
				wantAllowed += 5
				if res.Replies[addr] != 5 {
					t.Errorf("want 5 connections, got replies %v errors %v", res.Replies, res.Errors)
				}
			} else {
				wantDenied += 5
				if res.Errors["EPERM"] != 5 {
					t.Errorf("want 5 EPERM, got replies %v errors %v", res.Replies, res.Errors)
				}
			}
			allowed, denied := e.verdicts(HookConnect)
			if allowed != wantAllowed || denied != wantDenied {
				t.Errorf("connect verdict counters allowed=%d denied=%d, want %d/%d", allowed, denied, wantAllowed, wantDenied)
			}
		})
	}
}

// TestPolicyAtIngress: a client the connect hook does not see (here the
// test process, outside the cgroup) is checked at the destination pod's
// cgroup; the SYN is dropped, so the connection never reaches accept.
func TestPolicyAtIngress(t *testing.T) {
	e := newEnv(t)
	const client, server = 401, 400
	port := freePort(t, "tcp4", "127.0.0.31")
	addr := fmt.Sprintf("127.0.0.31:%d", port)
	e.server(e.cgroup, childReq{Mode: "serve-name", Net: "tcp4", Addr: addr})
	e.putWorkload("127.0.0.31", server, 0, true)
	e.putWorkload("127.0.0.32", client, 0, false)

	dial := func() string {
		res := childResult{Replies: map[string]int{}, Peers: map[string]int{}, Errors: map[string]int{}}
		dialOnce(childReq{Net: "tcp4", Addr: addr, Local: "127.0.0.32"}, 500e6, &res)
		for r := range res.Replies {
			return r
		}
		for e := range res.Errors {
			return e
		}
		return ""
	}
	if got := dial(); got != addr {
		t.Fatalf("without policy: got %q, want the server's answer", got)
	}
	e.putPolicy(server, client, port, ProtoTCP, VerdictDeny)
	if got := dial(); got != "timeout" {
		t.Fatalf("denied at ingress: got %q, want a connect timeout (SYN dropped)", got)
	}
	if _, denied := e.verdicts(HookIngress); denied == 0 {
		t.Errorf("ingress denied counter did not move")
	}
	// A default-deny destination still lets the host (identity 1) in.
	k := MeshPolicyKey{DstIdentity: server, SrcIdentity: client, Port: port, Proto: ProtoTCP}
	if err := e.objs.Policy.Delete(&k); err != nil {
		t.Fatal(err)
	}
	e.putPolicy(server, 999, 0, 0, VerdictAllow)
	if got := dial(); got != "timeout" {
		t.Fatalf("default deny: got %q, want timeout", got)
	}
	e.putWorkload("127.0.0.32", IdentityHost, 0, false)
	if got := dial(); got != addr {
		t.Fatalf("host identity: got %q, want the server's answer", got)
	}
}

// TestPolicyUDPSendmsg: unconnected UDP is checked per destination at
// sendmsg.
func TestPolicyUDPSendmsg(t *testing.T) {
	e := newEnv(t)
	clientCg, clientID := e.subCgroup("client")
	port := freePort(t, "udp4", "127.0.0.41")
	addr := fmt.Sprintf("127.0.0.41:%d", port)
	nameServers(t, "udp4", addr)
	e.putCgroupWorkload(clientID, 600, 0)
	e.putWorkload("127.0.0.41", 601, 0, true)
	e.putPolicy(601, 600, 0, ProtoUDP, VerdictDeny)
	res := e.client(clientCg, childReq{Mode: "udp-sendto", Net: "udp4", Addr: addr, N: 3})
	if res.Errors["EPERM"] != 3 {
		t.Errorf("want 3 EPERM, got replies %v errors %v", res.Replies, res.Errors)
	}
	if _, denied := e.verdicts(HookSendmsg); denied != 3 {
		t.Errorf("sendmsg denied counter = %d, want 3", denied)
	}
}

// TestPolicyUDPReplies: a default-deny workload gets the replies to the
// UDP flows it opened (recorded at egress), connected or not, while a new
// inbound flow to it is still dropped.
func TestPolicyUDPReplies(t *testing.T) {
	e := newEnv(t)
	const client, server = 800, 801
	e.putWorkload("127.0.0.81", client, 0, true)
	e.putWorkload("127.0.0.82", server, 0, false)
	e.putPolicy(client, 999, 0, 0, VerdictAllow) // client is default deny
	port := freePort(t, "udp4", "127.0.0.82")
	addr := fmt.Sprintf("127.0.0.82:%d", port)
	nameServers(t, "udp4", addr)

	for _, mode := range []string{"udp-sendto", "dial"} {
		res := e.client(e.cgroup, childReq{Mode: mode, Net: "udp4", Addr: addr, Local: "127.0.0.81", N: 10, TimeoutMS: 500})
		if res.Replies[addr] != 10 {
			t.Errorf("%s: %d of 10 replies reached the default-deny client (errors %v)", mode, res.Replies[addr], res.Errors)
		}
	}
	_, deniedBefore := e.verdicts(HookIngress)

	inPort := freePort(t, "udp4", "127.0.0.81")
	in := fmt.Sprintf("127.0.0.81:%d", inPort)
	e.server(e.cgroup, childReq{Mode: "serve-udp-name", Net: "udp4", Addr: in})
	res := childResult{Replies: map[string]int{}, Peers: map[string]int{}, Errors: map[string]int{}}
	dialOnce(childReq{Net: "udp4", Addr: in, Local: "127.0.0.82"}, 300e6, &res)
	if len(res.Replies) != 0 || res.Errors["timeout"] != 1 {
		t.Errorf("new inbound flow to a default-deny workload: replies %v errors %v, want a timeout", res.Replies, res.Errors)
	}
	if _, denied := e.verdicts(HookIngress); denied != deniedBefore+1 {
		t.Errorf("ingress denied %d -> %d, want one more", deniedBefore, denied)
	}
}

// TestPolicyUDPServerReplies: a server in the cgroup answers (sendto on an
// unconnected socket) a client whose identity is default deny: the reply
// goes to a peer that reached the socket, so sendmsg does not refuse it.
func TestPolicyUDPServerReplies(t *testing.T) {
	e := newEnv(t)
	const server, client = 900, 901
	e.putWorkload("127.0.0.91", server, 0, true)
	e.putWorkload("127.0.0.92", client, 0, false)
	e.putPolicy(client, 999, 0, 0, VerdictAllow) // client is default deny
	port := freePort(t, "udp4", "127.0.0.91")
	addr := fmt.Sprintf("127.0.0.91:%d", port)
	e.server(e.cgroup, childReq{Mode: "serve-udp-name", Net: "udp4", Addr: addr})
	res := childResult{Replies: map[string]int{}, Peers: map[string]int{}, Errors: map[string]int{}}
	for i := 0; i < 5; i++ {
		dialOnce(childReq{Net: "udp4", Addr: addr, Local: "127.0.0.92"}, 500e6, &res)
	}
	if res.Replies[addr] != 5 {
		t.Errorf("server replies: %v errors %v, want 5", res.Replies, res.Errors)
	}
	if _, denied := e.verdicts(HookSendmsg); denied != 0 {
		t.Errorf("sendmsg denied %d replies", denied)
	}
}

// TestPolicyNestedCgroup: a kubelet runs a pod's processes in container
// cgroups below the pod's cgroup, which is the one registered; the client is
// identified by its nearest registered ancestor (at connect4/6 and
// sendmsg4), while a process in an unrelated cgroup is not taken for the pod.
func TestPolicyNestedCgroup(t *testing.T) {
	e := newEnv(t)
	const pod, sidecar, server = 210, 211, 310
	_, podID := e.subCgroup("pod")
	ctr, _ := e.subCgroup("pod/cri-containerd-1.scope")
	e.subCgroup("pod/a")
	e.subCgroup("pod/a/b")
	deep, _ := e.subCgroup("pod/a/b/c")
	own, ownID := e.subCgroup("pod/own") // registered itself: nearest wins
	e.subCgroup("other")
	other, _ := e.subCgroup("other/cri-containerd-2.scope")
	e.putCgroupWorkload(podID, pod, 0)
	e.putCgroupWorkload(ownID, sidecar, 0)

	tcp4 := fmt.Sprintf("127.0.0.22:%d", freePort(t, "tcp4", "127.0.0.22"))
	tcp6 := fmt.Sprintf("[::1]:%d", freePort(t, "tcp6", "::1"))
	udp4 := fmt.Sprintf("127.0.0.22:%d", freePort(t, "udp4", "127.0.0.22"))
	nameServers(t, "tcp4", tcp4)
	nameServers(t, "tcp6", tcp6)
	nameServers(t, "udp4", udp4)
	e.putWorkload("127.0.0.22", server, 0, true)
	e.putWorkload("::1", server, 0, true)

	type flow struct {
		name, cgroup, mode, net, addr string
		allow                         bool
	}
	phases := []struct {
		name   string
		policy func()
		flows  []flow
	}{
		{"deny from the pod", func() { e.putPolicy(server, pod, 0, 0, VerdictDeny) }, []flow{
			{"container/tcp4", ctr, "dial", "tcp4", tcp4, false},
			{"container/tcp6", ctr, "dial", "tcp6", tcp6, false},
			{"container/udp4-sendto", ctr, "udp-sendto", "udp4", udp4, false},
			{"three levels below", deep, "dial", "tcp4", tcp4, false},
			{"registered child", own, "dial", "tcp4", tcp4, true},
			{"unrelated cgroup", other, "dial", "tcp4", tcp4, true},
		}},
		{"allow from the pod only", func() {
			k := MeshPolicyKey{DstIdentity: server, SrcIdentity: pod}
			if err := e.objs.Policy.Delete(&k); err != nil {
				t.Fatal(err)
			}
			e.putPolicy(server, pod, 0, 0, VerdictAllow)
		}, []flow{
			{"container/tcp4", ctr, "dial", "tcp4", tcp4, true},
			{"container/tcp6", ctr, "dial", "tcp6", tcp6, true},
			{"three levels below", deep, "dial", "tcp4", tcp4, true},
			{"registered child", own, "dial", "tcp4", tcp4, false},
			{"unrelated cgroup", other, "dial", "tcp4", tcp4, false},
		}},
	}
	for _, p := range phases {
		p.policy()
		for _, f := range p.flows {
			t.Run(p.name+"/"+f.name, func(t *testing.T) {
				const n = 3
				res := e.client(f.cgroup, childReq{Mode: f.mode, Net: f.net, Addr: f.addr, N: n})
				if f.allow && res.Replies[f.addr] != n {
					t.Errorf("want %d replies, got replies %v errors %v", n, res.Replies, res.Errors)
				}
				if !f.allow && res.Errors["EPERM"] != n {
					t.Errorf("want %d EPERM, got replies %v errors %v", n, res.Replies, res.Errors)
				}
			})
		}
	}
}
