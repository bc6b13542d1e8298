package e2e

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Config shapes a Cluster. The zero value builds 2 nodes with 3 pods each.
type Config struct {
	Nodes       int // default 2, at most 200
	PodsPerNode int // default 3, at most 200
}

// Validate reports sizes the address plan cannot hold.
func (c Config) Validate() error {
	if c.Nodes < 0 || c.Nodes > 200 {
		return fmt.Errorf("e2e config: Nodes %d out of range 1..200", c.Nodes)
	}
	if c.PodsPerNode < 0 || c.PodsPerNode > 200 {
		return fmt.Errorf("e2e config: PodsPerNode %d out of range 1..200", c.PodsPerNode)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Nodes == 0 {
		c.Nodes = 2
	}
	if c.PodsPerNode == 0 {
		c.PodsPerNode = 3
	}
	return c
}

// Cluster is a set of nodes on one bridge, each with its pods.
type Cluster struct {
	Prefix     string // unique per run, e.g. "nmt4k2x"; names every resource
	Fabric     string // netns holding the bridge
	CgroupRoot string // <cgroup2>/<Prefix>
	RunDir     string // scratch directory (control sockets), removed at cleanup
	Nodes      []*Node

	t        testing.TB
	mu       sync.Mutex
	procs    []*Proc
	cleanups []func()
}

// Node is a network namespace on the bridge that routes for its pods.
type Node struct {
	Name    string       // "n1"
	Index   int          // 1-based
	IP      netip.Addr   // 10.77.0.<Index>
	PodCIDR netip.Prefix // 10.77.<Index>.0/24
	Gateway netip.Addr   // 10.77.<Index>.1, the node end of every pod veth
	Netns   string
	Cgroup  string // the subtree a node agent attaches to
	Pods    []*Pod
	c       *Cluster
}

// Pod is a network namespace behind a veth pair into its node, with its own
// cgroup below the node's.
type Pod struct {
	Name   string // "n1p2"
	Node   *Node
	IP     netip.Addr
	Netns  string
	Cgroup string
}

// NewCluster builds a cluster and registers its removal with t.Cleanup. It
// skips t when the machine cannot run it (see RequireCluster). Leftovers of
// dead runs are swept first.
func NewCluster(t testing.TB, cfg Config) *Cluster {
	t.Helper()
	RequireCluster(t)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg = cfg.withDefaults()
	if err := Sweep(); err != nil {
		t.Logf("e2e: sweeping leftovers: %v", err)
	}
	mount, _ := CgroupMount()
	prefix := newPrefix()
	for tries := 0; claim(prefix) != nil; tries++ {
		if tries == 10 {
			t.Fatalf("e2e: cannot claim a run prefix in %s", ownerDir)
		}
		prefix = newPrefix()
	}
	c := &Cluster{Prefix: prefix, Fabric: prefix + "-fab", CgroupRoot: filepath.Join(mount, prefix), t: t}
	t.Cleanup(c.teardown)
	dir, err := os.MkdirTemp("", prefix+"-")
	if err != nil {
		t.Fatal(err)
	}
	c.RunDir = dir
	ctx := context.Background()
	if err := c.build(ctx, cfg); err != nil {
		t.Fatalf("build cluster %s: %v", prefix, err)
	}
	return c
}

// newPrefix returns "nmt" and four random lowercase letters or digits.
func newPrefix() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return prefixFamily + string(b)
}

func (c *Cluster) build(ctx context.Context, cfg Config) error {
	if err := makeCgroup(c.CgroupRoot); err != nil {
		return err
	}
	if err := makeCgroup(filepath.Join(c.CgroupRoot, "unmeshed")); err != nil {
		return err
	}
	if err := addNetns(ctx, c.Fabric); err != nil {
		return err
	}
	if err := ipBatch(ctx, c.Fabric, "link add br0 type bridge", "link set br0 up"); err != nil {
		return err
	}
	for i := 1; i <= cfg.Nodes; i++ {
		n, err := c.addNode(ctx, i, cfg.Nodes)
		if err != nil {
			return err
		}
		c.Nodes = append(c.Nodes, n)
		for k := 1; k <= cfg.PodsPerNode; k++ {
			p, err := n.addPod(ctx, k)
			if err != nil {
				return err
			}
			n.Pods = append(n.Pods, p)
		}
	}
	return nil
}

