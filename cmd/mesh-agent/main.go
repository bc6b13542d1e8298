// Command mesh-agent is the nodemesh node agent. With --state it programs
// the node's eBPF data plane from a YAML file of nodeagent.State, and
// re-applies it whenever the file changes. SIGTERM/SIGINT exit and leave the
// pinned programs and maps in place, so traffic keeps flowing.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nodemesh/nodemesh/nodeagent"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "mesh-agent:", err)
		os.Exit(1)
	}
}

func run() error {
	node := flag.String("node", "", "node name (required)")
	state := flag.String("state", "", "YAML file with the desired dataplane state (required)")
	cgroup := flag.String("cgroup", "", "cgroup v2 directory to attach to (default: the cgroup v2 mount, i.e. every process of the node)")
	pinDir := flag.String("pin-dir", "", "bpffs directory for pins (default "+nodeagent.DefaultPinRoot+"/<node>)")
	interval := flag.Duration("interval", time.Second, "how often the state file is checked for changes")
	uninstall := flag.Bool("uninstall", false, "detach the programs, remove the pins and exit")
	flag.Parse()
	if *node == "" || (*state == "" && !*uninstall) {
		flag.Usage()
		return fmt.Errorf("--node and --state are required")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if *cgroup == "" {
		mount, err := nodeagent.CgroupV2Mount()
		if err != nil {
			return err
		}
		*cgroup = mount
	}
	dp, err := nodeagent.Open(nodeagent.Config{Node: *node, CgroupPath: *cgroup, PinDir: *pinDir, Logger: log})
	if err != nil {
		return err
	}
	if *uninstall {
		return dp.Uninstall()
	}
	defer dp.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err = nodeagent.WatchStateFile(ctx, nodeagent.WatchConfig{Path: *state, Interval: *interval, Logger: log}, dp)
	log.Info("exiting; pinned programs and maps stay attached")
	return err
}
