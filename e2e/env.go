package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// BPFFS is where bpffs is (or gets) mounted.
const BPFFS = "/sys/fs/bpf"

// tools the harness runs.
var tools = []string{"ip", "nsenter"}

// RequireCluster skips t, naming the reason, when this machine cannot build a
// namespace cluster: not root, no `ip`/`nsenter`, or no cgroup v2 mount.
func RequireCluster(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("e2e: needs root to create network namespaces and cgroups")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("e2e: %s not on PATH (install iproute2 / util-linux): %v", tool, err)
		}
	}
	if _, err := CgroupMount(); err != nil {
		t.Skipf("e2e: %v", err)
	}
}

// RequireBPFFS skips t when bpffs is neither mounted at BPFFS nor mountable.
func RequireBPFFS(t testing.TB) {
	t.Helper()
	if err := ensureBPFFS(); err != nil {
		t.Skipf("e2e: no bpffs: %v", err)
	}
}

// ensureBPFFS mounts bpffs at BPFFS when nothing is mounted there.
func ensureBPFFS() error {
	var st unix.Statfs_t
	if err := unix.Statfs(BPFFS, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(BPFFS, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", BPFFS, err)
	}
	if err := unix.Mount("bpf", BPFFS, "bpf", 0, ""); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", BPFFS, err)
	}
	return nil
}

// CgroupMount returns where the cgroup v2 hierarchy is mounted (as
// `findmnt -t cgroup2` would), preferring /sys/fs/cgroup.
func CgroupMount() (string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	var found []string
	for _, line := range strings.Split(string(data), "\n") {
		// Fields: ... mountpoint(5th) ... " - " fstype source options.
		pre, post, ok := strings.Cut(line, " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		f := strings.Fields(pre)
		if len(f) >= 5 {
			found = append(found, f[4])
		}
	}
	for _, m := range found {
		if m == "/sys/fs/cgroup" {
			return m, nil
		}
	}
	if len(found) > 0 {
		return found[0], nil
	}
	return "", errors.New("no cgroup2 filesystem mounted")
}