func (c *Cluster) addNode(ctx context.Context, i, nodes int) (*Node, error) {
	n := &Node{
		Name:    fmt.Sprintf("n%d", i),
		Index:   i,
		IP:      netip.AddrFrom4([4]byte{10, 77, 0, byte(i)}),
		PodCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 77, byte(i), 0}), 24),
		Gateway: netip.AddrFrom4([4]byte{10, 77, byte(i), 1}),
		c:       c,
	}
	n.Netns = c.Prefix + "-" + n.Name
	n.Cgroup = filepath.Join(c.CgroupRoot, n.Name)
	if err := makeCgroup(filepath.Join(n.Cgroup, "host")); err != nil {
		return nil, err
	}
	if err := addNetns(ctx, n.Netns); err != nil {
		return nil, err
	}
	cmds := []string{
		fmt.Sprintf("link add %s type veth peer name eth0 netns %s", n.Name, n.Netns),
		fmt.Sprintf("link set %s master br0 up", n.Name),
	}
	if err := ipBatch(ctx, c.Fabric, cmds...); err != nil {
		return nil, err
	}
	cmds = []string{
		fmt.Sprintf("addr add %s/24 dev eth0", n.IP),
		"link set eth0 up",
	}
	for j := 1; j <= nodes; j++ {
		if j != i {
			cmds = append(cmds, fmt.Sprintf("route add 10.77.%d.0/24 via 10.77.0.%d dev eth0", j, j))
		}
	}
	if err := ipBatch(ctx, n.Netns, cmds...); err != nil {
		return nil, err
	}
	return n, sysctlIn(ctx, n.Netns, "net.ipv4.ip_forward=1")
}

func (n *Node) addPod(ctx context.Context, k int) (*Pod, error) {
	p := &Pod{
		Name: fmt.Sprintf("%sp%d", n.Name, k),
		Node: n,
		IP:   netip.AddrFrom4([4]byte{10, 77, byte(n.Index), byte(10 + k)}),
	}
	p.Netns = n.c.Prefix + "-" + p.Name
	p.Cgroup = filepath.Join(n.Cgroup, p.Name)
	if err := makeCgroup(p.Cgroup); err != nil {
		return nil, err
	}
	if err := addNetns(ctx, p.Netns); err != nil {
		return nil, err
	}
	// The node end carries the gateway address (the same /32 on every pod
	// veth, as routed CNIs do) and a host route to the pod.
	if err := ipBatch(ctx, n.Netns,
		fmt.Sprintf("link add %s type veth peer name eth0 netns %s", p.Name, p.Netns),
		fmt.Sprintf("addr add %s/32 dev %s", n.Gateway, p.Name),
		fmt.Sprintf("link set %s up", p.Name),
		fmt.Sprintf("route add %s/32 dev %s", p.IP, p.Name),
	); err != nil {
		return nil, err
	}
	return p, ipBatch(ctx, p.Netns,
		fmt.Sprintf("addr add %s/32 dev eth0", p.IP),
		"link set eth0 up",
		fmt.Sprintf("route add %s/32 dev eth0 scope link", n.Gateway),
		fmt.Sprintf("route add default via %s dev eth0", n.Gateway),
	)
}

