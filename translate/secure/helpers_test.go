package secure

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
)

// istioSamples is the Istio project's sample data, beside the repository.
const istioSamples = "../../../shared/testdata/istio/samples/bookinfo"

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func bookinfo() []string {
	return []string{
		filepath.Join(istioSamples, "platform/kube/bookinfo.yaml"),
		filepath.Join(istioSamples, "networking/destination-rule-all.yaml"),
		"../testdata/pods.yaml",
	}
}

// decode reads the bookinfo files and inline YAML into a snapshot.
func decode(t testing.TB, yaml string) *config.Snapshot {
	t.Helper()
	objs, diags := config.Load(bookinfo()...)
	more, d2 := config.Decode("inline.yaml", []byte(yaml))
	for _, d := range append(diags, d2...) {
		if d.Severity >= config.SeverityWarning {
			t.Fatalf("loading test input: %v", d)
		}
	}
	st := config.NewStore()
	if err := st.Replace("test", append(objs, more...)); err != nil {
		t.Fatalf("store: %v", err)
	}
	return st.Snapshot()
}

// secured translates for proxy, applies the pass and requires every check
// to pass: translate.Check (Validate, names, references) and CheckSecrets
// against the identities of the node plus the trust bundle.
func secured(t testing.TB, snap *config.Snapshot, proxy translate.Proxy) (*translate.NodeConfig, []config.Diagnostic) {
	t.Helper()
	return securedWith(t, snap, proxy, Options{TrustDomain: td})
}

// securedWith is secured with opts.
func securedWith(t testing.TB, snap *config.Snapshot, proxy translate.Proxy, opts Options) (*translate.NodeConfig, []config.Diagnostic) {
	t.Helper()
	nc := translate.Translate(snap, proxy)
	diags := Apply(nc, snap, opts)
	if err := translate.Check(nc); err != nil {
		t.Fatalf("translate.Check(%+v) after Apply: %v", proxy, err)
	}
	have := []string{BundleSecretName(td)}
	for _, id := range Identities(snap, proxy.Node, td) {
		have = append(have, SecretName(id))
	}
	if err := CheckSecrets(nc, have); err != nil {
		t.Fatalf("CheckSecrets(%+v): %v", proxy, err)
	}
	return nc, diags
}

func goldenJSON(t *testing.T, nc *translate.NodeConfig, diags []config.Diagnostic) []byte {
	t.Helper()
	type doc struct {
		Listeners   []json.RawMessage `json:"listeners"`
		Routes      []json.RawMessage `json:"routes"`
		Clusters    []json.RawMessage `json:"clusters"`
		Secrets     []string          `json:"secrets"`
		Diagnostics []string          `json:"diagnostics"`
	}
	raw := func(m proto.Message) json.RawMessage {
		b, err := protojson.Marshal(m)
		if err != nil {
			t.Fatalf("protojson: %v", err)
		}
		return b
	}
	d := doc{Secrets: SecretNames(nc)}
	for _, r := range nc.Listeners {
		d.Listeners = append(d.Listeners, raw(r))
	}
	for _, r := range nc.Routes {
		d.Routes = append(d.Routes, raw(r))
	}
	for _, r := range nc.Clusters {
		d.Clusters = append(d.Clusters, raw(r))
	}
	for _, diag := range diags {
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
