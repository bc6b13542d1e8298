package xds

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/nodemesh/nodemesh/config"
)

var (
	scaleMesh  = flag.Bool("xds-scale", false, "run TestScaleMesh: 1,000 services, 10,000 pods, Envoy-like nodes over real gRPC (minutes: translate takes ~1.5 s per node)")
	scaleNodes = flag.Int("xds-scale-nodes", 50, "TestScaleMesh: how many of the 50 nodes connect")
	scaleHeap  = flag.String("xds-scale-heapprofile", "", "TestScaleMesh: write a heap profile after the cold start to this file")
	scaleDelta = flag.Bool("xds-scale-delta", false, "TestScaleMesh: nodes use Delta ADS (only changed resources are sent) instead of SotW")
)

// scaleYAML is the mesh of DESIGN.md's targets: 50 namespaces of 20
// services, 10 pods each (10,000) spread over 50 nodes, and an 80/20
// VirtualService on every fifth service.
//
// extraPod adds one pod of svc-0 in ns-0 on node-x, which no proxy serves:
// an endpoint change that touches one load assignment and no listener.
func scaleYAML(weightV1 int, extraPod bool) string {
	var b strings.Builder
	if extraPod {
		b.WriteString("---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: svc-0-extra\n  namespace: ns-0\n  labels: {app: svc-0, version: v1}\nspec:\n  nodeName: node-x\n  containers: [{name: c, image: c}]\nstatus:\n  phase: Running\n  podIP: 10.200.0.1\n")
	}
	pod := 0
	for ns := range 50 {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-%d\n", ns)
		for s := range 20 {
			name, n := fmt.Sprintf("svc-%d", s), fmt.Sprintf("ns-%d", ns)
			fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: %s\n  namespace: %s\nspec:\n  clusterIP: 10.96.%d.%d\n  selector: {app: %s}\n  ports:\n  - name: http\n    port: 9080\n", name, n, ns, s+1, name)
			for p := range 10 {
				fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: %s-%d\n  namespace: %s\n  labels: {app: %s, version: v%d}\nspec:\n  nodeName: node-%d\n  containers: [{name: c, image: c}]\nstatus:\n  phase: Running\n  podIP: 10.%d.%d.%d\n",
					name, p, n, name, p%2+1, pod%50, 1+pod/65536, pod/256%256, pod%256)
				pod++
			}
			if s%5 == 0 {
				fmt.Fprintf(&b, "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: %s\n  namespace: %s\nspec:\n  host: %s\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n", name, n, name)
				w := 80
				if ns == 0 && s == 0 {
					w = weightV1
				}
				fmt.Fprintf(&b, "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: %s\n  namespace: %s\nspec:\n  hosts: [%s]\n  http:\n  - route:\n    - destination: {host: %s, subset: v1}\n      weight: %d\n    - destination: {host: %s, subset: v2}\n      weight: %d\n", name, n, name, name, w, name, 100-w)
			}
		}
	}
	return b.String()
}

// envoySim talks SotW ADS the way Envoy does: wildcard CDS and LDS, then
// EDS for the clusters and RDS for the route names it learned, ACKing all.
type envoySim struct {
	id     string
	stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	seen   func(id, typeURL, version string, bytes int)
}

func (e *envoySim) run() error {
	version, nonce, names := map[string]string{}, map[string]string{}, map[string][]string{}
	send := func(typeURL string, errDetail bool) error {
		return e.stream.Send(&discoveryv3.DiscoveryRequest{
			Node: envoyNode(e.id), TypeUrl: typeURL, VersionInfo: version[typeURL],
			ResponseNonce: nonce[typeURL], ResourceNames: names[typeURL],
		})
	}
	for _, t := range []string{resourcev3.ClusterType, resourcev3.ListenerType} {
		if err := send(t, false); err != nil {
			return err
		}
	}
	for {
		r, err := e.stream.Recv()
		if err != nil {
			return err
		}
		t := r.GetTypeUrl()
		version[t], nonce[t] = r.GetVersionInfo(), r.GetNonce()
		if err := send(t, false); err != nil { // ACK
			return err
		}
		var dep string
		var want []string
		switch t {
		case resourcev3.ClusterType:
			dep = resourcev3.EndpointType
			for _, a := range r.GetResources() {
				c := &clusterv3.Cluster{}
				if err := a.UnmarshalTo(c); err != nil {
					return err
				}
				if c.GetType() == clusterv3.Cluster_EDS {
					want = append(want, c.GetName())
				}
			}
		case resourcev3.ListenerType:
			dep = resourcev3.RouteType
			for _, a := range r.GetResources() {
				l := &listenerv3.Listener{}
				if err := a.UnmarshalTo(l); err != nil {
					return err
				}
				want = append(want, listenerRouteNames(l)...)
			}
		}
		if dep != "" {
			slices.Sort(want)
			want = slices.Compact(want)
			if !slices.Equal(want, names[dep]) || version[dep] == "" {
				names[dep] = want
				if err := send(dep, false); err != nil {
					return err
				}
			}
		}
		e.seen(e.id, t, r.GetVersionInfo(), proto.Size(r))
	}
}

