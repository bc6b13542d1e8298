package nodeagent

import (
	"context"
	"flag"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

var scaleServices = flag.Int("nodeagent.scale-services", 100_000, "services in TestScale (10 backends each)")

// scaleState builds n services with 10 unique backends each (n*10
// backends, 1M for the default 100k). Service i's first backend uses port
// `firstPort`, so changing it for some services changes one backend each.
func scaleState(n int, changed int) State {
	s := State{Services: make([]Service, n)}
	for i := 0; i < n; i++ {
		vip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		bs := make([]Backend, 10)
		for j := range bs {
			b := i*10 + j
			ip := netip.AddrFrom4([4]byte{172, 16 + byte(b>>16), byte(b >> 8), byte(b)})
			bs[j] = Backend{IP: ip, Port: 8080}
		}
		if i < changed {
			bs[0].Port = 9090
		}
		s.Services[i] = Service{VIP: vip, Port: 80, Proto: TCP, Backends: bs}
	}
	return s
}

// TestScale loads 100k services with 1M backends into the real maps, then
// applies a change to 10k services and reports the time of each (the
// target is < 1 s for the 10k-service change).
func TestScale(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping scale test in -short mode")
	}
	env := newKernelEnv(t)
	dp, err := Open(Config{Node: "scale", CgroupPath: env.Cgroup, PinDir: env.PinDir})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Uninstall()
	ctx := context.Background()
	n := *scaleServices
	full := scaleState(n, 0)
	start := time.Now()
	st, err := dp.Apply(ctx, full)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("initial apply: %d services, %d backends, %d writes in %v", st.Services, st.Backends, st.Puts, time.Since(start))
	if st.Services != n || st.Backends != n*10 {
		t.Fatalf("stats %+v", st)
	}

	changed := n / 10
	change := scaleState(n, changed)
	runtime.GC()
	start, cpu := time.Now(), cpuTime()
	st, err = dp.Apply(ctx, change)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("change of %d services: %d puts, %d deletes in %v (process CPU %v; load average %s)",
		changed, st.Puts, st.Deletes, time.Since(start), cpuTime()-cpu, loadAvg())
	if st.Puts != 2*changed || st.Deletes != changed {
		t.Errorf("change wrote %d puts / %d deletes, want %d / %d", st.Puts, st.Deletes, 2*changed, changed)
	}

	start = time.Now()
	st, err = dp.Apply(ctx, change)
	if err != nil || st.Puts+st.Deletes != 0 {
		t.Fatalf("no-op apply: %+v %v", st, err)
	}
	t.Logf("no-op apply over %d services: %v", n, time.Since(start))

	// A full reconcile (what the first Apply after a restart does).
	dp.rec.Invalidate()
	start = time.Now()
	if st, err = dp.Apply(ctx, change); err != nil || st.Puts+st.Deletes != 0 {
		t.Fatalf("full no-op apply: %+v %v", st, err)
	}
	t.Logf("full reconcile over %d services / %d backends (reads every entry): %v", n, n*10, time.Since(start))
}

// cpuTime is the user+system CPU time of the process so far: a figure that
// a busy shared machine inflates much less than wall time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:1], "")
}

// BenchmarkApply10kChange measures applying a change to 10k of 100k
// services (1M backends) on the real maps; each iteration flips the change.
func BenchmarkApply10kChange(b *testing.B) {
	env := newKernelEnv(b)
	dp, err := Open(Config{Node: "bench", CgroupPath: env.Cgroup, PinDir: env.PinDir})
	if err != nil {
		b.Fatal(err)
	}
	defer dp.Uninstall()
	ctx := context.Background()
	states := []State{scaleState(100_000, 0), scaleState(100_000, 10_000)}
	if _, err := dp.Apply(ctx, states[0]); err != nil {
		b.Fatal(err)
	}
	if _, err := dp.Apply(ctx, states[1]); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := dp.Apply(ctx, states[(i+1)%2]); err != nil {
			b.Fatal(err)
		}
	}
}
