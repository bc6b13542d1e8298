package nodeagent

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// kernelEnv is what a kernel test needs: a cgroup of its own under the
// cgroup2 mount and a pin directory of its own on bpffs, both removed at the
// end. It skips (saying why) when not root or when cgroup2/bpffs are absent.
type kernelEnv struct {
	Cgroup string
	PinDir string
}

func newKernelEnv(t testing.TB) kernelEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping kernel test: needs root")
	}
	mount := cgroup2Mount()
	if mount == "" {
		t.Skip("skipping kernel test: no cgroup v2 mount found in /proc/mounts")
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs("/sys/fs/bpf", &fs); err != nil || fs.Type != 0xcafe4a11 {
		t.Skip("skipping kernel test: /sys/fs/bpf is not a bpffs (mount -t bpf bpf /sys/fs/bpf)")
	}
	b := make([]byte, 4)
	rand.Read(b)
	suffix := hex.EncodeToString(b)
	env := kernelEnv{
		Cgroup: filepath.Join(mount, "nodemesh-natest-"+suffix),
		PinDir: filepath.Join("/sys/fs/bpf", "nodemesh-natest-"+suffix),
	}
	if err := os.Mkdir(env.Cgroup, 0o755); err != nil {
		t.Fatalf("create test cgroup: %v", err)
	}
	t.Cleanup(func() {
		os.RemoveAll(env.PinDir)
		killCgroup(env.Cgroup)
		if err := os.Remove(env.Cgroup); err != nil {
			t.Errorf("remove test cgroup: %v", err)
		}
	})
	return env
}

func cgroup2Mount() string {
	data, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[2] == "cgroup2" {
			return f[1]
		}
	}
	return ""
}

func killCgroup(path string) {
	os.WriteFile(filepath.Join(path, "cgroup.kill"), []byte("1"), 0)
}

// inCgroup makes cmd start inside the cgroup.
func inCgroup(t testing.TB, cmd *exec.Cmd, cgroup string) {
	t.Helper()
	f, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
}
