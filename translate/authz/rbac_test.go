package authz

import (
	"strings"
	"testing"

	"github.com/nodemesh/nodemesh/config"
)

const customYAML = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: foo}
spec:
  action: CUSTOM
  provider: {name: my-authz}
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: foo}
spec: {rules: [{}]}
`

func TestCustomGoesToExtAuthzOnlyWhenMatched(t *testing.T) {
	for _, grpc := range []bool{true, false} {
		opts := Options{ExtAuthzProviders: map[string]ExtAuthzProvider{
			"my-authz": {Cluster: "outbound|9000||ext-authz.foo.svc.cluster.local", GRPC: grpc}}}
		filters, diags := build(t, decode(t, customYAML), httpbin, opts)
		if len(diags) > 0 {
			t.Fatal(diags)
		}
		asked := 0
		deny := func(*request) bool { asked++; return false }
		if v := evalHTTP(t, filters, request{path: "/public", extAuthz: deny}); !v.allowed || asked != 0 {
			t.Errorf("grpc=%v /public: allowed=%v, ext_authz asked %d times; want allowed without asking", grpc, v.allowed, asked)
		}
		if v := evalHTTP(t, filters, request{path: "/admin/x", extAuthz: deny}); v.allowed || asked != 1 {
			t.Errorf("grpc=%v /admin/x: allowed=%v, asked %d; want denied by ext_authz", grpc, v.allowed, asked)
		}
		if v := evalHTTP(t, filters, request{path: "/admin/x", extAuthz: func(*request) bool { return true }}); !v.allowed {
			t.Errorf("grpc=%v /admin/x with ext_authz allowing: denied by %s", grpc, v.by)
		}
	}
}

func TestCustomUnknownProviderFailsClosed(t *testing.T) {
	filters, diags := build(t, decode(t, customYAML), httpbin, Options{})
	if !config.HasErrors(diags) || !strings.Contains(diags[0].String(), `AuthorizationPolicy/foo/ext spec.provider.name: unknown ext_authz provider "my-authz"`) {
		t.Errorf("diagnostics %v", diags)
	}
	if v := evalHTTP(t, filters, request{path: "/admin"}); v.allowed {
		t.Error("/admin allowed although its CUSTOM provider is unknown")
	}
	if v := evalHTTP(t, filters, request{path: "/public"}); !v.allowed {
		t.Errorf("/public denied by %s", v.by)
	}
}

func TestInvalidRulesFailClosed(t *testing.T) {
	objs := decode(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-deny, namespace: foo}
spec:
  action: DENY
  rules:
  - from: [{source: {ipBlocks: ["10.0.0.300"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-allow, namespace: bar}
spec:
  rules:
  - to: [{operation: {ports: ["http"]}}]
  - when: [{key: source.nonsense, values: ["x"]}]
  - to: [{operation: {methods: ["GET"]}}]
`)
	filters, diags := build(t, objs, httpbin, Options{})
	var msgs []string
	for _, d := range diags {
		msgs = append(msgs, d.String())
	}
	all := strings.Join(msgs, "\n")
	for _, want := range []string{
		`AuthorizationPolicy/foo/bad-deny spec.rules[0].from[0].source.ipBlocks: invalid IP address "10.0.0.300"`,
		`AuthorizationPolicy/foo/bad-deny spec.rules[0]: rule matches every request (fails closed)`,
	} {
		if !strings.Contains(all, want) {
			t.Errorf("diagnostics:\n%s\nwant %q", all, want)
		}
	}
	if evalHTTP(t, filters, request{sourceIP: "192.0.2.1", path: "/"}).allowed {
		t.Error("the broken DENY rule let a request through")
	}
	bar := Workload{Namespace: "bar", Labels: map[string]string{}}
	filters, diags = build(t, objs, bar, Options{})
	msgs = nil
	for _, d := range diags {
		msgs = append(msgs, d.String())
	}
	all = strings.Join(msgs, "\n")
	for _, want := range []string{
		`spec.rules[0].to[0].operation.ports: invalid port "http"`,
		`spec.rules[1].when[0]: unknown attribute "source.nonsense"`,
		`spec.rules[1]: rule dropped (fails closed: it allows nothing)`,
	} {
		if !strings.Contains(all, want) {
			t.Errorf("diagnostics:\n%s\nwant %q", all, want)
		}
	}
	if evalHTTP(t, filters, request{method: "POST", path: "/"}).allowed {
		t.Error("a dropped ALLOW rule allowed a request")
	}
	if v := evalHTTP(t, filters, request{method: "GET", path: "/"}); !v.allowed {
		t.Errorf("the valid rule[2] no longer allows GET: %s", v.by)
	}
	// The valid rule keeps its Istio index.
	if got := policyNames(t, filters[0]); !strings.Contains(got, "ns[bar]-policy[bad-allow]-rule[2]") {
		t.Errorf("ALLOW filter %s lacks rule[2]", got)
	}
}

