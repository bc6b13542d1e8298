package inboundauthz

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
	"github.com/nodemesh/nodemesh/translate/authz"
	"github.com/nodemesh/nodemesh/translate/secure"
)

// Golden files pin node-a's inbound listeners, inbound routes and the
// clusters Apply adds or changes, for bookinfo plus testdata/golden/
// input.yaml, with translate alone and after translate/secure (PERMISSIVE,
// the default, STRICT, and port-level modes). Refresh with
// UPDATE_GOLDEN=1 go test ./translate/inboundauthz/ -run Golden.

const istioBookinfo = "../../../shared/testdata/istio/samples/bookinfo/platform/kube/bookinfo.yaml"

const strict = `
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
`

// portLevel: namespace STRICT, details PERMISSIVE but STRICT on 8080 (a
// port of no service) and DISABLE on 9080, reviews STRICT on 9080 only.
// secure gives these pods port-specific chains that Apply must reuse
// rather than duplicate.
const portLevel = `
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: details, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls:
    8080: {mode: STRICT}
    9080: {mode: DISABLE}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls:
    9080: {mode: STRICT}
`

func loadSnapshot(t testing.TB, extra string) *config.Snapshot {
	t.Helper()
	objs, diags := config.Load(istioBookinfo, "../testdata/pods.yaml", "testdata/golden/input.yaml")
	more, d2 := config.Decode("inline.yaml", []byte(extra))
	for _, d := range append(diags, d2...) {
		if d.Severity >= config.SeverityWarning {
			t.Fatalf("loading test input: %v", d)
		}
	}
	st := config.NewStore()
	if err := st.Replace("test", append(objs, more...)); err != nil {
		t.Fatal(err)
	}
	return st.Snapshot()
}

// build runs the pipeline for node-a and checks the result.
func build(t *testing.T, snap *config.Snapshot, withSecure bool) (*translate.NodeConfig, []config.Diagnostic) {
	t.Helper()
	nc := translate.Translate(snap, translate.Proxy{Node: "node-a"})
	if withSecure {
		secure.Apply(nc, snap, secure.Options{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	}
	diags := Apply(nc, snap, authz.Options{})
	if err := Check(nc, translate.Check); err != nil {
		t.Fatalf("Check after Apply: %v", err)
	}
	return nc, diags
}

func TestGolden(t *testing.T) {
	cases := []struct {
		name   string
		secure bool
		extra  string
	}{
		{"plain", false, ""},
		{"permissive", true, ""},
		{"strict", true, strict},
		{"port-level", true, portLevel},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			snap := loadSnapshot(t, c.extra)
			nc, diags := build(t, snap, c.secure)
			got := goldenJSON(t, nc, diags)
			nc2, diags2 := build(t, snap, c.secure)
			if !bytes.Equal(got, goldenJSON(t, nc2, diags2)) {
				t.Fatal("two passes over the same snapshot differ")
			}
			path := filepath.Join("testdata", "golden", c.name+".json")
			if os.Getenv("UPDATE_GOLDEN") != "" {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with UPDATE_GOLDEN=1 to create it)", err)
			}
			if diff := cmp.Diff(string(want), string(got)); diff != "" {
				t.Errorf("%s differs (-want +got; UPDATE_GOLDEN=1 refreshes):\n%s", path, diff)
			}
		})
	}
}

// goldenJSON keeps what Apply touches: inbound listeners, the inbound
// route configurations and clusters, and the JWKS cluster.
func goldenJSON(t *testing.T, nc *translate.NodeConfig, diags []config.Diagnostic) []byte {
	t.Helper()
	raw := func(m proto.Message) json.RawMessage {
		b, err := protojson.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	inbound := func(name string) bool { return strings.HasPrefix(name, "inbound") }
	var d struct {
		Listeners   []json.RawMessage `json:"listeners"`
		Routes      []json.RawMessage `json:"routes"`
		Clusters    []json.RawMessage `json:"clusters"`
		Diagnostics []string          `json:"diagnostics"`
	}
	for _, l := range nc.Listeners {
		if inbound(l.GetName()) {
			d.Listeners = append(d.Listeners, raw(l))
		}
	}
	for _, r := range nc.Routes {
		if inbound(r.GetName()) {
			d.Routes = append(d.Routes, raw(r))
		}
	}
	for _, c := range nc.Clusters {
		if inbound(c.GetName()) || strings.Contains(c.GetName(), "issuer.example.com") {
			d.Clusters = append(d.Clusters, raw(c))
		}
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
