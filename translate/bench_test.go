package translate

import (
	"flag"
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/internal/meshgen"
)

var (
	benchServices   = flag.Int("services", 1000, "BenchmarkTranslate: services in the synthetic mesh")
	benchEndpoints  = flag.Int("endpoints", 10, "BenchmarkTranslate: endpoints per service")
	benchNamespaces = flag.Int("namespaces", 50, "BenchmarkTranslate: namespaces")
	benchNodes      = flag.Int("nodes", 500, "BenchmarkTranslate: nodes")
	benchVSRatio    = flag.Float64("vs-ratio", 0.2, "BenchmarkTranslate: fraction of services with an 80/20 VirtualService")
)

// cpuTime is the CPU time (user+system, all threads, GC included) this
// process has used: on a shared machine it is a steadier figure than
// wall time.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64((cpuTime(b)-start).Milliseconds())/float64(b.N), "cpu-ms/op")
}

func benchSnapshot(b *testing.B) (*config.Snapshot, meshgen.Params) {
	b.Helper()
	p := meshgen.Params{Services: *benchServices, EndpointsPerService: *benchEndpoints,
		Namespaces: *benchNamespaces, Nodes: *benchNodes, VirtualServiceRatio: *benchVSRatio}
	objs, err := meshgen.Generate(p)
	if err != nil {
		b.Fatal(err)
	}
	st := config.NewStore()
	if err := st.Replace("meshgen", objs); err != nil {
		b.Fatal(err)
	}
	return st.Snapshot(), p
}

// BenchmarkTranslate is the cold start of the whole mesh: one iteration
// prepares the snapshot and translates every node (as xds does after a
// change). ns/node and allocs/node divide by the node count; ms/all-nodes
// is the time per iteration; bytes/node is the size of a node's resources
// (deterministic proto marshalling, averaged over a sample of nodes).
func BenchmarkTranslate(b *testing.B) {
	snap, p := benchSnapshot(b)
	b.ReportAllocs()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	cpu := cpuTime(b)
	for b.Loop() {
		m := Prepare(snap)
		for n := range p.Nodes {
			m.Translate(Proxy{Node: meshgen.NodeName(n)})
		}
	}
	b.StopTimer()
	reportCPU(b, cpu)
	runtime.ReadMemStats(&after)
	nodes := float64(b.N * p.Nodes)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/nodes, "ns/node")
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/all-nodes")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/nodes, "allocs/node")
	bytes, resources := sampleSize(b, snap, p.Nodes, func(n int) Proxy { return Proxy{Node: meshgen.NodeName(n)} })
	b.ReportMetric(bytes, "bytes/node")
	b.ReportMetric(resources, "resources/node")
}

// BenchmarkTranslateOneNode is Translate(snap, proxy) for a single node with
// nothing shared: what a lone call costs.
func BenchmarkTranslateOneNode(b *testing.B) {
	snap, p := benchSnapshot(b)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		Translate(snap, Proxy{Node: meshgen.NodeName(i % p.Nodes)})
		i++
	}
}

// BenchmarkTranslateProxyless is the same for a proxyless gRPC client per
// namespace.
func BenchmarkTranslateProxyless(b *testing.B) {
	snap, p := benchSnapshot(b)
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		Translate(snap, Proxy{Kind: ProxylessGRPC, Namespace: meshgen.NamespaceName(i % p.Namespaces)})
		i++
	}
	b.StopTimer()
	bytes, resources := sampleSize(b, snap, p.Namespaces, func(n int) Proxy {
		return Proxy{Kind: ProxylessGRPC, Namespace: meshgen.NamespaceName(n)}
	})
	b.ReportMetric(bytes, "bytes/client")
	b.ReportMetric(resources, "resources/client")
}

