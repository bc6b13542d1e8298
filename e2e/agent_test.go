package e2e

import (
	"log/slog"
	"os"
	"testing"

	"github.com/nodemesh/nodemesh/nodeagent"
)

// agent is one node's data plane, as a node agent process would hold it.
type agent struct {
	node *Node
	cfg  nodeagent.Config
	dp   *nodeagent.Dataplane
}

// startAgents opens a Dataplane per node, attached to the node's cgroup
// subtree and pinned under /sys/fs/bpf/<prefix>-<node>; teardown
// uninstalls them (detach, unpin).
func startAgents(t *testing.T, c *Cluster) []*agent {
	t.Helper()
	RequireBPFFS(t)
	var agents []*agent
	for _, n := range c.Nodes {
		a := &agent{node: n, cfg: nodeagent.Config{
			Node:       n.Name,
			CgroupPath: n.Cgroup,
			PinDir:     c.PinDir(n),
			Logger:     testLogger(),
		}}
		dp, err := nodeagent.Open(a.cfg)
		if err != nil {
			t.Fatalf("open dataplane on %s: %v", n.Name, err)
		}
		a.dp = dp
		c.OnCleanup(func() {
			if err := a.dp.Uninstall(); err != nil {
				t.Logf("uninstall dataplane on %s: %v", n.Name, err)
			}
		})
		agents = append(agents, a)
	}
	return agents
}

// restart closes the Dataplane (pins stay: traffic keeps flowing) and opens
// a new one that adopts the pinned maps and swaps its programs into the
// pinned links.
func (a *agent) restart(t *testing.T) {
	t.Helper()
	if err := a.dp.Close(); err != nil {
		t.Fatalf("close dataplane on %s: %v", a.node.Name, err)
	}
	dp, err := nodeagent.Open(a.cfg)
	if err != nil {
		t.Fatalf("reopen dataplane on %s: %v", a.node.Name, err)
	}
	a.dp = dp
}

// testLogger shows the agents' warnings and errors on stderr (their info
// lines would drown the benchmark table).
func testLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}
