// Package e2e holds whole-system tests of nodemesh and the harness they run on:
// a small cluster built from network namespaces and cgroup v2 directories on
// one machine.
//
// It sits at the bottom of the pipeline (sources -> config -> translate -> xds
// -> nodeagent -> bpf / Envoy) and drives the real parts: node agents attach
// their programs to each node's cgroup subtree, and processes started in the
// pods send real traffic over veth pairs and a Linux bridge.
//
// Topology (all addresses live inside namespaces the harness creates; nothing
// is configured on the root namespace):
//
//	<prefix>-fab          fabric netns holding bridge br0
//	<prefix>-n<i>         node i: eth0 10.77.0.<i>/24 on br0, ip_forward on,
//	                      routes 10.77.<j>.0/24 via 10.77.0.<j> for other nodes
//	<prefix>-n<i>p<k>     pod k on node i: eth0 10.77.<i>.<10+k>/32, default
//	                      route via 10.77.<i>.1 (the node end of its veth)
//
// Service VIPs are taken from 10.78.0.0/16 and need no route: the socket load
// balancer rewrites them at connect time.
//
// Every pod has its own cgroup <cgroup2>/<prefix>/n<i>/p<k>; the node agent
// attaches to <cgroup2>/<prefix>/n<i>. Processes are placed in their cgroup at
// clone time (CLONE_INTO_CGROUP) and in their netns with nsenter (never
// `ip netns exec`, which remounts /sys). Helper programs (echo server,
// clients) are re-executions of the test binary; see RunHelper.
//
// Use:
//
//	c := e2e.NewCluster(t, e2e.Config{})            // 2 nodes x 3 pods; skips if not root etc.
//	srv := c.Nodes[1].Pods[0]
//	echo, _ := srv.StartEcho(e2e.EchoConfig{TCPPorts: []int{8080}})
//	res, _ := c.Nodes[0].Pods[0].Connect(ctx, e2e.ClientConfig{Addr: "10.78.0.10:80", Count: 1000})
//	// res.Backends: who answered; res.Peers: getpeername; res.Errors
//	st, _ := echo.Stats()                          // accepts, peers, SO_ORIGINAL_DST
//
// Pod.Start/Run and Node.Start/Run run any program in place; node agents
// attach to Node.Cgroup and pin under Cluster.PinDir(node).
//
// Everything is removed in t.Cleanup, and Sweep removes what runs that died
// left behind (their owner PID is recorded under /run/nodemesh-e2e).
package e2e
