package envoy_test

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/nodemesh/nodemesh/nodeagent"
	"github.com/nodemesh/nodemesh/nodeagent/ads"
	"github.com/nodemesh/nodemesh/nodeagent/envoy"
)

// Example_meshAgent is how mesh-agent wires the node agent to the control
// plane: one connection, shared by the dataplane ADS client (kernel half)
// and the node Envoy's xDS socket. (Compiled, not run: it needs a control
// plane, a cgroup and bpffs.)
func Example_meshAgent() {
	ctx := context.Background()
	log := slog.Default()
	dp, err := nodeagent.Open(nodeagent.Config{Node: "node-a", CgroupPath: "/sys/fs/cgroup"})
	if err != nil {
		log.Error("open dataplane", "error", err)
		return
	}
	defer dp.Close()

	conn, err := ads.Dial("meshd.example:15010", ads.Backoff{})
	if err != nil {
		log.Error("dial", "error", err)
		return
	}
	defer conn.Close()
	client, err := ads.New(ads.Config{
		Node: "node-a", Conn: conn, Logger: log,
		Applier: ads.NewDataplaneApplier(dp, ads.StateConfig{Node: "node-a", ProxyIP: netip.MustParseAddr("10.77.0.1")}),
	})
	if err != nil {
		log.Error("ads client", "error", err)
		return
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var proxyErr error
	wg.Go(func() {
		proxyErr = envoy.RunNodeProxy(ctx, envoy.NodeProxyConfig{Node: "node-a", Dir: "/run/nodemesh", Upstream: conn, Logger: log})
		if proxyErr != nil {
			cancel()
		}
	})
	clientErr := client.Run(ctx)
	cancel()
	wg.Wait()
	if err := errors.Join(clientErr, proxyErr); err != nil {
		log.Error("agent", "error", err)
	}
}
