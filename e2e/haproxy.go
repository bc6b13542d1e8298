package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// haproxyConfig is a single TCP hop: one listener, one upstream. One thread,
// as a sidecar usually gets about one core.
const haproxyConfig = `global
	nbthread 1
	maxconn 4096
defaults
	mode tcp
	timeout connect 5s
	timeout client 120s
	timeout server 120s
listen hop
	bind %s
	server upstream %s
`

// StartHAProxy starts haproxy in the pod as a TCP proxy from listen
// ("ip:port") to upstream ("ip:port"), e.g. a sidecar.
func (p *Pod) StartHAProxy(name, listen, upstream string) (*Proc, error) {
	return p.Node.c.startHAProxy(p.place(), name, listen, upstream)
}

// StartHAProxy starts haproxy in the node netns (host cgroup), e.g. as the
// shared node proxy.
func (n *Node) StartHAProxy(name, listen, upstream string) (*Proc, error) {
	return n.c.startHAProxy(n.host(), name, listen, upstream)
}

func (c *Cluster) startHAProxy(pl Place, name, listen, upstream string) (*Proc, error) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		return nil, fmt.Errorf("haproxy not installed (apt-get install -y haproxy): %w", err)
	}
	cfg := filepath.Join(c.RunDir, name+".haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(haproxyConfig, listen, upstream)), 0o644); err != nil {
		return nil, fmt.Errorf("write haproxy config: %w", err)
	}
	// -db: stay in the foreground; -W not needed for a single process.
	return c.start(pl, nil, bin, "-db", "-f", cfg)
}
