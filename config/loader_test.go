package config

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	corev1 "k8s.io/api/core/v1"
)

const istioTestdata = "../../shared/testdata/istio"

// invalidIstioFiles are files of the Istio test data that are deliberately
// refused, with the errors they must give.
var invalidIstioFiles = map[string][]string{
	// websocketUpgrade was removed from the HTTPRoute API (Istio upgrades
	// websockets by default); this file still carries it.
	"tests/testdata/config/rule-websocket-route.yaml": {
		"Error [FILE:37] VirtualService/testns/websocket-route spec.http[0].websocketUpgrade: unknown field (line 56)",
		"Error [FILE:60] VirtualService/testns/websocket-route2 spec.http[0].websocketUpgrade: unknown field (line 79)",
	},
}

// TestLoadIstioTestdata loads every file of the Istio samples and pilot test
// configuration one by one.
func TestLoadIstioTestdata(t *testing.T) {
	if _, err := os.Stat(istioTestdata); err != nil {
		t.Fatalf("shared test data missing: %v", err)
	}
	var files []string
	err := filepath.WalkDir(istioTestdata, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && isConfigFile(p) {
			files = append(files, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	perKind := map[Kind]int{}
	unsupported := map[string]int{}
	for _, file := range files {
		rel, _ := filepath.Rel(istioTestdata, file)
		objs, diags := Load(file)
		var errs []string
		for _, d := range diags {
			switch d.Severity {
			case SeverityError, SeverityWarning:
				errs = append(errs, strings.ReplaceAll(d.String(), file, "FILE"))
			case SeverityInfo:
				if !strings.HasPrefix(d.Message, "unsupported kind ") {
					t.Errorf("%s: unexpected info %v", rel, d)
				}
				unsupported[strings.TrimSuffix(strings.TrimPrefix(d.Message, "unsupported kind "), ": ignored")]++
			}
		}
		// Every top-level object of the file is accounted for: decoded,
		// unsupported or refused.
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if want, got := strings.Count("\n"+string(raw), "\nkind: "), len(objs)+len(diags); got != want {
			t.Errorf("%s: %d objects and diagnostics for %d top-level kinds", rel, got, want)
		}
		if diff := cmp.Diff(invalidIstioFiles[filepath.ToSlash(rel)], errs); diff != "" {
			t.Errorf("%s: diagnostics (-want +got):\n%s", rel, diff)
		}
		for _, o := range objs {
			perKind[o.Kind]++
			if o.Origin.File != file || o.Origin.Line < 1 {
				t.Errorf("%s: %s has origin %+v", rel, o.Key, o.Origin)
			}
		}
	}
	t.Logf("loaded %d files", len(files))
	for _, k := range slices.Sorted(mapKeys(toStringMap(perKind))) {
		t.Logf("  %-22s %d", k, perKind[Kind(k)])
	}
	for _, k := range slices.Sorted(mapKeys(unsupported)) {
		t.Logf("  unsupported %-40s %d", k, unsupported[k])
	}
	// Every supported kind that occurs in the data decoded at least once.
	for _, k := range []Kind{KindService, KindServiceAccount, KindVirtualService, KindDestinationRule,
		KindGateway, KindServiceEntry, KindSidecar, KindPeerAuthentication} {
		if perKind[k] == 0 {
			t.Errorf("no %s decoded from the Istio test data", k)
		}
	}
	if unsupported["apps/v1 Deployment"] == 0 || unsupported["gateway.networking.k8s.io/v1 Gateway"] == 0 {
		t.Errorf("Deployments and Gateway API Gateways should be reported unsupported, got %v", unsupported)
	}
}

func toStringMap(m map[Kind]int) map[string]int {
	out := map[string]int{}
	for k, v := range m {
		out[string(k)] = v
	}
	return out
}

// TestLoadIstioTestdataTree loads the whole tree at once: the samples hold
// alternative versions of the same objects, which must be reported as
// duplicates (and nothing else but the known invalid file).
func TestLoadIstioTestdataTree(t *testing.T) {
	objs, diags := Load(istioTestdata)
	dups := 0
	for _, d := range diags {
		switch {
		case d.Severity != SeverityError:
		case strings.HasPrefix(d.Message, "duplicate object, first defined at "):
			dups++
		case strings.HasSuffix(d.Origin.File, "rule-websocket-route.yaml"):
		default:
			t.Errorf("unexpected %v", d)
		}
	}
	seen := map[Key]bool{}
	for _, o := range objs {
		if seen[o.Key] {
			t.Errorf("%s returned twice", o.Key)
		}
		seen[o.Key] = true
	}
	if dups == 0 || len(objs) < 100 {
		t.Errorf("got %d objects and %d duplicates; want >= 100 objects and some duplicates", len(objs), dups)
	}
	t.Logf("whole tree: %d objects, %d duplicates reported", len(objs), dups)
}

func TestDecodeTypedSpecs(t *testing.T) {
	objs, diags := Load(filepath.Join(istioTestdata, "samples/bookinfo/networking/virtual-service-reviews-80-20.yaml"),
		filepath.Join(istioTestdata, "samples/bookinfo/platform/kube/bookinfo.yaml"),
		filepath.Join(istioTestdata, "tests/testdata/config/destination-rule-all.yaml"))
	if HasErrors(diags) {
		t.Fatalf("diagnostics: %v", diags)
	}
	byKey := map[Key]*Object{}
	for _, o := range objs {
		byKey[o.Key] = o
	}
	vs, ok := byKey[Key{KindVirtualService, "default", "reviews"}].Spec.(*networkingv1alpha3.VirtualService)
	if !ok {
		t.Fatalf("VirtualService default/reviews missing or mistyped: %v", byKey)
	}
	var weights []int32
	for _, r := range vs.GetHttp()[0].GetRoute() {
		weights = append(weights, r.GetWeight())
	}
	if diff := cmp.Diff([]int32{80, 20}, weights); diff != "" {
		t.Errorf("weights (-want +got):\n%s", diff)
	}
	svc, ok := byKey[Key{KindService, "default", "productpage"}].Spec.(*corev1.Service)
	if !ok || svc.Spec.Ports[0].Port != 9080 || svc.Spec.Selector["app"] != "productpage" || svc.Namespace != "default" {
		t.Errorf("Service default/productpage: %+v", svc)
	}
	if o := byKey[Key{KindService, "default", "productpage"}]; o.Labels["app"] != "productpage" || o.APIVersion != "v1" {
		t.Errorf("Service object: %+v", o)
	}
	// "1m" (a Go duration, which Istio accepts) became 60s.
	dr, ok := byKey[Key{KindDestinationRule, "testns", "destall"}].Spec.(*networkingv1alpha3.DestinationRule)
	if !ok {
		t.Fatalf("DestinationRule testns/destall missing")
	}
	if got := dr.GetTrafficPolicy().GetOutlierDetection().GetBaseEjectionTime().AsDuration(); got != time.Minute {
		t.Errorf("baseEjectionTime = %v, want 1m", got)
	}
}

// TestDecodeErrors checks the diagnostics of bad input: each names the file,
// line, document, object and field.
func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []Diagnostic
	}{{
		name: "unknown field in an Istio spec",
		yaml: `# routes
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: ratings
  namespace: shop
spec:
  hosts: [ratings]
  http:
  - route:
    - destination: {host: ratings}
  - rout:
    - destination: {host: ratings}
`,
		want: []Diagnostic{{Severity: SeverityError, Origin: Origin{File: "f.yaml", Doc: 1, Line: 8},
			Object: Key{KindVirtualService, "shop", "ratings"}, Field: "spec.http[1].rout", Message: "unknown field (line 18)"}},
	}, {
		name: "unknown field in a core object",
		yaml: `apiVersion: v1
kind: Service
metadata: {name: a}
spec: {ports: [{port: 80}]}
---

---
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: shop
spec:
  containers:
  - name: web
    image: web
    ports:
    - containerPort: 8080
      protocl: TCP
`,
		want: []Diagnostic{{Severity: SeverityError, Origin: Origin{File: "f.yaml", Doc: 1, Line: 8},
			Object: Key{KindPod, "shop", "web-0"}, Field: "spec.containers[0].ports[0].protocl", Message: "unknown field (line 19)"}},
	}, {
		name: "object named with the default namespace",
		yaml: "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sa}\nsecrets: [{nam: x}]\n",
		want: []Diagnostic{{Severity: SeverityError, Origin: Origin{File: "f.yaml", Line: 1},
			Object: Key{KindServiceAccount, "default", "sa"}, Field: "secrets[0].nam", Message: "unknown field (line 4)"}},
	}, {
		name: "wrong type in a core object",
		yaml: "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: b}\nspec:\n  ports:\n  - port: eighty\n",
		want: []Diagnostic{{Severity: SeverityError, Origin: Origin{File: "f.yaml", Line: 1},
			Object: Key{KindService, "b", "a"}, Field: "spec.ports[0].port",
			Message: `cannot unmarshal string into Go struct field ServicePort.spec.ports.port of type int32 (line 6)`}},
	}, {
		name: "bad enum in an Istio spec",
		yaml: "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICTLY}\n",
		want: []Diagnostic{{Severity: SeverityError, Origin: Origin{File: "f.yaml", Line: 1},
			Object: Key{KindPeerAuthentication, "istio-system", "default"}, Field: "spec.mtls.mode",
			Message: `invalid value for enum field mode: "STRICTLY" (line 5)`}},
	}, {
		name: "unknown field in Istio metadata and top level",
		yaml: "apiVersion: networking.istio.io/v1alpha3\nkind: Gateway\nmetadata: {name: gw, labelz: {a: b}}\nspek: {}\n",
		want: []Diagnostic{
			{Severity: SeverityError, Origin: Origin{File: "f.yaml", Line: 1}, Object: Key{KindGateway, "default", "gw"},
				Field: "spek", Message: "unknown field (line 4)"},
			{Severity: SeverityError, Origin: Origin{File: "f.yaml", Line: 1}, Object: Key{KindGateway, "default", "gw"},
				Field: "metadata.labelz", Message: "unknown field (line 3)"},
		},
	}, {
		name: "unsupported apiVersion of a supported kind",
		yaml: "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: x}\n",
		want: []Diagnostic{{Severity: SeverityError, Origin: Origin{File: "f.yaml", Line: 1},
			Object: Key{Kind: KindVirtualService, Name: "x"}, Field: "apiVersion",
			Message: `unsupported apiVersion "networking.istio.io/v2" for kind VirtualService (supported: networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3) (line 1)`}},
	}, {
		name: "unsupported kinds are information",
		yaml: "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\n",
		want: []Diagnostic{
			{Severity: SeverityInfo, Origin: Origin{File: "f.yaml", Line: 1}, Object: Key{Kind: "Deployment", Name: "d"},
				Message: "unsupported kind apps/v1 Deployment: ignored"},
			{Severity: SeverityInfo, Origin: Origin{File: "f.yaml", Doc: 1, Line: 5}, Object: Key{Kind: "Gateway", Name: "g"},
				Message: "unsupported kind gateway.networking.k8s.io/v1 Gateway: ignored"},
		},
	}, {
		name: "YAML syntax error with a file line",
		yaml: "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: b\n  labels: [a: b\n",
		want: []Diagnostic{{Severity: SeverityError, Origin: Origin{File: "f.yaml", Doc: 1, Line: 5},
			Message: "invalid YAML: yaml: line 9: did not find expected ',' or ']'"}},
	}, {
		name: "missing kind and name",
		yaml: "apiVersion: v1\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {namespace: a}\n",
		want: []Diagnostic{
			{Severity: SeverityError, Origin: Origin{File: "f.yaml", Line: 1}, Object: Key{Name: "a"},
				Field: "kind", Message: "kind is required and must be a string"},
			{Severity: SeverityError, Origin: Origin{File: "f.yaml", Doc: 1, Line: 4}, Object: Key{KindServiceAccount, "a", ""},
				Field: "metadata.name", Message: "name is required (line 6)"},
		},
	}, {
		name: "not a mapping",
		yaml: "- a\n- b\n",
		want: []Diagnostic{{Severity: SeverityError, Origin: Origin{File: "f.yaml", Line: 1},
			Message: "document is not a mapping (object)"}},
	}, {
		name: "duplicate object",
		yaml: "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n",
		want: []Diagnostic{{Severity: SeverityError, Origin: Origin{File: "f.yaml", Doc: 1, Line: 5},
			Object: Key{Kind: KindNamespace, Name: "a"}, Message: "duplicate object, first defined at f.yaml:1"}},
	}, {
		name: "error inside a List item",
		yaml: "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: b, nmae: c}\n",
		want: []Diagnostic{{Severity: SeverityError, Origin: Origin{File: "f.yaml", Line: 1},
			Object: Key{Kind: KindNamespace, Name: "b"}, Field: "items[1].metadata.nmae", Message: "unknown field (line 9)"}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, diags := Decode("f.yaml", []byte(tt.yaml))
			if diff := cmp.Diff(tt.want, diags); diff != "" {
				t.Errorf("diagnostics (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeDocumentsAndDefaults(t *testing.T) {
	in := "\ufeff# leading comment\n---\n" + // BOM, an empty first document
		"apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, namespace: ignored}\n" +
		"--- # second\r\n" +
		"apiVersion: v1\r\nkind: List\r\nitems:\r\n- {apiVersion: v1, kind: ServiceAccount, metadata: {name: web}}\r\n" +
		"- apiVersion: discovery.k8s.io/v1\r\n  kind: EndpointSlice\r\n  metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\r\n  addressType: IPv4\r\n  endpoints: [{addresses: [10.0.0.1]}]\r\n" +
		"---\n~\n---\n" +
		`{"apiVersion": "security.istio.io/v1beta1", "kind": "AuthorizationPolicy", "metadata": {"name": "deny"}, "spec": {"action": "DENY"}}` + "\n"
	objs, diags := Decode("f.yaml", []byte(in))
	if len(diags) != 0 {
		t.Fatalf("diagnostics: %v", diags)
	}
	var got []string
	for _, o := range objs {
		got = append(got, o.Key.String()+" "+o.Origin.String()+" doc "+string(rune('0'+o.Origin.Doc)))
	}
	want := []string{
		"Namespace/shop f.yaml:3 doc 0",
		"ServiceAccount/default/web f.yaml:7 doc 1",
		"EndpointSlice/shop/web-1 f.yaml:7 doc 1",
		"AuthorizationPolicy/default/deny f.yaml:19 doc 3",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("objects (-want +got):\n%s", diff)
	}
	if sa := objs[1].Spec.(*corev1.ServiceAccount); sa.Namespace != "default" {
		t.Errorf("ServiceAccount namespace in spec = %q, want default", sa.Namespace)
	}
	if ns := objs[0].Spec.(*corev1.Namespace); ns.Namespace != "" {
		t.Errorf("Namespace has namespace %q", ns.Namespace)
	}
}

// TestLoadDirectory loads a directory laid out like a mounted ConfigMap:
// symbolic links to files in a hidden directory, which must be read once.
func TestLoadDirectory(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "..2026_11_24")
	mustWrite(t, filepath.Join(data, "ns.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
	mustWrite(t, filepath.Join(data, "sa.json"), `{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"s","namespace":"a"}}`)
	mustWrite(t, filepath.Join(dir, "sub", "README.md"), "not config")
	mustWrite(t, filepath.Join(dir, "sub", "pod.YML"), "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a}\nspec: {nodeName: n1}\n")
	for _, f := range []string{"ns.yaml", "sa.json"} {
		if err := os.Symlink(filepath.Join("..2026_11_24", f), filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	objs, diags := Load(dir, filepath.Join(dir, "missing.yaml"))
	var keys []string
	for _, o := range objs {
		keys = append(keys, o.Key.String())
	}
	sort.Strings(keys)
	if diff := cmp.Diff([]string{"Namespace/a", "Pod/a/p", "ServiceAccount/a/s"}, keys); diff != "" {
		t.Errorf("objects (-want +got):\n%s", diff)
	}
	if len(diags) != 1 || diags[0].Origin.File != filepath.Join(dir, "missing.yaml") || !strings.Contains(diags[0].Message, "no such file") {
		t.Errorf("want one error for missing.yaml, got %v", diags)
	}
}

// TestLoadSymlinkedDirectory loads a directory given as a symbolic link
// (e.g. a mount point swapped atomically) whose own name starts with a dot.
func TestLoadSymlinkedDirectory(t *testing.T) {
	dir := t.TempDir()
	mustWrite(t, filepath.Join(dir, ".v1", "ns.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
	link := filepath.Join(dir, ".current")
	if err := os.Symlink(".v1", link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{link, filepath.Join(dir, ".v1")} {
		objs, diags := Load(p)
		if len(objs) != 1 || len(diags) != 0 {
			t.Errorf("Load(%s): %v, %v", p, keys(objs), diags)
		}
	}
}

func mustWrite(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestDecodeInvalidNames(t *testing.T) {
	in := "apiVersion: v1\nkind: Service\nmetadata: {name: 1web, namespace: Shop}\n---\n" +
		"apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: a_b}\n---\n" +
		"apiVersion: v1\nkind: Pod\nmetadata: {name: web-0.a}\n" // a valid subdomain
	objs, diags := Decode("f.yaml", []byte(in))
	var got []string
	for _, d := range diags {
		got = append(got, d.Object.String()+" "+d.Field+" "+d.Message[:strings.Index(d.Message, ":")])
	}
	want := []string{
		`Service/Shop/1web metadata.name invalid value "1web"`,
		`Service/Shop/1web metadata.namespace invalid value "Shop"`,
		`Sidecar/default/a_b metadata.name invalid value "a_b"`,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if len(objs) != 1 || objs[0].Name != "web-0.a" {
		t.Errorf("objects %v", keys(objs))
	}
}

// TestDecodeLargeStreamInOrder decodes enough documents to go parallel and
// checks that objects and diagnostics keep the stream's order.
func TestDecodeLargeStreamInOrder(t *testing.T) {
	var b strings.Builder
	for i := range 300 {
		if i%50 == 7 {
			fmt.Fprintf(&b, "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sa%d, nmae: x}\n", i)
			continue
		}
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sa%d}\n", i)
	}
	objs, diags := Decode("big.yaml", []byte(b.String()))
	if len(objs) != 294 || len(diags) != 6 {
		t.Fatalf("%d objects, %d diagnostics", len(objs), len(diags))
	}
	prev := -1
	for _, o := range objs {
		var n int
		fmt.Sscanf(o.Name, "sa%d", &n)
		if o.Origin.Doc != n || o.Origin.Line != 4*n+2 || n <= prev {
			t.Fatalf("%s at %+v after sa%d", o.Name, o.Origin, prev)
		}
		prev = n
	}
	for i, d := range diags {
		if want := 50*i + 7; d.Origin.Doc != want || d.Field != "metadata.nmae" {
			t.Errorf("diagnostic %d: %v, want document %d", i, d, want)
		}
	}
}
