package meshgen

import (
	"testing"

	"github.com/nodemesh/nodemesh/config"
)

func TestGenerate(t *testing.T) {
	p := Params{Services: 100, EndpointsPerService: 3, Namespaces: 7, Nodes: 5, VirtualServiceRatio: 0.2}
	objs, err := Generate(p)
	if err != nil {
		t.Fatal(err)
	}
	count := map[config.Kind]int{}
	for _, o := range objs {
		count[o.Kind]++
	}
	want := map[config.Kind]int{
		config.KindNamespace: 7, config.KindService: 100, config.KindPod: 300, config.KindEndpointSlice: 100,
		config.KindVirtualService: 20, config.KindDestinationRule: 20,
	}
	for k, n := range want {
		if count[k] != n {
			t.Errorf("%s: got %d objects, want %d", k, count[k], n)
		}
	}
	st := config.NewStore()
	if err := st.Replace("meshgen", objs); err != nil {
		t.Fatalf("store rejects the generated mesh: %v", err)
	}
	snap := st.Snapshot()
	if got := len(snap.PodsOnNode(NodeName(4))); got != 60 {
		t.Errorf("pods on %s = %d, want 60", NodeName(4), got)
	}
	if got := len(snap.EndpointSlicesFor(NamespaceName(3), ServiceName(10))); got != 1 {
		t.Errorf("EndpointSlices of %s = %d, want 1", ServiceName(10), got)
	}
	again, err := Generate(p)
	if err != nil {
		t.Fatal(err)
	}
	for i := range objs {
		if objs[i].Key != again[i].Key {
			t.Fatalf("not deterministic at %d: %v vs %v", i, objs[i].Key, again[i].Key)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, p := range []Params{{}, {Services: 1, Namespaces: 1, Nodes: 1, VirtualServiceRatio: 2}, {Services: 1, Namespaces: 0, Nodes: 1}} {
		if _, err := Generate(p); err == nil {
			t.Errorf("Generate(%+v) succeeded, want an error", p)
		}
	}
	if err := Default().Validate(); err != nil {
		t.Errorf("Default().Validate() = %v", err)
	}
}
