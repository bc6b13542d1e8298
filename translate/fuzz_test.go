package translate

import (
	"sync"
	"testing"

	"github.com/nodemesh/nodemesh/config"
)

// FuzzTranslate decodes arbitrary YAML next to the bookinfo sample,
// translates it for both proxy kinds and requires a consistent result and
// no panic. Seeds live in testdata/fuzz/FuzzTranslate and run in every
// `go test`; `go test -fuzz FuzzTranslate ./translate/` explores further.
func FuzzTranslate(f *testing.F) {
	base := sync.OnceValue(func() []*config.Object {
		objs, _ := config.Load(bookinfo()...)
		return objs
	})
	f.Add([]byte("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 80, name: http}]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, _ := config.Decode("fuzz.yaml", data)
		st := config.NewStore()
		if err := st.Replace("base", base()); err != nil {
			t.Fatalf("base: %v", err)
		}
		if err := st.Replace("fuzz", objs); err != nil {
			return // e.g. an object that is also in the base set
		}
		snap := st.Snapshot()
		for _, p := range []Proxy{{Node: "node-a"}, {Node: "node-b"}, {Kind: ProxylessGRPC, Namespace: "default"}, {Kind: ProxylessGRPC, Namespace: "other"}} {
			nc := Translate(snap, p)
			if err := Check(nc); err != nil {
				t.Fatalf("Check(%+v): %v", p, err)
			}
		}
	})
}
