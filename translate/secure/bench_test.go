package secure

import (
	"slices"
	"strconv"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/internal/meshgen"
	"github.com/nodemesh/nodemesh/translate"
)

// BenchmarkSecureCost measures the pass for one node, before (per-account
// cluster copies, Options.PerAccountClusters) and after (one cluster per
// destination selecting the account's transport socket), in one run, on a
// small mesh and on the DESIGN.md mesh (meshgen.Default: 1,000 services x
// 10 endpoints, 50 namespaces, 50 nodes, no Sidecar scoping: about 200
// service accounts per node, each reaching all 1,000 services). ns/op is
// the pass alone (translate runs once, outside the timer); the metrics are
// what the node is served: clusters, route configurations, the bytes of
// its listeners, route configurations and clusters (deterministic proto
// encoding), and the TLS transport sockets of its clusters (each one an
// SSL context in Envoy). Run with
//
//	go test ./translate/secure -run '^$' -bench SecureCost -benchtime 3x -benchmem
func BenchmarkSecureCost(b *testing.B) {
	for _, p := range []meshgen.Params{
		{Services: 100, EndpointsPerService: 10, Namespaces: 10, Nodes: 10, VirtualServiceRatio: 0.2},
		meshgen.Default(),
	} {
		snap := meshSnapshot(b, p)
		plain := translate.Prepare(snap).Translate(translate.Proxy{Node: meshgen.NodeName(0)})
		name := "services=" + strconv.Itoa(p.Services) + "/nodes=" + strconv.Itoa(p.Nodes)
		b.Run(name+"/untouched", func(b *testing.B) {
			for b.Loop() {
				_ = copyNodeConfig(plain)
			}
			reportNode(b, plain)
		})
		for _, mode := range []struct {
			name string
			opts Options
		}{
			{"before-per-account-copies", Options{TrustDomain: td, PerAccountClusters: true}},
			{"after-socket-selection", Options{TrustDomain: td}},
		} {
			b.Run(name+"/"+mode.name, func(b *testing.B) {
				var nc *translate.NodeConfig
				for b.Loop() {
					nc = copyNodeConfig(plain)
					if diags := Apply(nc, snap, mode.opts); len(diags) != 0 {
						b.Fatal(diags)
					}
				}
				reportNode(b, nc)
			})
		}
	}
}

func meshSnapshot(b *testing.B, p meshgen.Params) *config.Snapshot {
	b.Helper()
	objs, err := meshgen.Generate(p)
	if err != nil {
		b.Fatal(err)
	}
	st := config.NewStore()
	if err := st.Replace("bench", objs); err != nil {
		b.Fatal(err)
	}
	return st.Snapshot()
}

// copyNodeConfig copies the slices of nc: Apply replaces their elements
// but never changes the messages, so the copy is a fresh input.
func copyNodeConfig(nc *translate.NodeConfig) *translate.NodeConfig {
	return &translate.NodeConfig{Proxy: nc.Proxy, Listeners: slices.Clone(nc.Listeners), Routes: slices.Clone(nc.Routes),
		Clusters: slices.Clone(nc.Clusters), Endpoints: slices.Clone(nc.Endpoints)}
}

// reportNode reports what nc serves: clusters, route configurations, bytes
// and TLS transport sockets.
func reportNode(b *testing.B, nc *translate.NodeConfig) {
	b.Helper()
	opts := proto.MarshalOptions{Deterministic: true}
	size := 0
	for _, l := range nc.Listeners {
		size += opts.Size(l)
	}
	for _, r := range nc.Routes {
		size += opts.Size(r)
	}
	tls := 0
	isTLS := func(ts *corev3.TransportSocket) {
		if ts.GetTypedConfig().MessageIs(&tlsv3.UpstreamTlsContext{}) {
			tls++
		}
	}
	for _, c := range nc.Clusters {
		size += opts.Size(c)
		isTLS(c.GetTransportSocket())
		for _, m := range c.GetTransportSocketMatches() {
			isTLS(m.GetTransportSocket())
		}
	}
	b.ReportMetric(float64(len(nc.Clusters)), "clusters/node")
	b.ReportMetric(float64(len(nc.Routes)), "routes/node")
	b.ReportMetric(float64(size)/1e6, "MB/node")
	b.ReportMetric(float64(tls), "tls-sockets/node")
}

// BenchmarkApplyMesh measures translate + the pass for every node of the
// DESIGN.md mesh through one Prepared (work is shared between the nodes
// hosting pods of the same accounts), before and after. Run with
// go test ./translate/secure -run '^$' -bench ApplyMesh -benchtime 1x
func BenchmarkApplyMesh(b *testing.B) {
	p := meshgen.Default()
	snap := meshSnapshot(b, p)
	mesh := translate.Prepare(snap)
	for _, mode := range []struct {
		name string
		opts Options
	}{
		{"before-per-account-copies", Options{TrustDomain: td, PerAccountClusters: true}},
		{"after-socket-selection", Options{TrustDomain: td}},
	} {
		b.Run(mode.name, func(b *testing.B) {
			for b.Loop() {
				prep := Prepare(snap, mode.opts)
				for i := range p.Nodes {
					prep.Apply(mesh.Translate(translate.Proxy{Node: meshgen.NodeName(i)}))
				}
			}
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N)/float64(p.Nodes), "ms/node")
		})
	}
}
