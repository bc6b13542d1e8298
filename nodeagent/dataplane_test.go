package nodeagent

import (
	"context"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func sampleState() State {
	return State{
		Services: []Service{
			{VIP: netip.MustParseAddr("10.96.0.10"), Port: 80, Proto: TCP, Backends: []Backend{
				{IP: netip.MustParseAddr("127.0.0.11"), Port: 8080, Weight: 80},
				{IP: netip.MustParseAddr("127.0.0.12"), Port: 8080, Weight: 20},
			}},
			{VIP: netip.MustParseAddr("10.96.0.11"), Port: 53, Proto: UDP, Backends: []Backend{
				{IP: netip.MustParseAddr("127.0.0.11"), Port: 5353},
			}},
			{VIP: netip.MustParseAddr("fd00::10"), Port: 80, Proto: TCP, L7ProxyPort: 15001, Backends: []Backend{
				{IP: netip.MustParseAddr("fd00::1:2"), Port: 8080},
			}},
		},
		Workloads: []Workload{
			{IP: netip.MustParseAddr("127.0.0.11"), Identity: 100, Namespace: "shop", Local: true},
			{IP: netip.MustParseAddr("127.0.0.12"), Identity: 101, Namespace: "shop"},
		},
		Policies: []PolicyRule{
			{DstIdentity: 100, SrcIdentity: 101, Port: 8080, Proto: TCP, Verdict: Allow},
			{DstIdentity: 101, Verdict: Deny},
		},
		Redirects:  []Redirect{{Namespace: "shop", ProxyIP: netip.MustParseAddr("127.0.0.1"), ProxyPort: 15001}},
		Accelerate: []Acceleration{{Namespace: "shop", SpliceSafe: true}},
	}
}

func TestDataplaneApplyDumpAdopt(t *testing.T) {
	env := newKernelEnv(t)
	cfg := Config{Node: "n1", CgroupPath: env.Cgroup, PinDir: env.PinDir}
	dp, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	want := sampleState()
	st, err := dp.Apply(ctx, want)
	if err != nil {
		t.Fatal(err)
	}
	if st.Puts == 0 || st.Services != 3 || st.Backends != 4 {
		t.Fatalf("first apply: %+v", st)
	}
	st, err = dp.Apply(ctx, want)
	if err != nil {
		t.Fatal(err)
	}
	if st.Puts != 0 || st.Deletes != 0 {
		t.Fatalf("second apply wrote: %+v", st)
	}
	got, err := dp.Dump()
	if err != nil {
		t.Fatal(err)
	}
	opts := cmp.Options{cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmpopts.EquateEmpty()}
	if diff := cmp.Diff(want.Canonical(), got, opts); diff != "" {
		t.Fatalf("dump differs (-want +got):\n%s", diff)
	}
	dp.Close()

	dp2, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer dp2.Uninstall()
	got, err = dp2.Dump()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want.Canonical(), got, opts); diff != "" {
		t.Fatalf("adopted dump differs (-want +got):\n%s", diff)
	}
}

// TestDataplaneMovesToAnotherCgroup: pinned links attached to another
// cgroup are not adopted; the programs move to the configured cgroup.
func TestDataplaneMovesToAnotherCgroup(t *testing.T) {
	env := newKernelEnv(t)
	other := env.Cgroup + "-b"
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(other) })
	dp, err := Open(Config{Node: "move", CgroupPath: env.Cgroup, PinDir: env.PinDir})
	if err != nil {
		t.Fatal(err)
	}
	dp.Close()
	dp2, err := Open(Config{Node: "move", CgroupPath: other, PinDir: env.PinDir})
	if err != nil {
		t.Fatal(err)
	}
	defer dp2.Uninstall()
	for _, tc := range []struct {
		cgroup string
		want   int
	}{{env.Cgroup, 0}, {other, 1}} {
		n, err := attachedConnect4(tc.cgroup)
		if err != nil {
			t.Fatal(err)
		}
		if n != tc.want {
			t.Errorf("%s: %d connect4 programs attached, want %d", tc.cgroup, n, tc.want)
		}
	}
}

func attachedConnect4(cgroup string) (int, error) {
	f, err := os.Open(cgroup)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: ebpf.AttachCGroupInet4Connect})
	if err != nil {
		return 0, err
	}
	return len(res.Programs), nil
}

// TestKernelTableDeleteMissing: deleting a key that is not there succeeds.
func TestKernelTableDeleteMissing(t *testing.T) {
	env := newKernelEnv(t)
	dp, err := Open(Config{Node: "del", CgroupPath: env.Cgroup, PinDir: env.PinDir})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Uninstall()
	m := dp.Maps()
	if err := m.Backends.Delete(12345); err != nil {
		t.Errorf("delete missing backend: %v", err)
	}
	if _, ok, err := m.Backends.Lookup(12345); ok || err != nil {
		t.Errorf("lookup missing: ok=%v err=%v", ok, err)
	}
}
