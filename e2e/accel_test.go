package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/nodeagent"
)

// TestDataplaneAcceleration: with same-node acceleration on, the bytes of
// a same-node TCP exchange skip the veth (sk_msg hands them socket to
// socket) and arrive intact; cross-node traffic is untouched; and a server
// that reads with splice(2) starves, which is why acceleration is opt-in
// per namespace and demands SpliceSafe.
func TestDataplaneAcceleration(t *testing.T) {
	c := NewCluster(t, Config{})
	agents := startAgents(t, c)
	startEchoes(t, c)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	client, local, remote, splicer := n1.Pods[0], n1.Pods[1], n2.Pods[0], n1.Pods[2]
	const splicePort = 9090
	if _, err := splicer.StartEcho(EchoConfig{TCPPorts: []int{splicePort}, Splice: true}); err != nil {
		t.Fatal(err)
	}
	vip := netip.MustParseAddr("10.78.0.50")
	plain := meshSpec{Services: []nodeagent.Service{{VIP: vip, Port: 80, Proto: nodeagent.TCP,
		Backends: []nodeagent.Backend{backend(local, echoTCP, 0)}}}}
	accel := plain
	accel.Accelerate = []nodeagent.Acceleration{{Namespace: "default", SpliceSafe: true}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	const conns, payload = 20, 64 << 10
	echoed := uint64(2 * conns * payload) // each payload crosses twice
	// exchange runs the payload exchanges and returns the bytes that
	// crossed server's veth meanwhile.
	exchange := func(t *testing.T, addr string, server *Pod) uint64 {
		t.Helper()
		before, err := server.VethBytes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		res, err := client.Connect(ctx, ClientConfig{Addr: addr, Count: conns, Payload: payload, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if res.OK != conns || res.Backends[server.Name] != conns {
			t.Fatalf("exchanges with %s: %+v", addr, res)
		}
		after, err := server.VethBytes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%d bytes of payload echoed, %d crossed %s's veth", echoed, after-before, server.Name)
		return after - before
	}

	t.Run("same-node/not-accelerated", func(t *testing.T) {
		applyMesh(t, c, agents, plain)
		if got := exchange(t, vip.String()+":80", local); got < echoed {
			t.Fatalf("%d bytes crossed the veth without acceleration, want at least %d", got, echoed)
		}
	})
	t.Run("same-node/accelerated", func(t *testing.T) {
		applyMesh(t, c, agents, accel)
		// Only handshakes, ACKs and FINs remain on the wire.
		if got := exchange(t, vip.String()+":80", local); got > echoed/10 {
			t.Fatalf("%d bytes crossed the veth with acceleration, want under %d", got, echoed/10)
		}
	})
	t.Run("cross-node/untouched", func(t *testing.T) {
		applyMesh(t, c, agents, accel)
		addr := fmt.Sprintf("%s:%d", remote.IP, echoTCP)
		if got := exchange(t, addr, remote); got < echoed {
			t.Fatalf("%d bytes crossed %s's veth, want at least %d", got, remote.Name, echoed)
		}
	})
	t.Run("splice-reader-starves", func(t *testing.T) {
		addr := fmt.Sprintf("%s:%d", splicer.IP, splicePort)
		applyMesh(t, c, agents, plain)
		res, err := client.Connect(ctx, ClientConfig{Addr: addr, Count: 3, Timeout: 5 * time.Second})
		if err != nil || res.OK != 3 {
			t.Fatalf("splice echo without acceleration: %+v %v", res, err)
		}
		applyMesh(t, c, agents, accel)
		res, err = client.Connect(ctx, ClientConfig{Addr: addr, Count: 3, Timeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if res.OK != 0 || res.Errors["timeout"] != 3 {
			t.Fatalf("splice echo with acceleration: %+v, want every echo to time out", res)
		}
	})
}