// sampleSize averages the marshalled size and resource count over up to 10
// proxies spread over [0, n), and checks their consistency.
func sampleSize(b *testing.B, snap *config.Snapshot, n int, proxy func(int) Proxy) (bytes, resources float64) {
	b.Helper()
	samples := min(n, 10)
	opts := proto.MarshalOptions{Deterministic: true}
	for s := range samples {
		nc := Translate(snap, proxy(s*n/samples))
		if err := Check(nc); err != nil {
			b.Fatalf("Check: %v", err)
		}
		var msgs []proto.Message
		for _, r := range nc.Listeners {
			msgs = append(msgs, r)
		}
		for _, r := range nc.Routes {
			msgs = append(msgs, r)
		}
		for _, r := range nc.Clusters {
			msgs = append(msgs, r)
		}
		for _, r := range nc.Endpoints {
			msgs = append(msgs, r)
		}
		for _, m := range msgs {
			data, err := opts.Marshal(m)
			if err != nil {
				b.Fatal(err)
			}
			bytes += float64(len(data))
		}
		resources += float64(len(msgs))
	}
	return bytes / float64(samples), resources / float64(samples)
}

// BenchmarkCheck is Check of one node's config (what xds runs before
// serving it).
func BenchmarkCheck(b *testing.B) {
	snap, p := benchSnapshot(b)
	m := Prepare(snap)
	ncs := make([]*NodeConfig, min(p.Nodes, 10))
	for i := range ncs {
		ncs[i] = m.Translate(Proxy{Node: meshgen.NodeName(i * p.Nodes / len(ncs))})
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := Check(ncs[i%len(ncs)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkTranslateAndCheck is the cold start as xds runs it: prepare,
// then translate and Mesh.Check every node (shared resources are validated
// once).
func BenchmarkTranslateAndCheck(b *testing.B) {
	snap, p := benchSnapshot(b)
	b.ReportAllocs()
	cpu := cpuTime(b)
	for b.Loop() {
		m := Prepare(snap)
		for n := range p.Nodes {
			if err := m.Check(m.Translate(Proxy{Node: meshgen.NodeName(n)})); err != nil {
				b.Fatal(err)
			}
		}
	}
	reportCPU(b, cpu)
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/all-nodes")
}

// BenchmarkEndpointChange is one pod changing its address in a running
// mesh: PrepareNext from the previous Mesh, then translate and check every
// node (xds then sends only what changed).
func BenchmarkEndpointChange(b *testing.B) {
	p := meshgen.Params{Services: *benchServices, EndpointsPerService: *benchEndpoints,
		Namespaces: *benchNamespaces, Nodes: *benchNodes, VirtualServiceRatio: *benchVSRatio}
	objs, err := meshgen.Generate(p)
	if err != nil {
		b.Fatal(err)
	}
	st := config.NewStore()
	if err := st.Replace("meshgen", objs); err != nil {
		b.Fatal(err)
	}
	all := func(m *Mesh) {
		for n := range p.Nodes {
			if err := m.Check(m.Translate(Proxy{Node: meshgen.NodeName(n)})); err != nil {
				b.Fatal(err)
			}
		}
	}
	m := Prepare(st.Snapshot())
	all(m)
	var pod *config.Object
	for _, o := range objs {
		if o.Kind == config.KindPod {
			pod = o
			break
		}
	}
	b.ReportAllocs()
	var cpu time.Duration
	i := 0
	for b.Loop() {
		b.StopTimer()
		changed := *pod
		spec := pod.Spec.(*corev1.Pod).DeepCopy()
		spec.Status.PodIP = fmt.Sprintf("10.127.%d.%d", i/250%250, 1+i%250)
		changed.Spec = spec
		if err := st.Apply("meshgen", []*config.Object{&changed}, nil); err != nil {
			b.Fatal(err)
		}
		snap := st.Snapshot()
		i++
		start := cpuTime(b)
		b.StartTimer()
		m = PrepareNext(m, snap)
		all(m)
		cpu += cpuTime(b) - start
	}
	b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op")
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/all-nodes")
}