// TCP ports: Istio drops ALLOW entries with HTTP-only attributes and ignores
// those attributes in DENY rules.
func TestTCPFilters(t *testing.T) {
	objs := decode(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: foo}
spec:
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]
    to: [{operation: {ports: ["3306"]}}]
  - from: [{source: {principals: ["cluster.local/ns/default/sa/web"]}}]
    to: [{operation: {methods: ["GET"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: foo}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: ["dev"]}}]
    to: [{operation: {paths: ["/admin"]}}]
`)
	filters, diags := BuildTCP(objs, httpbin, Options{})
	if len(diags) > 0 {
		t.Fatal(diags)
	}
	if err := Validate(nil, filters); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		req   request
		allow bool
	}{
		{"sleep to 3306", request{principal: spiffe("default", "sleep"), port: 3306}, true},
		{"sleep to 80", request{principal: spiffe("default", "sleep"), port: 80}, false},
		{"web (its rule needs HTTP)", request{principal: spiffe("default", "web"), port: 3306}, false},
		{"dev sleep (DENY ignores the path)", request{principal: spiffe("dev", "sleep"), port: 3306}, false},
	} {
		if v := evalTCP(t, filters, c.req); v.allowed != c.allow {
			t.Errorf("%s: allowed=%v (%s), want %v", c.name, v.allowed, v.by, c.allow)
		}
	}
}

func TestTargetRefsService(t *testing.T) {
	objs := decode(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: svc, namespace: foo}
spec:
  targetRefs: [{kind: Service, group: "", name: httpbin}]
  action: DENY
  rules: [{}]
`)
	sel := func(ns, name string) (map[string]string, bool) {
		if ns == "foo" && name == "httpbin" {
			return map[string]string{"app": "httpbin"}, true
		}
		return nil, false
	}
	f, _ := build(t, objs, httpbin, Options{ServiceSelector: sel})
	if evalHTTP(t, f, request{path: "/"}).allowed {
		t.Error("policy targeting Service httpbin did not apply to its pod")
	}
	other := Workload{Namespace: "foo", Labels: map[string]string{"app": "other"}}
	if f, _ := build(t, objs, other, Options{ServiceSelector: sel}); len(f) != 0 {
		t.Error("policy targeting Service httpbin applied to another pod")
	}
	if f, _ := build(t, objs, httpbin, Options{}); len(f) != 0 {
		t.Error("without a ServiceSelector targetRefs must select nothing")
	}
}

func TestSplit(t *testing.T) {
	objs := decode(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: l4, namespace: foo}
spec:
  rules:
  - from: [{source: {principals: ["cluster.local/ns/a/sa/b"], namespaces: ["x"], ipBlocks: ["10.0.0.0/8"]}}]
    to: [{operation: {ports: ["80"]}}]
    when: [{key: source.namespace, values: ["x"]}, {key: destination.port, values: ["80"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: l7, namespace: foo}
spec:
  rules:
  - to: [{operation: {ports: ["80"]}}]
  - to: [{operation: {methods: ["GET"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all-l4, namespace: foo}
spec: {action: DENY, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: foo}
spec: {action: AUDIT, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: foo}
spec: {rules: [{to: [{operation: {ports: ["x"]}}]}]}
`)
	want := map[string]bool{"l4": true, "l7": false, "deny-all-l4": true, "audit": false, "broken": false}
	for _, o := range objs {
		if got := SplitObject(o, Options{}); got != want[o.Name] {
			t.Errorf("SplitObject(%s) = %v, want %v", o.Name, got, want[o.Name])
		}
	}
}
