package authz

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/nodemesh/nodemesh/config"
)

// Golden files pin the filters of a few workloads; refresh them with
// UPDATE_GOLDEN=1 go test ./translate/authz -run Golden.
func TestGolden(t *testing.T) {
	opts := Options{ExtAuthzProviders: map[string]ExtAuthzProvider{
		"sample-ext-authz-grpc": {Cluster: "outbound|9000||ext-authz.foo.svc.cluster.local", GRPC: true}}}
	cases := []struct {
		dir       string
		workloads []Workload
	}{
		{"bookinfo", []Workload{
			{Namespace: "default", Name: "productpage", ServiceAccount: "bookinfo-productpage", Labels: map[string]string{"app": "productpage"}},
			{Namespace: "default", Name: "details", ServiceAccount: "bookinfo-details", Labels: map[string]string{"app": "details"}},
		}},
		{"httpbin-jwt", []Workload{httpbin}},
		{"smi-api", []Workload{{Namespace: "default", Name: "api", ServiceAccount: "api-service"}}},
	}
	for _, c := range cases {
		t.Run(c.dir, func(t *testing.T) {
			dir := filepath.Join("testdata", "golden", c.dir)
			snap := snapshot(t, load(t, filepath.Join(dir, "input.yaml")))
			out := map[string]any{}
			for _, w := range c.workloads {
				f := Build(snap, w, opts)
				if err := Validate(f.HTTP, f.TCP); err != nil {
					t.Fatalf("%s: %v", w.Name, err)
				}
				if config.HasErrors(f.Diagnostics) {
					t.Fatalf("%s: %v", w.Name, f.Diagnostics)
				}
				var diags []string
				for _, d := range f.Diagnostics {
					diags = append(diags, d.String())
				}
				out[w.Name] = map[string]any{
					"http_filters": protoList(t, f.HTTP), "network_filters": protoList(t, f.TCP),
					"jwks_clusters": f.JWKSClusters, "diagnostics": diags,
				}
			}
			got, err := json.MarshalIndent(out, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			path := filepath.Join(dir, "filters.json")
			if os.Getenv("UPDATE_GOLDEN") != "" {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with UPDATE_GOLDEN=1)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from the translation; run with UPDATE_GOLDEN=1 and review the diff", path)
			}
		})
	}
}

// protoList renders messages as plain JSON values (sorted keys, stable
// whitespace): protojson, then re-encoded.
func protoList[M proto.Message](t *testing.T, ms []M) []any {
	out := []any{}
	for _, m := range ms {
		b, err := protojson.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}
