package nodeagent

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

// TestDataplaneContainerCgroup: as under a kubelet, the agent maps the pod's
// cgroup and the pod's process runs in a container cgroup below it; policy
// by the pod's identity applies to that process at connect, and not to a
// process in another pod's (unmapped) container cgroup.
func TestDataplaneContainerCgroup(t *testing.T) {
	env := newKernelEnv(t)
	qos := filepath.Join(env.Cgroup, "kubepods.slice", "kubepods-burstable.slice")
	pod := filepath.Join(qos, "kubepods-burstable-pod6b8f3c2a_1e4d_4a7b_9c5e_0f1a2b3c4d5e.slice")
	ctr := filepath.Join(pod, "cri-containerd-0123abcd.scope")
	other := filepath.Join(qos, "kubepods-burstable-pod00000000_0000_0000_0000_000000000000.slice", "cri-containerd-4567ef01.scope")
	for _, d := range []string{ctr, other} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, d := range []string{ctr, pod, other, filepath.Dir(other), qos, filepath.Dir(qos)} {
			if err := os.Remove(d); err != nil {
				t.Errorf("remove cgroup: %v", err)
			}
		}
	})
	dp, err := Open(Config{Node: "ctrcg", CgroupPath: env.Cgroup, PinDir: env.PinDir})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Uninstall()
	srv := netip.MustParseAddrPort(nameServer(t, "127.0.0.63:0"))
	state := State{
		Workloads: []Workload{
			{IP: netip.MustParseAddr("10.244.0.7"), Identity: 70, Namespace: "shop", Local: true, Cgroup: pod},
			{IP: srv.Addr(), Identity: 80, Namespace: "db", Local: true},
		},
		Policies: []PolicyRule{{DstIdentity: 80, SrcIdentity: 70, Verdict: Deny}},
	}
	if _, err := dp.Apply(context.Background(), state); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, cgroup string
		denied       bool
	}{
		{"container of the mapped pod", ctr, true},
		{"container of an unmapped pod", other, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := dialFrom(t, tc.cgroup, srv.String(), 5)
			if tc.denied && res.Errors["EPERM"] != 5 {
				t.Errorf("replies %v errors %v, want 5 EPERM", res.Replies, res.Errors)
			}
			if !tc.denied && (len(res.Errors) != 0 || res.Replies[srv.String()] != 5) {
				t.Errorf("replies %v errors %v, want 5 replies", res.Replies, res.Errors)
			}
		})
	}
}
