package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// TestCgroupLayout builds, for each case, the cgroup directories a kubelet
// (systemd or cgroupfs driver, each QoS class) or the e2e harness makes, and
// resolves one pod against them.
func TestCgroupLayout(t *testing.T) {
	const (
		uid = "8f14e45f-ceea-467f-a9d2-3c1e0b5a7d21"
		sd  = "8f14e45f_ceea_467f_a9d2_3c1e0b5a7d21" // uid as the systemd driver spells it
		// another pod's UID, on the same node
		other   = "11111111-2222-4333-8444-555555555555"
		otherSD = "11111111_2222_4333_8444_555555555555"
	)
	systemd := map[string]string{
		"burstable":  "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + sd + ".slice",
		"besteffort": "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + sd + ".slice",
		"guaranteed": "kubepods.slice/kubepods-pod" + sd + ".slice",
	}
	cgroupfs := map[string]string{
		"burstable":  "kubepods/burstable/pod" + uid,
		"besteffort": "kubepods/besteffort/pod" + uid,
		"guaranteed": "kubepods/pod" + uid,
	}
	// Every node has its QoS parents and pods of other UIDs.
	common := []string{
		"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + otherSD + ".slice",
		"kubepods.slice/kubepods-besteffort.slice",
		"kubepods/burstable/pod" + other,
		"kubepods/besteffort",
	}
	for _, tc := range []struct {
		name         string
		dirs         []string // made below the root, besides common
		files        []string // regular files made below the root
		ns, pod, uid string
		want         string // relative to the root; "" for not found
	}{
		{name: "systemd burstable", dirs: []string{systemd["burstable"]}, ns: "shop", pod: "web-0", uid: uid, want: systemd["burstable"]},
		{name: "systemd besteffort", dirs: []string{systemd["besteffort"]}, ns: "shop", pod: "web-0", uid: uid, want: systemd["besteffort"]},
		{name: "systemd guaranteed", dirs: []string{systemd["guaranteed"]}, ns: "shop", pod: "web-0", uid: uid, want: systemd["guaranteed"]},
		{name: "cgroupfs burstable", dirs: []string{cgroupfs["burstable"]}, ns: "shop", pod: "web-0", uid: uid, want: cgroupfs["burstable"]},
		{name: "cgroupfs besteffort", dirs: []string{cgroupfs["besteffort"]}, ns: "shop", pod: "web-0", uid: uid, want: cgroupfs["besteffort"]},
		{name: "cgroupfs guaranteed", dirs: []string{cgroupfs["guaranteed"]}, ns: "shop", pod: "web-0", uid: uid, want: cgroupfs["guaranteed"]},
		// A slice name keeps no dash of the UID (a dash nests slices), and
		// cgroupfs keeps the UID as it is.
		{name: "systemd with dashes", dirs: []string{"kubepods.slice/kubepods-pod" + uid + ".slice"}, ns: "shop", pod: "web-0", uid: uid},
		{name: "cgroupfs with underscores", dirs: []string{"kubepods/pod" + sd}, ns: "shop", pod: "web-0", uid: uid},
		{name: "kubelet before harness", dirs: []string{cgroupfs["besteffort"], "shop_web-0", "web-0"}, ns: "shop", pod: "web-0", uid: uid, want: cgroupfs["besteffort"]},
		{name: "harness namespace_pod", dirs: []string{"shop_web-0", "web-0"}, ns: "shop", pod: "web-0", uid: uid, want: "shop_web-0"},
		{name: "harness pod", dirs: []string{"web-0"}, ns: "shop", pod: "web-0", uid: uid, want: "web-0"},
		{name: "harness without uid", dirs: []string{systemd["burstable"], "shop_web-0"}, ns: "shop", pod: "web-0", want: "shop_web-0"},
		// A cgroup that holds others is no e2e pod: the kernel would take
		// every process below it for this pod.
		{name: "harness pod named like the kubelet's parent", ns: "shop", pod: "kubepods.slice", uid: uid},
		{name: "harness pod named like the cgroupfs parent", ns: "shop", pod: "kubepods"},
		{name: "harness pod named like a system slice", dirs: []string{"system.slice/containerd.service"}, ns: "shop", pod: "system.slice"},
		{name: "harness namespace_pod with a cgroup below", dirs: []string{"shop_web-0/x", "web-0"}, ns: "shop", pod: "web-0", uid: uid, want: "web-0"},
		{name: "missing pod", dirs: []string{"shop_db-0"}, ns: "shop", pod: "web-0", uid: uid},
		{name: "missing pod without uid", ns: "shop", pod: "web-0"},
		{name: "not a directory", files: []string{"kubepods/pod" + uid, "shop_web-0"}, ns: "shop", pod: "web-0", uid: uid},
		{name: "uid leaving root", dirs: []string{"kubepods/podx/y"}, ns: "shop", pod: "web-0", uid: "x/y"},
		{name: "uid dot-dot", dirs: []string{"shop_web-0"}, ns: "shop", pod: "web-0", uid: ".."},
		{name: "pod dot-dot", ns: "shop", pod: ".."},
		{name: "namespace dot-dot", dirs: []string{".._x"}, ns: "..", pod: "x"},
		{name: "pod with slash", dirs: []string{"shop_a/b"}, ns: "shop", pod: "a/b"},
		{name: "empty pod", dirs: []string{"shop_"}, ns: "shop"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for _, d := range append(common, tc.dirs...) {
				if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			for _, f := range tc.files {
				p := filepath.Join(root, f)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want := ""
			if tc.want != "" {
				want = filepath.Join(root, tc.want)
			}
			if got := CgroupLayout(root)(tc.ns, tc.pod, tc.uid); got != want {
				t.Errorf("CgroupLayout(%q, %q, %q) = %q, want %q", tc.ns, tc.pod, tc.uid, got, want)
			}
		})
	}
}
