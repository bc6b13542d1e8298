package e2e

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"text/tabwriter"
	"time"
)

var (
	benchDataplane = flag.Bool("bench-dataplane", false, "run TestBenchDataplane: fortio latency of direct, eBPF and proxy paths")
	benchQPS       = flag.Float64("bench-qps", 10000, "requested fortio rate; lowered when a calibration run cannot sustain it")
	benchConns     = flag.Int("bench-conns", 16, "fortio connections (fixed, keep-alive)")
	benchDuration  = flag.Duration("bench-duration", 10*time.Second, "length of each fortio run")
	benchPaths     = flag.String("bench-paths", "", "only paths whose name matches this regexp (direct always runs)")
	benchRounds    = flag.Int("bench-rounds", 1, "rounds over all paths; figures are averaged over rounds")
)

// benchPath is one way from the client pod to a server pod.
type benchPath struct {
	name  string
	setup func(t *testing.T, dst *Pod) (url string, teardown func()) // nil: not available
	skip  string                                                     // why setup is nil
	same  bool                                                       // same-node only
	mesh  bool                                                       // needs the node agents up
}

// benchRow accumulates one path's runs and, for every run, its ratio to
// the direct run made just before it (paired, so that drifting load from
// other work on the machine cancels out).
type benchRow struct {
	placement, path          string
	qps, mean, p50, p90, p99 float64
	max                      float64 // worst single request over all runs
	veth                     float64 // bytes through the server pod's veth per request
	runs                     int
	rMean, rP50, rP99        float64 // sums of paired ratios
}

// TestBenchDataplane measures, in Graf's way, the latency that each data
// path adds to a fixed-rate HTTP load over fixed connections: no mesh (pod
// IP), eBPF socket LB (VIP), eBPF with same-node acceleration, haproxy as two
// sidecars and haproxy as one node proxy, same-node and cross-node. Every
// path's run is paired with a direct run right before it (no program
// attached) and the table gives the mean of those paired ratios. Run with
// `make bench-dataplane` or `go test ./e2e -run TestBenchDataplane -v -bench-dataplane`.
func TestBenchDataplane(t *testing.T) {
	if !*benchDataplane {
		t.Skip("benchmark: enable with -bench-dataplane (make bench-dataplane)")
	}
	c := NewCluster(t, Config{Nodes: 2, PodsPerNode: 2})
	ctx := context.Background()
	fortio, err := FortioBinary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	client := c.Nodes[0].Pods[0]
	dsts := map[string]*Pod{"same-node": c.Nodes[0].Pods[1], "cross-node": c.Nodes[1].Pods[0]}
	for _, p := range dsts {
		if _, err := p.StartFortioServer(ctx, fortio, 8080); err != nil {
			t.Fatal(err)
		}
	}
	qps := calibrate(t, client, fortio, dsts["cross-node"])
	mesh, meshed := meshPaths(c, dsts)
	paths := append(proxyPaths(c), meshed...)
	direct := benchPath{name: "direct (pod IP)", setup: directPath}

	rows := map[string]*benchRow{}
	var order []string
	row := func(placement, path string) *benchRow {
		key := placement + "/" + path
		if rows[key] == nil {
			rows[key] = &benchRow{placement: placement, path: path}
			order = append(order, key)
		}
		return rows[key]
	}
	load := func(bp benchPath, dst *Pod) FortioResult {
		url, teardown := bp.setup(t, dst)
		defer teardown()
		before, err := dst.VethBytes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		res, err := client.FortioLoad(ctx, fortio, url, qps, *benchConns, *benchDuration)
		if err != nil {
			t.Fatalf("%s: %v", bp.name, err)
		}
		after, err := dst.VethBytes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		res.vethBytes = after - before
		return res
	}
	only, err := regexp.Compile(*benchPaths)
	if err != nil {
		t.Fatalf("-bench-paths: %v", err)
	}
	for round := 0; round < *benchRounds; round++ {
		for _, placement := range []string{"cross-node", "same-node"} {
			dst := dsts[placement]
			for _, bp := range paths {
				if bp.setup == nil || (bp.same && placement != "same-node") || !only.MatchString(bp.name) {
					continue
				}
				b := load(direct, dst)
				row(placement, direct.name).add(t, b, b)
				if bp.mesh {
					mesh.up(t)
				}
				res := load(bp, dst)
				if bp.mesh {
					mesh.down(t)
				}
				row(placement, bp.name).add(t, res, b)
			}
		}
	}
	printBench(t, qps, rows, order, append([]benchPath{direct}, paths...))
}

