package agent

import (
	"os"
	"path/filepath"
)

// CgroupLayout is the default Config.PodCgroup: a local pod's cgroup is the
// directory <root>/<namespace>_<pod>, or <root>/<pod> when that one does not
// exist; "" when neither is a directory. It looks at the file system on
// every call, so pods created after the agent started are found at the next
// resync.
func CgroupLayout(root string) func(namespace, pod string) string {
	return func(namespace, pod string) string {
		if pod == "" || !validName(pod) || !validName(namespace) {
			return ""
		}
		for _, name := range []string{namespace + "_" + pod, pod} {
			dir := filepath.Join(root, name)
			if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
				return dir
			}
		}
		return ""
	}
}

// validName rejects names that would leave root ("..", "a/b"): pod and
// namespace names come from the control plane.
func validName(s string) bool {
	if s == "." || s == ".." {
		return false
	}
	for _, r := range s {
		if r == '/' || r == 0 {
			return false
		}
	}
	return true
}
