package translate

import (
	"path/filepath"
	"testing"

	"github.com/nodemesh/nodemesh/config"
)

// istioSamples is the Istio project's sample data, beside the repository.
const istioSamples = "../../shared/testdata/istio/samples/bookinfo"

func bookinfo(extra ...string) []string {
	return append([]string{
		filepath.Join(istioSamples, "platform/kube/bookinfo.yaml"),
		filepath.Join(istioSamples, "networking/destination-rule-all.yaml"),
		"testdata/pods.yaml",
	}, extra...)
}

func vsFile(name string) string { return filepath.Join(istioSamples, "networking", name) }

// load reads files into a store and returns its snapshot; any loader error
// fails the test (Info diagnostics, e.g. Deployments, are fine).
func load(t testing.TB, files ...string) *config.Snapshot {
	t.Helper()
	objs, diags := config.Load(files...)
	for _, d := range diags {
		if d.Severity >= config.SeverityWarning {
			t.Fatalf("loading test input: %v", d)
		}
	}
	return snapshotOf(t, objs)
}

// decode reads inline YAML into a snapshot together with files.
func decode(t testing.TB, yaml string, files ...string) *config.Snapshot {
	t.Helper()
	objs, diags := config.Load(files...)
	more, d2 := config.Decode("inline.yaml", []byte(yaml))
	for _, d := range append(diags, d2...) {
		if d.Severity >= config.SeverityWarning {
			t.Fatalf("loading test input: %v", d)
		}
	}
	return snapshotOf(t, append(objs, more...))
}

func snapshotOf(t testing.TB, objs []*config.Object) *config.Snapshot {
	t.Helper()
	st := config.NewStore()
	if err := st.Replace("test", objs); err != nil {
		t.Fatalf("store: %v", err)
	}
	return st.Snapshot()
}

// mustTranslate translates and requires Check to pass.
func mustTranslate(t testing.TB, snap *config.Snapshot, p Proxy) *NodeConfig {
	t.Helper()
	nc := Translate(snap, p)
	if err := Check(nc); err != nil {
		t.Fatalf("Check(%+v): %v", p, err)
	}
	return nc
}
