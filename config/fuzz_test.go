package config

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzDecode checks that any input decodes without panicking into objects
// that satisfy the loader's promises and can be stored. The seeds in
// testdata/fuzz/FuzzDecode run in every `go test`.
func FuzzDecode(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, diags := Decode("f.yaml", data)
		for _, d := range diags {
			if strings.Contains(d.Message, "internal error") {
				t.Fatalf("decoder panicked: %v", d)
			}
			if d.Origin.File != "f.yaml" || d.Message == "" {
				t.Errorf("diagnostic without file or message: %#v", d)
			}
		}
		for _, o := range objs {
			if o.Name == "" || o.Origin.File != "f.yaml" || o.Origin.Line < 1 || o.Kind.Namespaced() != (o.Namespace != "") {
				t.Errorf("bad object %s at %+v", o.Key, o.Origin)
			}
			if err := validObject(o); err != nil {
				t.Error(err)
			}
		}
		objs2, diags2 := Decode("f.yaml", data)
		if !cmp.Equal(keysOf(objs), keysOf(objs2)) || len(diags) != len(diags2) {
			t.Errorf("decoding is not deterministic")
		}
		s := NewStore()
		if err := s.Replace("fuzz", objs); err != nil {
			t.Errorf("decoded objects refused by the store: %v", err)
		}
		if got := len(s.Snapshot().BySource("fuzz")); got != len(objs) {
			t.Errorf("stored %d of %d objects", got, len(objs))
		}
	})
}

func keysOf(objs []*Object) []Key {
	var out []Key
	for _, o := range objs {
		out = append(out, o.Key)
	}
	return out
}

// TestFuzzSeeds checks that the seeds mean what their names say.
func TestFuzzSeeds(t *testing.T) {
	entries, err := os.ReadDir("testdata/fuzz/FuzzDecode")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		raw, err := os.ReadFile(filepath.Join("testdata/fuzz/FuzzDecode", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		lit, ok := strings.CutPrefix(strings.TrimSpace(string(raw)), "go test fuzz v1\n[]byte(")
		data, err := strconv.Unquote(strings.TrimSuffix(lit, ")"))
		if !ok || err != nil {
			continue // a corpus entry added by the fuzzer in another format
		}
		objs, diags := Decode(e.Name(), []byte(data))
		valid := strings.HasPrefix(e.Name(), "valid_") || e.Name() == "json"
		if valid && (HasErrors(diags) || len(objs) == 0) {
			t.Errorf("%s: %d objects, diagnostics %v", e.Name(), len(objs), diags)
		}
		if !valid && e.Name() != "unsupported" && !HasErrors(diags) {
			t.Errorf("%s: no error", e.Name())
		}
	}
}
