package bpf

import (
	"fmt"
	"net/netip"
	"testing"
)

// TestRedirectOriginalDst: a connect to an L7 service from a workload goes
// to its namespace's proxy listener; the proxy (a child in the cgroup, as
// the node proxy's accepted socket is in the node's cgroup) reads the VIP
// with getsockopt(SO_ORIGINAL_DST); the client's getpeername shows the VIP.
func TestRedirectOriginalDst(t *testing.T) {
	e := newEnv(t)
	shopCg, shopID := e.subCgroup("shop")
	otherCg, _ := e.subCgroup("other")
	const shopNS = 7

	nsPort := freePort(t, "tcp4", "127.0.0.1")
	defPort := freePort(t, "tcp4", "127.0.0.1")
	e.server(e.cgroup, childReq{Mode: "serve-origdst", Net: "tcp4", Addr: fmt.Sprintf("127.0.0.1:%d", nsPort)})
	e.server(e.cgroup, childReq{Mode: "serve-origdst", Net: "tcp4", Addr: fmt.Sprintf("127.0.0.1:%d", defPort)})

	// The L7 service; its backends must not be used while redirected.
	e.putService("10.96.0.20", 80, ProtoTCP, defPort, []netip.AddrPort{netip.MustParseAddrPort("127.0.0.99:1")}, nil)
	e.putCgroupWorkload(shopID, 500, shopNS)
	put := func(ns uint32, port uint16) {
		r := Redirect(netip.MustParseAddr("127.0.0.1"), port)
		if err := e.objs.Redirects.Put(ns, &r); err != nil {
			t.Fatal(err)
		}
	}
	put(shopNS, nsPort)
	put(0, 0) // node default: the service's L7 proxy port

	tests := []struct {
		name, cgroup string
		wantOrig     string
	}{
		{"namespace listener", shopCg, fmt.Sprintf("orig=10.96.0.20:80 via=127.0.0.1:%d", nsPort)},
		{"node default listener", otherCg, fmt.Sprintf("orig=10.96.0.20:80 via=127.0.0.1:%d", defPort)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := e.client(tc.cgroup, childReq{Mode: "dial", Net: "tcp4", Addr: "10.96.0.20:80", N: 20})
			if len(res.Errors) != 0 {
				t.Fatalf("errors: %v", res.Errors)
			}
			if res.Replies[tc.wantOrig] != 20 {
				t.Errorf("proxy answered %v, want %q 20 times", res.Replies, tc.wantOrig)
			}
			if res.Peers["10.96.0.20:80"] != 20 {
				t.Errorf("getpeername showed %v, want the VIP", res.Peers)
			}
		})
	}
	if st := e.serviceStats("10.96.0.20", 80, ProtoTCP); st.Redirects != 40 || st.Connects != 0 {
		t.Errorf("counters %+v, want 40 redirects and no backend connects", st)
	}
}

// TestOriginalDstOnlyForRedirected: a plain accepted socket gets the
// kernel's answer (no conntrack here: an error), not a stale entry.
func TestOriginalDstOnlyForRedirected(t *testing.T) {
	e := newEnv(t)
	port := freePort(t, "tcp4", "127.0.0.1")
	e.server(e.cgroup, childReq{Mode: "serve-origdst", Net: "tcp4", Addr: fmt.Sprintf("127.0.0.1:%d", port)})
	res := e.client(e.cgroup, childReq{Mode: "dial", Net: "tcp4", Addr: fmt.Sprintf("127.0.0.1:%d", port), N: 1})
	for r := range res.Replies {
		if len(r) < 9 || r[:9] != "orig=err:" {
			t.Errorf("direct connection got original destination %q, want an error", r)
		}
	}
	if len(res.Replies) != 1 {
		t.Errorf("replies %v errors %v", res.Replies, res.Errors)
	}
}