// deltaSim is envoySim over Delta ADS: wildcard CDS and LDS, then EDS and
// RDS subscriptions for the names they reference, ACKing all.
type deltaSim struct {
	id     string
	stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	seen   func(id, typeURL, version string, bytes int)
}

func (e *deltaSim) run() error {
	subscribed := map[string]map[string]bool{resourcev3.EndpointType: {}, resourcev3.RouteType: {}}
	for i, t := range []string{resourcev3.ClusterType, resourcev3.ListenerType} {
		req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t}
		if i == 0 {
			req.Node = envoyNode(e.id)
		}
		if err := e.stream.Send(req); err != nil {
			return err
		}
	}
	for {
		r, err := e.stream.Recv()
		if err != nil {
			return err
		}
		t := r.GetTypeUrl()
		if err := e.stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: r.GetNonce()}); err != nil {
			return err
		}
		var dep string
		var want []string
		for _, res := range r.GetResources() {
			switch t {
			case resourcev3.ClusterType:
				c := &clusterv3.Cluster{}
				if err := res.GetResource().UnmarshalTo(c); err != nil {
					return err
				}
				if dep = resourcev3.EndpointType; c.GetType() == clusterv3.Cluster_EDS {
					want = append(want, c.GetName())
				}
			case resourcev3.ListenerType:
				l := &listenerv3.Listener{}
				if err := res.GetResource().UnmarshalTo(l); err != nil {
					return err
				}
				dep, want = resourcev3.RouteType, append(want, listenerRouteNames(l)...)
			}
		}
		var add []string
		for _, n := range want {
			if !subscribed[dep][n] {
				subscribed[dep][n] = true
				add = append(add, n)
			}
		}
		if len(add) > 0 {
			slices.Sort(add)
			if err := e.stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: dep, ResourceNamesSubscribe: add}); err != nil {
				return err
			}
		}
		e.seen(e.id, t, r.GetSystemVersionInfo(), proto.Size(r))
	}
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func TestScaleMesh(t *testing.T) {
	if !*scaleMesh {
		t.Skip("opt-in: go test ./xds -run TestScaleMesh -xds-scale -v")
	}
	objs, diags := config.Decode("scale.yaml", []byte(scaleYAML(80, false)))
	if config.HasErrors(diags) {
		t.Fatalf("scale mesh: %v", diags[0])
	}
	store := config.NewStore()
	if err := store.Replace("scale", objs); err != nil {
		t.Fatal(err)
	}
	objs = nil
	runtime.GC()
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0) // the store: what any control plane holds
	s, err := NewServer(Config{Source: StoreSource(store, nil, nil),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	s.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = g.Serve(lis) })
	wg.Go(func() { _ = s.Run(ctx) })
	defer func() { cancel(); s.Shutdown(); g.Stop(); wg.Wait() }()

	nodes := *scaleNodes
	var mu sync.Mutex
	got := map[string]map[string]string{} // node -> type -> version
	bytesTo := map[string]int{}
	seenAt := map[string]time.Time{} // node -> when its watched type changed after the edit
	var editing bool
	var watchType string
	before := map[string]string{}
	cond := sync.NewCond(&mu)
	seen := func(id, typeURL, version string, n int) {
		mu.Lock()
		defer mu.Unlock()
		if got[id] == nil {
			got[id] = map[string]string{}
		}
		got[id][typeURL] = version
		if editing {
			bytesTo[id] += n
			if typeURL == watchType && version != before[id] {
				if _, ok := seenAt[id]; !ok {
					seenAt[id] = time.Now()
				}
			}
		}
		cond.Broadcast()
	}
	var simErr chan error
	waitFor := func(ok func() bool) {
		mu.Lock()
		defer mu.Unlock()
		for !ok() {
			select {
			case err := <-simErr:
				mu.Unlock()
				t.Fatal(err)
			default:
			}
			cond.Wait()
		}
	}
	cpu0, start := cpuSeconds(), time.Now()
	sctx, scancel := context.WithCancel(context.Background())
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20))) // as Envoy: no 4 MiB cap
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	simErr = make(chan error, nodes)
	var sims sync.WaitGroup
	for i := range nodes {
		id := fmt.Sprintf("node-%d", i)
		var run func() error
		if *scaleDelta {
			stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(sctx)
			if err != nil {
				t.Fatal(err)
			}
			run = (&deltaSim{id: id, stream: stream, seen: seen}).run
		} else {
			stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
			if err != nil {
				t.Fatal(err)
			}
			run = (&envoySim{id: id, stream: stream, seen: seen}).run
		}
		sims.Go(func() {
			if err := run(); err != nil && sctx.Err() == nil {
				simErr <- fmt.Errorf("%s: %w", id, err)
				mu.Lock()
				cond.Broadcast()
				mu.Unlock()
			}
		})
	}
	defer func() { scancel(); sims.Wait() }()
	waitFor(func() bool {
		if len(got) < nodes {
			return false
		}
		for _, m := range got {
			if len(m) < 4 {
				return false
			}
		}
		return true
	})
	cold := time.Since(start)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	peak := ms.HeapInuse
	runtime.GC()
	runtime.ReadMemStats(&ms)
	if *scaleHeap != "" {
		if f, err := os.Create(*scaleHeap); err == nil {
			_ = pprof.WriteHeapProfile(f)
			f.Close()
		}
	}
	t.Logf("live heap: %d MiB for the config store (before serving), %d MiB more while serving (server and clients)",
		ms0.HeapAlloc>>20, (ms.HeapAlloc-ms0.HeapAlloc)>>20)
	mode := "SotW"
	if *scaleDelta {
		mode = "Delta"
	}
	t.Logf("cold start (%s): %d nodes have CDS+EDS+LDS+RDS after %v; process CPU %.2fs (server and %d clients); heap in use %d MiB, %d MiB live after GC",
		mode, nodes, cold.Round(time.Millisecond), cpuSeconds()-cpu0, nodes, peak>>20, ms.HeapAlloc>>20)

	t.Logf("peak RSS so far %d MiB", peakRSS()>>20)

	// change applies yaml and waits until every node got a new version of
	// typeURL, then reports latencies and bytes sent.
	// Like an informer, the change is applied as the one object it is.
	change := func(what, typeURL, yaml string, kind config.Kind, name string) {
		mu.Lock()
		for id, m := range got {
			before[id] = m[typeURL]
		}
		clear(seenAt)
		clear(bytesTo)
		watchType, editing = typeURL, true
		mu.Unlock()
		objs, _ := config.Decode("scale.yaml", []byte(yaml))
		i := slices.IndexFunc(objs, func(o *config.Object) bool { return o.Kind == kind && o.Namespace == "ns-0" && o.Name == name })
		if i < 0 {
			t.Fatalf("no %s ns-0/%s", kind, name)
		}
		cpu0, start := cpuSeconds(), time.Now()
		if err := store.Apply("scale", objs[i:i+1], nil); err != nil {
			t.Fatal(err)
		}
		waitFor(func() bool { return len(seenAt) == nodes })
		time.Sleep(200 * time.Millisecond) // let any other push of this change arrive
		var lat []time.Duration
		mu.Lock()
		editing = false
		for _, at := range seenAt {
			lat = append(lat, at.Sub(start))
		}
		maxBytes, total := 0, 0
		for _, n := range bytesTo {
			maxBytes = max(maxBytes, n)
			total += n
		}
		mu.Unlock()
		slices.Sort(lat)
		t.Logf("%s: %s at all %d nodes, p50 %v, p99 %v; at most %d bytes sent to one node (%d KiB to all); CPU %.2fs",
			what, typeShort(typeURL), nodes, lat[len(lat)/2].Round(time.Millisecond), lat[len(lat)*99/100].Round(time.Millisecond),
			maxBytes, total>>10, cpuSeconds()-cpu0)
	}
	change("weight change", resourcev3.RouteType, scaleYAML(50, false), config.KindVirtualService, "svc-0")
	change("endpoint change", resourcev3.EndpointType, scaleYAML(50, true), config.KindPod, "svc-0-extra")
	t.Logf("peak RSS %d MiB", peakRSS()>>20)
}

// peakRSS is the process's peak resident set size (Linux VmHWM), or 0.
func peakRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb uint64
			fmt.Sscanf(strings.TrimSpace(rest), "%d", &kb)
			return kb << 10
		}
	}
	return 0
}
