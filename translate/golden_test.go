package translate

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Golden tests pin the translation of Istio's bookinfo sample: the
// application, its DestinationRules, one case per VirtualService sample, and
// pods on two nodes. Refresh with UPDATE_GOLDEN=1 go test ./translate/ -run Golden.

var goldenProxies = map[string]Proxy{
	"node-a":       {Node: "node-a"},
	"node-b":       {Node: "node-b"},
	"grpc-default": {Kind: ProxylessGRPC, Namespace: "default"},
}

func goldenCases(t *testing.T) map[string][]string {
	t.Helper()
	vsFiles, err := filepath.Glob(filepath.Join(istioSamples, "networking", "virtual-service-*.yaml"))
	if err != nil || len(vsFiles) == 0 {
		t.Fatalf("no VirtualService samples under %s (is ../shared beside the repository?): %v", istioSamples, err)
	}
	cases := map[string][]string{
		"no-virtual-service":      bookinfo(),
		"egress-rule-google-apis": bookinfo(vsFile("egress-rule-google-apis.yaml")),
		// Cluster IPs, Sidecar scoping, exportTo, ServiceEntry, TCP routes.
		"behaviour-mesh": bookinfo("testdata/behaviour/mesh.yaml"),
	}
	for _, f := range vsFiles {
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		cases[name] = bookinfo(f)
	}
	return cases
}

func TestGolden(t *testing.T) {
	update := os.Getenv("UPDATE_GOLDEN") == "1"
	for name, files := range goldenCases(t) {
		t.Run(name, func(t *testing.T) {
			snap := load(t, files...)
			for pname, proxy := range goldenProxies {
				nc := mustTranslate(t, snap, proxy)
				got := goldenJSON(t, nc)
				again := goldenJSON(t, Translate(snap, proxy))
				if !bytes.Equal(got, again) {
					t.Fatalf("%s: two translations of the same snapshot differ", pname)
				}
				path := filepath.Join("testdata", "golden", name, pname+".json")
				if update {
					if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
						t.Fatal(err)
					}
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

// goldenJSON renders a NodeConfig as stable, indented JSON: protojson per
// resource (its spacing is deliberately unstable), then compacted and
// re-indented by encoding/json.
func goldenJSON(t *testing.T, nc *NodeConfig) []byte {
	t.Helper()
	type doc struct {
		Listeners   []json.RawMessage `json:"listeners"`
		Routes      []json.RawMessage `json:"routes"`
		Clusters    []json.RawMessage `json:"clusters"`
		Endpoints   []json.RawMessage `json:"endpoints"`
		Diagnostics []string          `json:"diagnostics"`
	}
	raw := func(m proto.Message) json.RawMessage {
		b, err := protojson.Marshal(m)
		if err != nil {
			t.Fatalf("protojson: %v", err)
		}
		return b
	}
	var d doc
	for _, r := range nc.Listeners {
		d.Listeners = append(d.Listeners, raw(r))
	}
	for _, r := range nc.Routes {
		d.Routes = append(d.Routes, raw(r))
	}
	for _, r := range nc.Clusters {
		d.Clusters = append(d.Clusters, raw(r))
	}
	for _, r := range nc.Endpoints {
		d.Endpoints = append(d.Endpoints, raw(r))
	}
	for _, diag := range nc.Diagnostics {
		d.Diagnostics = append(d.Diagnostics, diag.String())
	}
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		t.Fatal(err)
	}
	out.WriteByte('\n')
	return out.Bytes()
}
