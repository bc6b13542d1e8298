package translate

import (
	"bytes"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"
)

// A prepared Mesh gives the same result as a lone Translate, also when
// many proxies are translated from it at once (run with -race).
func TestMeshConcurrentAndEqualToTranslate(t *testing.T) {
	snap := load(t, bookinfo("testdata/behaviour/mesh.yaml", vsFile("virtual-service-reviews-80-20.yaml"))...)
	proxies := []Proxy{{Node: "node-a"}, {Node: "node-b"}, {Node: "node-c"}, {Kind: ProxylessGRPC, Namespace: "default"}, {Kind: ProxylessGRPC, Namespace: "shop"}}
	m := Prepare(snap)
	got := make([][]byte, len(proxies)*4)
	var wg sync.WaitGroup
	for i := range got {
		wg.Go(func() { got[i] = marshalNodeConfig(t, m.Translate(proxies[i%len(proxies)])) })
	}
	wg.Wait()
	for i, b := range got {
		p := proxies[i%len(proxies)]
		if want := marshalNodeConfig(t, Translate(snap, p)); !bytes.Equal(b, want) {
			t.Errorf("%+v: shared Mesh result differs from Translate", p)
		}
	}
	if nc := m.Translate(Proxy{Node: "node-c"}); len(nc.Listeners)+len(nc.Clusters) != 0 {
		t.Errorf("node without pods got %d listeners and %d clusters", len(nc.Listeners), len(nc.Clusters))
	}
}

func marshalNodeConfig(t *testing.T, nc *NodeConfig) []byte {
	t.Helper()
	var out []byte
	opts := proto.MarshalOptions{Deterministic: true}
	add := func(m proto.Message) {
		b, err := opts.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b...)
	}
	for _, r := range nc.Listeners {
		add(r)
	}
	for _, r := range nc.Routes {
		add(r)
	}
	for _, r := range nc.Clusters {
		add(r)
	}
	for _, r := range nc.Endpoints {
		add(r)
	}
	for _, d := range nc.Diagnostics {
		out = append(out, d.String()...)
	}
	return out
}
