package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// netnsDir is where `ip netns add` bind-mounts named namespaces.
const netnsDir = "/run/netns"

// NetnsPath returns the bind-mount path of the named network namespace, for
// nsenter --net= or setns.
func NetnsPath(name string) string { return filepath.Join(netnsDir, name) }

// run runs a command with a deadline and returns an error carrying its
// output when it fails.
func run(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// ipIn runs `ip -n ns args...` (ns "" means the current namespace).
func ipIn(ctx context.Context, ns string, args ...string) error {
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	_, err := run(ctx, "ip", args...)
	return err
}

// ipBatch runs several `ip` commands in namespace ns, stopping at the first
// failure.
func ipBatch(ctx context.Context, ns string, cmds ...string) error {
	for _, c := range cmds {
		if err := ipIn(ctx, ns, strings.Fields(c)...); err != nil {
			return err
		}
	}
	return nil
}

// addNetns creates a named network namespace with its loopback up.
func addNetns(ctx context.Context, name string) error {
	if err := ipIn(ctx, "", "netns", "add", name); err != nil {
		return err
	}
	return ipIn(ctx, name, "link", "set", "lo", "up")
}

// delNetns deletes a named network namespace; a missing one is not an error.
// The kernel frees the namespace asynchronously once its last user is gone.
func delNetns(ctx context.Context, name string) error {
	if _, err := os.Stat(NetnsPath(name)); os.IsNotExist(err) {
		return nil
	}
	return ipIn(ctx, "", "netns", "delete", name)
}

// sysctlIn sets sysctl key=value inside namespace ns (net.* keys are per
// network namespace).
func sysctlIn(ctx context.Context, ns, kv string) error {
	_, err := run(ctx, "nsenter", "--net="+NetnsPath(ns), "--", "sysctl", "-qw", kv)
	return err
}

// listNetns returns the names of all named network namespaces.
func listNetns() ([]string, error) {
	ents, err := os.ReadDir(netnsDir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", netnsDir, err)
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}
