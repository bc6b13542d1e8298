package secure

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nodemesh/nodemesh/translate"
)

// Golden tests pin the secured bookinfo config under each
// PeerAuthentication mode. Refresh with
// UPDATE_GOLDEN=1 go test ./translate/secure/ -run Golden.

var goldenProxies = map[string]translate.Proxy{
	"node-a":       {Node: "node-a"},
	"node-b":       {Node: "node-b"},
	"grpc-default": {Kind: translate.ProxylessGRPC, Namespace: "default"},
}

const (
	paStrict = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
`
	paDisable = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec:
  mtls: {mode: DISABLE}
`
	// Namespace STRICT; ratings inherits it but disables mTLS on 9080,
	// reviews is PERMISSIVE except STRICT on 9080 (its only port).
	paPortLevel = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ratings, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  portLevelMtls:
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
)

var goldenCases = map[string]string{
	"permissive": "",
	"strict":     paStrict,
	"disable":    paDisable,
	"port-level": paPortLevel,
}

// behaviour-mesh adds translate's behaviour mesh: a named targetPort, a
// TCP service with weighted subsets, a Sidecar, ServiceEntries (outside
// the mesh: no identity) and a second namespace.
func init() {
	b, err := os.ReadFile("../testdata/behaviour/mesh.yaml")
	if err != nil {
		panic("translate/secure tests: " + err.Error())
	}
	goldenCases["behaviour-mesh"] = string(b)
}

// goldenModes are the ways to give accounts their identity: transport
// socket selection (testdata/golden) and per-account copies
// (testdata/golden-per-account, the output before selection existed).
var goldenModes = map[string]Options{
	"golden":             {TrustDomain: td},
	"golden-per-account": {TrustDomain: td, PerAccountClusters: true},
}

func TestGolden(t *testing.T) {
	update := os.Getenv("UPDATE_GOLDEN") == "1"
	for dir, opts := range goldenModes {
		for name, yaml := range goldenCases {
			t.Run(dir+"/"+name, func(t *testing.T) {
				testGolden(t, update, dir, name, yaml, opts)
			})
		}
	}
}

func testGolden(t *testing.T, update bool, dir, name, yaml string, opts Options) {
	snap := decode(t, yaml)
	for pname, proxy := range goldenProxies {
		nc, diags := securedWith(t, snap, proxy, opts)
		got := goldenJSON(t, nc, diags)
		nc2, diags2 := securedWith(t, snap, proxy, opts)
		if !bytes.Equal(got, goldenJSON(t, nc2, diags2)) {
			t.Fatalf("%s: two passes over the same snapshot differ", pname)
		}
		path := filepath.Join("testdata", dir, name, pname+".json")
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
}
