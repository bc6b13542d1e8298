package agent

import (
	"os"
	"path/filepath"
	"strings"
)

// CgroupLayout is the default Config.PodCgroup: it finds a local pod's
// cgroup v2 directory under root (the cgroup v2 mount, or the directory the
// kubelet's cgroups are under) by trying, in order:
//
//  1. the kubelet's pod cgroup, named after the pod's UID, when uid is set:
//     with the systemd cgroup driver
//     kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice,
//     kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice
//     and kubepods.slice/kubepods-pod<uid>.slice (Guaranteed), where <uid>
//     has its dashes replaced by underscores (a dash in a slice name
//     separates its parents' names); with the cgroupfs driver
//     kubepods/burstable/pod<uid>, kubepods/besteffort/pod<uid> and
//     kubepods/pod<uid>, the UID as it is;
//  2. <root>/<namespace>_<pod>, then <root>/<pod>: the layout of the e2e
//     netns harness, whose pods have no kubelet. Such a directory counts
//     only if no cgroup is below it, as an e2e pod's: the kernel gives a
//     process in a cgroup below a mapped one that one's identity, so a pod
//     named after a cgroup that holds others (kubepods, system.slice) must
//     not take theirs.
//
// It returns the first candidate that is a directory, "" when none is. It
// looks at the file system on every call (at most eight Stats, one for a
// Burstable pod under systemd) and remembers nothing, so pods created after
// the agent started are found at the next resync and a pod recreated under
// the same name (new UID) is never given its predecessor's cgroup.
func CgroupLayout(root string) func(namespace, pod, uid string) string {
	return func(namespace, pod, uid string) string {
		if pod == "" || !validName(pod) || !validName(namespace) || !validName(uid) {
			return ""
		}
		byUID, byName := podCgroupCandidates(namespace, pod, uid)
		for _, name := range byUID {
			if dir := filepath.Join(root, name); isDir(dir) {
				return dir
			}
		}
		for _, name := range byName {
			if dir := filepath.Join(root, name); isDir(dir) && !hasSubdir(dir) {
				return dir
			}
		}
		return ""
	}
}

func isDir(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.IsDir()
}

// hasSubdir reports whether dir has a directory in it (or cannot be read).
func hasSubdir(dir string) bool {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return true
	}
	for _, e := range entries {
		if e.IsDir() {
			return true
		}
	}
	return false
}

// podCgroupCandidates lists the directories, relative to the cgroup root,
// where a pod's cgroup may be, most likely first: the kubelet's by UID,
// then the e2e harness's by name.
func podCgroupCandidates(namespace, pod, uid string) (byUID, byName []string) {
	if uid != "" {
		sd := strings.ReplaceAll(uid, "-", "_")
		byUID = append(byUID,
			// systemd driver (the kubeadm default since Kubernetes 1.22).
			"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"+sd+".slice",
			"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"+sd+".slice",
			"kubepods.slice/kubepods-pod"+sd+".slice",
			// cgroupfs driver.
			"kubepods/burstable/pod"+uid,
			"kubepods/besteffort/pod"+uid,
			"kubepods/pod"+uid,
		)
	}
	return byUID, []string{namespace + "_" + pod, pod}
}

// validName rejects names that would leave root ("..", "a/b"): pod and
// namespace names and pod UIDs come from the control plane.
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
