package bpf

import (
	"fmt"
	"math"
	"net/netip"
	"testing"
)

func TestLoadBalanceTCP(t *testing.T) {
	e := newEnv(t)
	port := freePort(t, "tcp4", "127.0.0.11")
	backends := []netip.AddrPort{
		netip.MustParseAddrPort(fmt.Sprintf("127.0.0.11:%d", port)),
		netip.MustParseAddrPort(fmt.Sprintf("127.0.0.12:%d", port)),
		netip.MustParseAddrPort(fmt.Sprintf("127.0.0.13:%d", port)),
	}
	for _, b := range backends {
		nameServers(t, "tcp4", b.String())
	}
	tests := []struct {
		name    string
		vip     string
		weights []uint32 // nil: even
	}{
		{"weighted 50/30/20", "10.96.0.10", []uint32{50, 30, 20}},
		{"weighted 0/90/10", "10.96.0.11", []uint32{0, 90, 10}},
		{"even", "10.96.0.12", nil},
	}
	const n = 2000
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e.putService(tc.vip, 80, ProtoTCP, 0, backends, tc.weights)
			vip := tc.vip + ":80"
			res := e.client(e.cgroup, childReq{Mode: "dial", Net: "tcp4", Addr: vip, N: n})
			if len(res.Errors) != 0 {
				t.Fatalf("errors: %v", res.Errors)
			}
			if res.Peers[vip] != n {
				t.Errorf("getpeername showed %v, want %s for all %d connects", res.Peers, vip, n)
			}
			var total uint32
			for _, w := range tc.weights {
				total += w
			}
			for i, b := range backends {
				want := 1.0 / float64(len(backends))
				if tc.weights != nil {
					want = float64(tc.weights[i]) / float64(total)
				}
				got := float64(res.Replies[b.String()]) / n
				t.Logf("%s: %.3f (want %.3f)", b, got, want)
				if want == 0 && got != 0 {
					t.Errorf("backend %s of weight 0 got %.3f of connects, want none", b, got)
				} else if math.Abs(got-want) > 0.04 {
					t.Errorf("backend %s got %.3f of connects, want %.3f +- 0.04", b, got, want)
				}
			}
			if st := e.serviceStats(tc.vip, 80, ProtoTCP); st.Connects != n {
				t.Errorf("service counter connects = %d, want %d", st.Connects, n)
			}
		})
	}
}

func TestLoadBalanceUDP(t *testing.T) {
	e := newEnv(t)
	port := freePort(t, "udp4", "127.0.0.11")
	backends := []netip.AddrPort{
		netip.MustParseAddrPort(fmt.Sprintf("127.0.0.11:%d", port)),
		netip.MustParseAddrPort(fmt.Sprintf("127.0.0.12:%d", port)),
	}
	for _, b := range backends {
		nameServers(t, "udp4", b.String())
	}
	e.putService("10.96.0.53", 53, ProtoUDP, 0, backends, []uint32{75, 25})
	const vip = "10.96.0.53:53"
	const n = 400

	t.Run("unconnected sendto/recvfrom", func(t *testing.T) {
		res := e.client(e.cgroup, childReq{Mode: "udp-sendto", Net: "udp4", Addr: vip, N: n})
		if len(res.Errors) != 0 {
			t.Fatalf("errors: %v", res.Errors)
		}
		if res.Peers[vip] != n {
			t.Errorf("recvmsg showed sources %v, want %s for all %d", res.Peers, vip, n)
		}
		got := float64(res.Replies[backends[0].String()]) / n
		if math.Abs(got-0.75) > 0.07 {
			t.Errorf("first backend got %.3f of datagrams, want 0.75 +- 0.07 (%v)", got, res.Replies)
		}
	})
	t.Run("connected", func(t *testing.T) {
		res := e.client(e.cgroup, childReq{Mode: "dial", Net: "udp4", Addr: vip, N: 50})
		if len(res.Errors) != 0 {
			t.Fatalf("errors: %v", res.Errors)
		}
		if res.Peers[vip] != 50 {
			t.Errorf("getpeername showed %v, want %s", res.Peers, vip)
		}
		if res.Replies[backends[0].String()]+res.Replies[backends[1].String()] != 50 {
			t.Errorf("replies %v not all from backends", res.Replies)
		}
	})
	if st := e.serviceStats("10.96.0.53", 53, ProtoUDP); st.Connects != n+50 {
		t.Errorf("service counter connects = %d, want %d", st.Connects, n+50)
	}
}

// TestLoadBalanceIPv6 covers connect6, getpeername6, sendmsg6 and
// recvmsg6 against the IPv6 loopback.
func TestLoadBalanceIPv6(t *testing.T) {
	e := newEnv(t)
	tcpPort := freePort(t, "tcp6", "::1")
	udpPort := freePort(t, "udp6", "::1")
	tcpBackend := netip.AddrPortFrom(netip.MustParseAddr("::1"), tcpPort)
	udpBackend := netip.AddrPortFrom(netip.MustParseAddr("::1"), udpPort)
	nameServers(t, "tcp6", tcpBackend.String())
	nameServers(t, "udp6", udpBackend.String())
	e.putService("fd00::10", 80, ProtoTCP, 0, []netip.AddrPort{tcpBackend}, nil)
	e.putService("fd00::53", 53, ProtoUDP, 0, []netip.AddrPort{udpBackend}, nil)

	res := e.client(e.cgroup, childReq{Mode: "dial", Net: "tcp6", Addr: "[fd00::10]:80", N: 20})
	if len(res.Errors) != 0 || res.Replies[tcpBackend.String()] != 20 || res.Peers["[fd00::10]:80"] != 20 {
		t.Errorf("tcp6: replies %v peers %v errors %v, want all from %s shown as [fd00::10]:80", res.Replies, res.Peers, res.Errors, tcpBackend)
	}
	res = e.client(e.cgroup, childReq{Mode: "udp-sendto", Net: "udp6", Addr: "[fd00::53]:53", N: 20})
	if len(res.Errors) != 0 || res.Replies[udpBackend.String()] != 20 || res.Peers["[fd00::53]:53"] != 20 {
		t.Errorf("udp6: replies %v peers %v errors %v, want all from %s shown as [fd00::53]:53", res.Replies, res.Peers, res.Errors, udpBackend)
	}
}

func TestNoBackendCounted(t *testing.T) {
	e := newEnv(t)
	e.putService("10.96.0.99", 80, ProtoTCP, 0, nil, nil)
	res := e.client(e.cgroup, childReq{Mode: "dial", Net: "tcp4", Addr: "10.96.0.99:80", N: 3, TimeoutMS: 200})
	if len(res.Replies) != 0 {
		t.Errorf("a service without backends answered: %v", res.Replies)
	}
	if st := e.serviceStats("10.96.0.99", 80, ProtoTCP); st.NoBackend != 3 {
		t.Errorf("no_backend = %d, want 3", st.NoBackend)
	}
}