// calibrate returns the requested rate when one of three short direct runs
// sustains it (a single run may hit a burst of other work on the machine),
// else 80% of the best rate seen, rounded down to 500.
func calibrate(t *testing.T, client *Pod, fortio string, dst *Pod) float64 {
	qps := *benchQPS
	url := fmt.Sprintf("http://%s:8080/", dst.IP)
	best := 0.0
	for try := 0; try < 3; try++ {
		res, err := client.FortioLoad(context.Background(), fortio, url, qps, *benchConns, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if res.ActualQPS >= 0.95*qps {
			return qps
		}
		best = math.Max(best, res.ActualQPS)
	}
	lower := math.Max(500, math.Floor(best*0.8/500)*500)
	t.Logf("calibration: %v qps requested, at best %.0f sustained: running at %v", qps, best, lower)
	return lower
}

func (r *benchRow) add(t *testing.T, res, base FortioResult) {
	p := func(res FortioResult, q float64) float64 {
		v, err := res.Percentile(q)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	r.qps += res.ActualQPS
	r.mean += res.DurationHistogram.Avg
	r.p50 += p(res, 50)
	r.p90 += p(res, 90)
	r.p99 += p(res, 99)
	r.max = max(r.max, res.DurationHistogram.Max)
	r.veth += float64(res.vethBytes) / float64(res.DurationHistogram.Count)
	r.rMean += res.DurationHistogram.Avg / base.DurationHistogram.Avg
	r.rP50 += p(res, 50) / p(base, 50)
	r.rP99 += p(res, 99) / p(base, 99)
	r.runs++
}

func directPath(t *testing.T, dst *Pod) (string, func()) {
	return fmt.Sprintf("http://%s:8080/", dst.IP), func() {}
}

// proxyPaths are haproxy in TCP mode: a sidecar on each side (client pod ->
// its sidecar on loopback -> server's sidecar -> server on loopback), and one
// shared node proxy on the client's node.
func proxyPaths(c *Cluster) []benchPath {
	if _, err := exec.LookPath("haproxy"); err != nil {
		reason := "haproxy not installed (apt-get install -y haproxy)"
		return []benchPath{{name: "haproxy sidecars (2 hops)", skip: reason}, {name: "haproxy node proxy (1 hop)", skip: reason}}
	}
	client := c.Nodes[0].Pods[0]
	sidecars := func(t *testing.T, dst *Pod) (string, func()) {
		out, err := client.StartHAProxy(client.Name+"-out", "127.0.0.1:15001", fmt.Sprintf("%s:15006", dst.IP))
		if err != nil {
			t.Fatal(err)
		}
		in, err := dst.StartHAProxy(dst.Name+"-in", "0.0.0.0:15006", "127.0.0.1:8080")
		if err != nil {
			t.Fatal(err)
		}
		if err := waitTCP(context.Background(), client, fmt.Sprintf("%s:15006", dst.IP), in); err != nil {
			t.Fatal(err)
		}
		if err := waitTCP(context.Background(), client, "127.0.0.1:15001", out); err != nil {
			t.Fatal(err)
		}
		return "http://127.0.0.1:15001/", func() { out.Stop(time.Second); in.Stop(time.Second) }
	}
	nodeProxy := func(t *testing.T, dst *Pod) (string, func()) {
		n := client.Node
		p, err := n.StartHAProxy(n.Name+"-proxy", "0.0.0.0:15002", fmt.Sprintf("%s:8080", dst.IP))
		if err != nil {
			t.Fatal(err)
		}
		addr := fmt.Sprintf("%s:15002", n.Gateway)
		if err := waitTCP(context.Background(), client, addr, p); err != nil {
			t.Fatal(err)
		}
		return "http://" + addr + "/", func() { p.Stop(time.Second) }
	}
	return []benchPath{
		{name: "haproxy sidecars (2 hops)", setup: sidecars},
		{name: "haproxy node proxy (1 hop)", setup: nodeProxy},
	}
}

func printBench(t *testing.T, qps float64, rows map[string]*benchRow, order []string, paths []benchPath) {
	var b strings.Builder
	fmt.Fprintf(&b, "\nnodemesh dataplane latency: fortio %s load -qps %.0f -c %d -t %s, %d round(s), %s\n",
		FortioVersion, qps, *benchConns, *benchDuration, *benchRounds, time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintln(&b, "veth B/req: bytes through the server pod's veth per request (0: same-node acceleration bypassed it)")
	fmt.Fprintln(&b, "ratios: mean over runs of (path / the direct run made just before it); direct rows average all those runs")
	if load, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Fprintf(&b, "machine: %d CPUs, load average %s (other work on the machine adds noise)\n",
			runtime.NumCPU(), strings.Join(strings.Fields(string(load))[:3], " "))
	}
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "placement\tpath\truns\tqps\tmean µs\tp50 µs\tp90 µs\tp99 µs\tmax ms\tveth B/req\tmean/direct\tp50/direct\tp99/direct\t")
	for _, key := range order {
		r := rows[key]
		n := float64(r.runs)
		us := func(v float64) string { return fmt.Sprintf("%.0f", v/n*1e6) }
		ratio := func(v float64) string { return fmt.Sprintf("%.2fx", v/n) }
		fmt.Fprintf(w, "%s\t%s\t%d\t%.0f\t%s\t%s\t%s\t%s\t%.1f\t%.0f\t%s\t%s\t%s\t\n", r.placement, r.path, r.runs, r.qps/n,
			us(r.mean), us(r.p50), us(r.p90), us(r.p99), r.max*1e3, r.veth/n, ratio(r.rMean), ratio(r.rP50), ratio(r.rP99))
	}
	w.Flush()
	for _, bp := range paths {
		if bp.setup == nil {
			fmt.Fprintf(&b, "not measured: %s: %s\n", bp.name, bp.skip)
		}
	}
	fmt.Fprint(os.Stdout, b.String()) // shown with -v, as make bench-dataplane runs it
}
