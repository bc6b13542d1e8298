package dataplane

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Golden tests: testdata/golden/<case>/input.yaml on top of bookinfo ->
// <node>.json per node. Refresh with
// UPDATE_GOLDEN=1 go test ./translate/dataplane/ -run Golden.

// node-c runs only the "other" namespace's client in the virtual-service case (exportTo).
var goldenNodes = []string{"node-a", "node-b", "node-c"}

func TestGolden(t *testing.T) {
	update := os.Getenv("UPDATE_GOLDEN") == "1"
	dirs, err := filepath.Glob(filepath.Join("testdata", "golden", "*"))
	if err != nil || len(dirs) < 7 {
		t.Fatalf("golden cases under testdata/golden: %v (found %d)", err, len(dirs))
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			snap := load(t, append(base, filepath.Join(dir, "input.yaml"))...)
			mesh := Prepare(snap, Options{})
			for _, node := range goldenNodes {
				r := mesh.Translate(node)
				agentState(t, r, node) // the agent accepts it; sorted, unique names
				got := render(t, r)
				if again := render(t, Translate(snap, node)); !bytes.Equal(got, again) {
					t.Fatalf("%s: two translations of the same snapshot differ", node)
				}
				path := filepath.Join(dir, node+".json")
				if update {
					if err := os.WriteFile(path, got, 0o644); err != nil {
						t.Fatal(err)
					}
					continue
				}
				want, err := os.ReadFile(path)
				if err != nil {
					t.Fatalf("%v (run with UPDATE_GOLDEN=1 to create it)", err)
				}
				if diff := cmp.Diff(string(want), string(got)); diff != "" {
					t.Errorf("%s differs from golden (-want +got; UPDATE_GOLDEN=1 refreshes):\n%s", path, diff)
				}
			}
		})
	}
}
