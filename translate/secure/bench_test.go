package secure

import (
	"testing"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/internal/meshgen"
	"github.com/nodemesh/nodemesh/translate"
)

// BenchmarkApplyMesh measures translate + the pass for one node of a small
// mesh and of the DESIGN.md mesh (1,000 services, 50 namespaces, 50 nodes,
// no Sidecar scoping: about 200 service accounts per node, each seeing all
// 1,000 services, so about 240,000 per-account clusters per node). Run with
// go test ./translate/secure -run '^$' -bench ApplyMesh -benchtime 3x
func BenchmarkApplyMesh(b *testing.B) {
	for _, p := range []meshgen.Params{
		{Services: 100, EndpointsPerService: 10, Namespaces: 10, Nodes: 10, VirtualServiceRatio: 0.2},
		meshgen.Default(),
	} {
		objs, err := meshgen.Generate(p)
		if err != nil {
			b.Fatal(err)
		}
		st := config.NewStore()
		if err := st.Replace("bench", objs); err != nil {
			b.Fatal(err)
		}
		snap := st.Snapshot()
		mesh := translate.Prepare(snap)
		proxy := translate.Proxy{Node: meshgen.NodeName(0)}
		name := "services=" + itoa(p.Services) + "/nodes=" + itoa(p.Nodes)
		b.Run(name+"/one-node", func(b *testing.B) {
			var before, after int
			for b.Loop() {
				nc := mesh.Translate(proxy)
				before = len(nc.Clusters)
				Apply(nc, snap, Options{TrustDomain: td})
				after = len(nc.Clusters)
			}
			b.ReportMetric(float64(before), "clusters_before")
			b.ReportMetric(float64(after), "clusters_after")
		})
		// Every node of the mesh through one Prepared: per-account work is
		// shared between the nodes hosting pods of the same account.
		b.Run(name+"/all-nodes-prepared", func(b *testing.B) {
			for b.Loop() {
				prep := Prepare(snap, Options{TrustDomain: td})
				for i := range p.Nodes {
					prep.Apply(mesh.Translate(translate.Proxy{Node: meshgen.NodeName(i)}))
				}
			}
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N)/float64(p.Nodes), "ms/node")
		})
	}
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}
