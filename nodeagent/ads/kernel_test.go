package ads

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/nodeagent"
)

// openKernelDataplane opens the real kernel half (programs loaded, maps
// pinned, attached to a cgroup of this test's own) or skips saying why.
// Names carry the prefix nodemesh-adstest- and are removed at the end.
func openKernelDataplane(t *testing.T) *nodeagent.Dataplane {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping kernel test: needs root")
	}
	mount := ""
	if data, err := os.ReadFile("/proc/mounts"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) >= 3 && f[2] == "cgroup2" {
				mount = f[1]
				break
			}
		}
	}
	if mount == "" {
		t.Skip("skipping kernel test: no cgroup v2 mount in /proc/mounts")
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs("/sys/fs/bpf", &fs); err != nil || fs.Type != 0xcafe4a11 {
		t.Skip("skipping kernel test: /sys/fs/bpf is not a bpffs")
	}
	b := make([]byte, 4)
	rand.Read(b)
	name := "nodemesh-adstest-" + hex.EncodeToString(b)
	cg := filepath.Join(mount, name)
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatalf("creating test cgroup: %v", err)
	}
	pins := filepath.Join("/sys/fs/bpf", name)
	dp, err := nodeagent.Open(nodeagent.Config{Node: "node-a", CgroupPath: cg, PinDir: pins, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		os.Remove(cg)
		t.Fatalf("opening the kernel dataplane: %v", err)
	}
	t.Cleanup(func() {
		if err := dp.Uninstall(); err != nil {
			t.Errorf("uninstall: %v", err)
		}
		os.RemoveAll(pins)
		if err := os.Remove(cg); err != nil {
			t.Errorf("removing test cgroup: %v", err)
		}
	})
	return dp
}

// countingDataplane counts the Apply calls reaching the kernel.
type countingDataplane struct {
	Dataplane
	n atomic.Int64
}

func (c *countingDataplane) Apply(ctx context.Context, s nodeagent.State) (nodeagent.Stats, error) {
	c.n.Add(1)
	return c.Dataplane.Apply(ctx, s)
}

// TestClientProgramsKernel drives the real kernel half from a real ADS
// server: initial sync, a change, a rejected resource (NACK, maps
// untouched) and a control plane restart (no re-apply).
func TestClientProgramsKernel(t *testing.T) {
	dp := openKernelDataplane(t)
	cp := newControlPlane(t)
	res := meshResources()
	for n, r := range res.Listeners {
		cp.set(dataplanev1.NamespaceListenerType, n, r)
	}
	for n, r := range res.Workloads {
		cp.set(dataplanev1.WorkloadType, n, r)
	}
	for n, r := range res.Services {
		cp.set(dataplanev1.ServiceType, n, r)
	}
	for n, r := range res.Policies {
		cp.set(dataplanev1.PolicyType, n, r)
	}
	cfg := stateConfig()
	cfg.PodCgroup = nil // the test pods have no cgroups
	counting := &countingDataplane{Dataplane: dp}
	c := startClient(t, cp, NewDataplaneApplier(counting, cfg), noRetry)
	addrEq := cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

	checkMaps := func(what string, res *Resources) nodeagent.State {
		t.Helper()
		want, err := ToState(res, cfg)
		if err != nil {
			t.Fatal(err)
		}
		got, err := dp.Dump()
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want.Canonical(), got, addrEq); diff != "" {
			t.Errorf("kernel maps %s (-want +got):\n%s", what, diff)
		}
		return got
	}

	waitFor(t, "initial sync", allAcked(c, 1))
	checkMaps("after the initial sync", res)

	// One backend more.
	web := res.Services["shop/web:80/TCP"]
	web.Backends = append(web.Backends, &dataplanev1.Backend{Ip: "10.77.3.10", Port: 8080})
	cp.set(dataplanev1.ServiceType, "shop/web:80/TCP", web)
	waitFor(t, "change acked", acked(c, dataplanev1.ServiceType, 2))
	good := checkMaps("after a backend was added", res)

	// A bad VIP: NACK naming the resource, maps untouched.
	bad := &dataplanev1.Service{Namespace: "shop", Name: "api", Vips: []string{"10.96.0.999"}, Port: 9090}
	cp.set(dataplanev1.ServiceType, "shop/api:9090/TCP", bad)
	waitFor(t, "nack", func() bool { return c.Status().Types[dataplanev1.ServiceType].Nacks == 1 })
	waitFor(t, "server saw the NACK", func() bool {
		_, reqs, _ := cp.seen()
		_, nacks := acksAndNacks(reqs)
		return len(nacks) >= 1
	})
	_, reqs, _ := cp.seen()
	_, nacks := acksAndNacks(reqs)
	if len(nacks) != 1 || !strings.Contains(nacks[0].GetErrorDetail().GetMessage(), `service shop/api:9090/TCP: vips[0]: "10.96.0.999" is not an IP address`) {
		t.Errorf("NACKs = %v, want one naming service shop/api:9090/TCP and its vip", nacks)
	}
	after, err := dp.Dump()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(good, after, addrEq); diff != "" {
		t.Errorf("kernel maps changed by a rejected response:\n%s", diff)
	}

	// Control plane restart with the same content (minus the bad service):
	// the client resyncs and the kernel is not written again.
	cp.del(dataplanev1.ServiceType, "shop/api:9090/TCP")
	waitFor(t, "removal of the never-applied service acked", acked(c, dataplanev1.ServiceType, 3))
	applies := counting.n.Load()
	before := c.Status()
	cp.restart()
	waitFor(t, "resync after restart", func() bool {
		for typ, ts := range c.Status().Types {
			if ts.Acks <= before.Types[typ].Acks {
				return false
			}
		}
		return true
	})
	if n := counting.n.Load(); n != applies {
		t.Errorf("kernel applied %d more times after a restart of an unchanged control plane", n-applies)
	}
	checkMaps("after the control plane restart", res)
}
