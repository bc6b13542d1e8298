package nodeagent

import (
	"context"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf/link"
)

// TestDataplaneTraffic drives real connects through a Dataplane: load
// balancing, policy by the client's cgroup, counters; then the agent
// closes (pins stay: traffic keeps flowing), a new agent adopts the pins and
// swaps the programs in place (same links, new programs).
func TestDataplaneTraffic(t *testing.T) {
	env := newKernelEnv(t)
	cfg := Config{Node: "traffic", CgroupPath: env.Cgroup, PinDir: env.PinDir}
	dp, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b1 := netip.MustParseAddrPort(nameServer(t, "127.0.0.61:0"))
	b2 := netip.MustParseAddrPort(nameServer(t, "127.0.0.62:0"))
	state := State{
		Services: []Service{{VIP: netip.MustParseAddr("10.96.1.1"), Port: 80, Proto: TCP, Backends: []Backend{
			{IP: b1.Addr(), Port: b1.Port(), Weight: 3}, {IP: b2.Addr(), Port: b2.Port(), Weight: 1}}}},
		Workloads: []Workload{
			{IP: netip.MustParseAddr("10.244.0.5"), Identity: 50, Namespace: "client", Local: true, Cgroup: env.Cgroup},
			{IP: b1.Addr(), Identity: 60, Namespace: "server", Local: true},
			{IP: b2.Addr(), Identity: 60, Namespace: "server", Local: true},
		},
	}
	ctx := context.Background()
	if _, err := dp.Apply(ctx, state); err != nil {
		t.Fatal(err)
	}
	res := dialFrom(t, env.Cgroup, "10.96.1.1:80", 400)
	if len(res.Errors) != 0 || res.Replies[b1.String()]+res.Replies[b2.String()] != 400 {
		t.Fatalf("replies %v errors %v", res.Replies, res.Errors)
	}
	if f := float64(res.Replies[b1.String()]) / 400; f < 0.67 || f > 0.83 {
		t.Errorf("weight 3:1 gave %.2f to the first backend", f)
	}

	// Allow only identity 51 to reach 60: the client (50, by cgroup) is refused.
	state.Policies = []PolicyRule{{DstIdentity: 60, SrcIdentity: 51, Verdict: Allow}}
	if _, err := dp.Apply(ctx, state); err != nil {
		t.Fatal(err)
	}
	if res := dialFrom(t, env.Cgroup, "10.96.1.1:80", 5); res.Errors["EPERM"] != 5 {
		t.Fatalf("policy: replies %v errors %v, want 5 EPERM", res.Replies, res.Errors)
	}
	c, err := dp.Counters()
	if err != nil {
		t.Fatal(err)
	}
	key := ServiceKey{VIP: netip.MustParseAddr("10.96.1.1"), Port: 80, Proto: TCP}
	if c.Services[key].Connects != 405 || c.Connect.Denied != 5 || c.Connect.Allowed != 400 {
		t.Errorf("counters %+v %+v, want 405 connects, 400 allowed, 5 denied", c.Services[key], c.Connect)
	}
	state.Policies = nil
	if _, err := dp.Apply(ctx, state); err != nil {
		t.Fatal(err)
	}
	before := linkIDs(t, dp)
	dp.Close()

	// No agent running: the pinned programs keep serving.
	if res := dialFrom(t, env.Cgroup, "10.96.1.1:80", 20); len(res.Errors) != 0 {
		t.Fatalf("after Close: errors %v", res.Errors)
	}

	dp2, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer dp2.Uninstall()
	after := linkIDs(t, dp2)
	for prog, ids := range before {
		if after[prog].link != ids.link {
			t.Errorf("%s: link %d replaced by %d, want the pinned link adopted", prog, ids.link, after[prog].link)
		}
		if after[prog].prog == ids.prog {
			t.Errorf("%s: program %d not swapped", prog, ids.prog)
		}
	}
	if st, err := dp2.Apply(ctx, state); err != nil || st.Puts+st.Deletes != 0 {
		t.Errorf("apply after adoption: %+v %v, want no writes", st, err)
	}
	if res := dialFrom(t, env.Cgroup, "10.96.1.1:80", 20); len(res.Errors) != 0 {
		t.Fatalf("after swap: errors %v", res.Errors)
	}
}

type linkProg struct{ link, prog uint32 }

func linkIDs(t *testing.T, dp *Dataplane) map[string]linkProg {
	t.Helper()
	out := map[string]linkProg{}
	for _, name := range []string{"connect4", "sock_ops", "sk_msg_redirect", "ingress_policy"} {
		l, err := link.LoadPinnedLink(dp.cfg.PinDir+"/links/"+name, nil)
		if err != nil {
			t.Fatal(err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			t.Fatal(err)
		}
		out[name] = linkProg{link: uint32(info.ID), prog: uint32(info.Program)}
	}
	return out
}
