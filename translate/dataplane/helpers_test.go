package dataplane

import (
	"bytes"
	"encoding/json"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/nodemesh/nodemesh/config"
)

// base is bookinfo with its pods on node-a and node-b.
var base = []string{"testdata/bookinfo.yaml", "testdata/pods.yaml"}

// load reads files into a store snapshot; loader warnings fail the test.
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

// decode reads inline YAML on top of the base files.
func decode(t testing.TB, yaml string) *config.Snapshot {
	t.Helper()
	objs, diags := config.Load(base...)
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

// render turns Resources into stable, indented JSON: protojson per resource
// (whose spacing is deliberately unstable), re-indented by encoding/json.
func render(t testing.TB, r *Resources) []byte {
	t.Helper()
	type doc struct {
		Listeners   []json.RawMessage `json:"listeners"`
		Workloads   []json.RawMessage `json:"workloads"`
		Services    []json.RawMessage `json:"services"`
		Policies    []json.RawMessage `json:"policies"`
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
	for _, m := range r.Listeners {
		d.Listeners = append(d.Listeners, raw(m))
	}
	for _, m := range r.Workloads {
		d.Workloads = append(d.Workloads, raw(m))
	}
	for _, m := range r.Services {
		d.Services = append(d.Services, raw(m))
	}
	for _, m := range r.Policies {
		d.Policies = append(d.Policies, raw(m))
	}
	for _, diag := range r.Diagnostics {
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
