package config

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Every YAML example of the SMI specification (extracted into testdata/smi)
// decodes without errors, and every object is an SMI kind or a Service.
func TestSMIExamplesDecode(t *testing.T) {
	files, err := filepath.Glob("testdata/smi/*.yaml")
	if err != nil || len(files) < 50 {
		t.Fatalf("want the SMI examples in testdata/smi, got %d files (%v)", len(files), err)
	}
	counts := map[Kind]int{}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			objs, diags := Load(f)
			for _, d := range diags {
				t.Errorf("%v", d)
			}
			if len(objs) == 0 {
				t.Fatal("no objects")
			}
			for _, o := range objs {
				counts[o.Kind]++
			}
		})
	}
	for _, k := range []Kind{KindTrafficSplit, KindTrafficTarget, KindHTTPRouteGroup, KindTCPRoute, KindUDPRoute} {
		if counts[k] == 0 {
			t.Errorf("no %s among the examples", k)
		}
	}
	t.Logf("kinds decoded: %v", counts)
}

func TestSMIDecodeContent(t *testing.T) {
	objs, diags := Load("testdata/smi/traffic-access-v1alpha3-02.yaml")
	if HasErrors(diags) {
		t.Fatal(diags)
	}
	byKey := map[Key]*Object{}
	for _, o := range objs {
		byKey[o.Key] = o
	}
	tt, ok := byKey[Key{KindTrafficTarget, "default", "api-service-api"}]
	if !ok {
		t.Fatalf("TrafficTarget default/api-service-api missing: %v", objs)
	}
	want := &TrafficTarget{
		Destination: IdentityBindingSubject{Kind: "ServiceAccount", Name: "api-service", Namespace: "default"},
		Rules: []TrafficTargetRule{{Kind: "TCPRoute", Name: "api-service-port"},
			{Kind: "HTTPRouteGroup", Name: "api-service-routes", Matches: []string{"api"}}},
		Sources: []IdentityBindingSubject{{Kind: "ServiceAccount", Name: "website-service", Namespace: "default"},
			{Kind: "ServiceAccount", Name: "payments-service", Namespace: "default"}},
	}
	if diff := cmp.Diff(want, tt.Spec); diff != "" {
		t.Errorf("TrafficTarget (-want +got):\n%s", diff)
	}
	if got := byKey[Key{KindTCPRoute, "default", "api-service-port"}].Spec.(*TCPRoute).Ports(); !cmp.Equal(got, []int{8080}) {
		t.Errorf("TCPRoute ports %v, want [8080]", got)
	}
	// v1alpha2 HTTPRouteGroup: matches at the top level.
	objs, diags = Load("testdata/smi/traffic-specs-v1alpha2-00.yaml")
	if HasErrors(diags) || len(objs) != 1 {
		t.Fatal(objs, diags)
	}
	g := objs[0].Spec.(*HTTPRouteGroup)
	if len(g.Matches) != 2 || g.Matches[0].PathRegex != "/metrics" || g.Matches[1].Methods[0] != "*" {
		t.Errorf("v1alpha2 HTTPRouteGroup decoded as %+v", g)
	}
}

// The TrafficSplit v1alpha3/v1alpha4 documents show an HTTPRouteGroup with
// matches outside spec, which those versions do not allow: the verbatim
// example is an error naming the field (testdata carries the fixed form).
func TestSMIExampleMisplacedMatches(t *testing.T) {
	const doc = `apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata:
  name: ab-test
matches:
- name: firefox-users
  headers:
    user-agent: ".*Firefox.*"
`
	_, diags := Decode("ab.yaml", []byte(doc))
	if !HasErrors(diags) || !strings.Contains(diags[0].String(), "HTTPRouteGroup/default/ab-test matches: unknown field") {
		t.Errorf("diagnostics %v, want an unknown field error on matches", diags)
	}
}

func TestSMIDecodeErrors(t *testing.T) {
	cases := []struct{ name, doc, want string }{
		{"unknown spec field", `apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: s, namespace: ns}
spec: {service: a, backend: [{service: b, weight: 1}]}`, `TrafficSplit/ns/s spec.backend: unknown field`},
		{"negative weight", `apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: s}
spec: {service: a, backends: [{service: b, weight: -1}]}`, `spec.backends[0].weight: weight -1 must not be negative`},
		{"bad version", `apiVersion: split.smi-spec.io/v1alpha1
kind: TrafficSplit
metadata: {name: s}
spec: {service: a, backends: [{service: b, weight: 1}]}`, `unsupported apiVersion "split.smi-spec.io/v1alpha1"`},
		{"no sources", `apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: t}
spec: {destination: {kind: ServiceAccount, name: a}, rules: [{kind: TCPRoute, name: r}]}`, `spec.sources: at least one source is required`},
		{"bad rule kind", `apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: t}
spec: {destination: {kind: ServiceAccount, name: a}, sources: [{kind: ServiceAccount, name: b}], rules: [{kind: GRPCRoute, name: r}]}`, `spec.rules[0].kind: kind "GRPCRoute" is not supported`},
		{"bad regex", `apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: g}
spec: {matches: [{name: m, pathRegex: "/a(("}]}`, `spec.matches[0].pathRegex: invalid regular expression`},
		{"bad port", `apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {name: r}
spec: {matches: {ports: [70000]}}`, `spec.matches.ports[0]: port 70000 out of range`},
		{"wrong type", `apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {name: r}
spec: {matches: {ports: ["x"]}}`, `spec.matches.ports`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			objs, diags := Decode("f.yaml", []byte(c.doc))
			if len(objs) != 0 {
				t.Errorf("decoded %v despite the error", objs)
			}
			var all []string
			for _, d := range diags {
				all = append(all, d.String())
			}
			if !strings.Contains(strings.Join(all, "\n"), c.want) || !strings.Contains(strings.Join(all, "\n"), "f.yaml") {
				t.Errorf("diagnostics:\n%s\nwant one containing %q and the file name", strings.Join(all, "\n"), c.want)
			}
		})
	}
}
