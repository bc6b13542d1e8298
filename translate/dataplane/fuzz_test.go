package dataplane

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/nodemesh/nodemesh/config"
)

// FuzzTranslate decodes arbitrary YAML next to bookinfo, translates it for
// three nodes and requires no panic, the same bytes twice, and resources the
// node agent accepts (ads.ToState would otherwise NACK the whole set). The
// golden inputs are seeds; `go test -fuzz FuzzTranslate
// ./translate/dataplane/` explores further (corpus in testdata/fuzz).
func FuzzTranslate(f *testing.F) {
	baseObjs := sync.OnceValue(func() []*config.Object {
		objs, _ := config.Load(base...)
		return objs
	})
	inputs, _ := filepath.Glob(filepath.Join("testdata", "golden", "*", "input.yaml"))
	if len(inputs) == 0 {
		f.Fatal("no golden inputs to seed from")
	}
	for _, p := range inputs {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, _ := config.Decode("fuzz.yaml", data)
		st := config.NewStore()
		if err := st.Replace("base", baseObjs()); err != nil {
			t.Fatalf("base: %v", err)
		}
		if err := st.Replace("fuzz", objs); err != nil {
			return // e.g. an object that is also in the base set
		}
		snap := st.Snapshot()
		mesh := Prepare(snap, Options{})
		for _, node := range []string{"node-a", "node-b", "node-c"} {
			r := mesh.Translate(node)
			if !bytes.Equal(render(t, r), render(t, Translate(snap, node))) {
				t.Fatalf("%s: two translations differ", node)
			}
			agentState(t, r, node)
		}
	})
}