// VethBytes returns the bytes that crossed the pod's veth so far (received
// plus sent, counted on the node's end).
func (p *Pod) VethBytes(ctx context.Context) (uint64, error) {
	out, err := run(ctx, "ip", "-n", p.Node.Netns, "-s", "-j", "link", "show", "dev", p.Name)
	if err != nil {
		return 0, err
	}
	var links []struct {
		Stats64 struct {
			RX, TX struct{ Bytes uint64 }
		} `json:"stats64"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		return 0, fmt.Errorf("veth %s stats: %q: %v", p.Name, out, err)
	}
	return links[0].Stats64.RX.Bytes + links[0].Stats64.TX.Bytes, nil
}

// Pods returns every pod of every node, node by node.
func (c *Cluster) Pods() []*Pod {
	var all []*Pod
	for _, n := range c.Nodes {
		all = append(all, n.Pods...)
	}
	return all
}

// PinDir returns the bpffs directory a node agent of this run uses for node
// n: /sys/fs/bpf/<prefix>-<node>. It is removed at cleanup.
func (c *Cluster) PinDir(n *Node) string {
	return filepath.Join(BPFFS, c.Prefix+"-"+n.Name)
}

// OnCleanup registers f to run at teardown after processes are killed and
// before namespaces, cgroups and pins are removed (e.g. closing a node
// agent's Dataplane).
func (c *Cluster) OnCleanup(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cleanups = append(c.cleanups, f)
}

func (c *Cluster) track(p *Proc) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.procs = append(c.procs, p)
}

// teardown removes everything the cluster made, logging (not failing on)
// what it cannot remove.
func (c *Cluster) teardown() {
	c.mu.Lock()
	procs, cleanups := c.procs, c.cleanups
	c.mu.Unlock()
	for _, p := range procs {
		p.Stop(time.Second)
		if c.t.Failed() {
			if out := strings.TrimSpace(p.Output()); out != "" {
				c.t.Logf("output of %q:\n%s", strings.Join(p.Cmd.Args, " "), tail(out, 2000))
			}
		}
	}
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
	if c.RunDir != "" {
		_ = os.RemoveAll(c.RunDir)
	}
	if err := removeRun(c.Prefix); err != nil {
		c.t.Logf("e2e teardown %s: %v", c.Prefix, err)
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// host is where node-level processes run: the node netns, in a cgroup inside
// the node's subtree.
func (n *Node) host() Place {
	return Place{Netns: n.Netns, Cgroup: filepath.Join(n.Cgroup, "host")}
}

func (p *Pod) place() Place { return Place{Netns: p.Netns, Cgroup: p.Cgroup} }

// Start starts argv in the pod's netns and cgroup; it is killed at cleanup.
func (p *Pod) Start(argv ...string) (*Proc, error) {
	return p.Node.c.start(p.place(), nil, argv...)
}

// Run runs argv in the pod's netns and cgroup and returns its stdout.
func (p *Pod) Run(ctx context.Context, argv ...string) ([]byte, error) {
	return p.place().run(ctx, nil, argv...)
}

// unmeshed is the pod's netns with a cgroup outside every node subtree: no
// socket hook of a node agent sees its processes, as for a process the
// agent does not manage or a packet from outside the node.
func (p *Pod) unmeshed() Place {
	return Place{Netns: p.Netns, Cgroup: filepath.Join(p.Node.c.CgroupRoot, "unmeshed")}
}

// Start starts argv in the node's netns, in the cgroup <node>/host (inside
// the subtree the node agent attaches to); it is killed at cleanup.
func (n *Node) Start(argv ...string) (*Proc, error) {
	return n.c.start(n.host(), nil, argv...)
}

// Run runs argv in the node's netns and host cgroup and returns its stdout.
func (n *Node) Run(ctx context.Context, argv ...string) ([]byte, error) {
	return n.host().run(ctx, nil, argv...)
}

func (c *Cluster) start(pl Place, env []string, argv ...string) (*Proc, error) {
	p, err := pl.start(env, argv...)
	if err != nil {
		return nil, err
	}
	c.track(p)
	return p, nil
}
