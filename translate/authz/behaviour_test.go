package authz

import (
	"strings"
	"testing"

	"github.com/nodemesh/nodemesh/config"
)

// Hand-worked cases from Istio's AuthorizationPolicy reference and tasks
// (istio.io/latest/docs/reference/config/security/authorization-policy/).
func TestIstioDocumentedBehaviour(t *testing.T) {
	type check struct {
		name  string
		req   request
		allow bool
	}
	sleep := spiffe("default", "sleep")
	googleJWT := map[string]any{"iss": "https://accounts.google.com", "sub": "alice", "groups": []any{"group1", "group2"}}
	cases := []struct {
		name   string
		yaml   string
		checks []check
	}{{
		name: "allow GET from sleep to /info*, POST from test to /data, with the issuer claim",
		yaml: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin, namespace: foo}
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    - source:
        namespaces: ["test"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/info*"]
    - operation:
        methods: ["POST"]
        paths: ["/data"]
    when:
    - key: request.auth.claims[iss]
      values: ["https://accounts.google.com"]
`,
		checks: []check{
			{"sleep GET /info with google token", request{principal: sleep, method: "GET", path: "/info/x?a=1", jwt: googleJWT}, true},
			{"sleep GET /info without token", request{principal: sleep, method: "GET", path: "/info"}, false},
			{"sleep POST /info", request{principal: sleep, method: "POST", path: "/info", jwt: googleJWT}, false},
			{"test ns POST /data", request{principal: spiffe("test", "any"), method: "POST", path: "/data", jwt: googleJWT}, true},
			{"test ns POST /data/x", request{principal: spiffe("test", "any"), method: "POST", path: "/data/x", jwt: googleJWT}, false},
			{"other sa GET /info", request{principal: spiffe("default", "other"), method: "GET", path: "/info", jwt: googleJWT}, false},
			{"other issuer", request{principal: sleep, method: "GET", path: "/info", jwt: map[string]any{"iss": "https://evil"}}, false},
			{"plaintext", request{method: "GET", path: "/info", jwt: googleJWT}, false},
		},
	}, {
		name: "deny requests not from namespace foo (selector)",
		yaml: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin-deny, namespace: foo}
spec:
  selector:
    matchLabels: {app: httpbin, version: v1}
  action: DENY
  rules:
  - from:
    - source:
        notNamespaces: ["foo"]
`,
		checks: []check{
			{"from foo", request{principal: spiffe("foo", "a"), path: "/"}, true},
			{"from bar", request{principal: spiffe("bar", "a"), path: "/"}, false},
			{"plaintext (no namespace)", request{path: "/"}, false},
		},
	}, {
		name: "deny from namespace dev",
		yaml: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-dev, namespace: foo}
spec:
  action: DENY
  rules:
  - from:
    - source: {namespaces: ["dev"]}
`,
		checks: []check{
			{"from dev", request{principal: spiffe("dev", "x")}, false},
			{"from prod", request{principal: spiffe("prod", "x")}, true},
			{"from devel (not a prefix match)", request{principal: spiffe("devel", "x")}, true},
		},
	}, {
		name: "allow-nothing: ALLOW with no rules denies all",
		yaml: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: foo}
spec: {}
`,
		checks: []check{{"anyone", request{principal: sleep, method: "GET", path: "/"}, false}},
	}, {
		name: "allow-all: rules [{}] allows all, also beside allow-nothing",
		yaml: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: foo}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: foo}
spec:
  action: ALLOW
  rules: [{}]
`,
		checks: []check{{"anyone", request{method: "GET", path: "/"}, true}},
	}, {
		name: "deny-all: DENY with rules [{}] wins over allow-all",
		yaml: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: foo}
spec:
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: foo}
spec:
  rules: [{}]
`,
		checks: []check{{"anyone", request{principal: sleep, path: "/"}, false}},
	}, {
		name: "DENY before ALLOW: allow GET, deny /admin",
		yaml: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: foo}
spec:
  rules:
  - to: [{operation: {methods: ["GET"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin", "/admin/*"]}}]
`,
		checks: []check{
			{"GET /", request{method: "GET", path: "/"}, true},
			{"GET /admin", request{method: "GET", path: "/admin"}, false},
			{"GET /admin/x", request{method: "GET", path: "/admin/x"}, false},
			{"POST /", request{method: "POST", path: "/"}, false},
		},
	}, {
		name: "require JWT on every path but /healthz (notPaths, notRequestPrincipals)",
		yaml: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: foo}
spec:
  action: DENY
  rules:
  - from:
    - source: {notRequestPrincipals: ["*"]}
    to:
    - operation: {notPaths: ["/healthz"]}
`,
		checks: []check{
			{"no token /headers", request{path: "/headers"}, false},
			{"no token /healthz", request{path: "/healthz"}, true},
			{"token /headers", request{path: "/headers", jwt: googleJWT}, true},
		},
	}, {
		name: "path templates {*} and {**}",
		yaml: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: templates, namespace: foo}
spec:
  rules:
  - to:
    - operation: {paths: ["/foo/{*}/bar", "/static/{**}"]}
`,
		checks: []check{
			{"/foo/x/bar", request{path: "/foo/x/bar"}, true},
			{"/foo/x/y/bar", request{path: "/foo/x/y/bar"}, false},
			{"/foo//bar", request{path: "/foo//bar"}, false},
			{"/static/a/b/c.css", request{path: "/static/a/b/c.css"}, true},
			{"/staticx/a", request{path: "/staticx/a"}, false},
		},
	}, {
		name: "when request.auth.claims[groups] (list claim) and requestPrincipals",
		yaml: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: groups, namespace: foo}
spec:
  rules:
  - from:
    - source: {requestPrincipals: ["https://accounts.google.com/*"]}
    when:
    - key: request.auth.claims[groups]
      values: ["group1"]
`,
		checks: []check{
			{"in group1", request{jwt: googleJWT}, true},
			{"in group3 only", request{jwt: map[string]any{"iss": "https://accounts.google.com", "sub": "bob", "groups": []any{"group3"}}}, false},
			{"group as string", request{jwt: map[string]any{"iss": "https://accounts.google.com", "sub": "bob", "groups": "group1"}}, true},
			{"other issuer", request{jwt: map[string]any{"iss": "https://x", "sub": "bob", "groups": []any{"group1"}}}, false},
			{"no token", request{}, false},
		},
	}, {
		name: "hosts (case-insensitive), ports, ipBlocks, remoteIpBlocks, headers, sni",
		yaml: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: misc, namespace: foo}
spec:
  rules:
  - from:
    - source: {ipBlocks: ["10.1.0.0/16"], notIpBlocks: ["10.1.2.3"]}
    to:
    - operation: {hosts: ["httpbin.foo.svc.cluster.local", "*.example.com"], ports: ["8000"]}
    when:
    - {key: "request.headers[x-token]", values: ["admin"]}
  - from:
    - source: {remoteIpBlocks: ["192.0.2.0/24"]}
    when:
    - {key: connection.sni, values: ["*.secure.local"]}
`,
		checks: []check{
			{"all match", request{sourceIP: "10.1.1.1", host: "HTTPBIN.foo.svc.cluster.local", port: 8000, headers: map[string]string{"X-Token": "admin"}}, true},
			{"host with port", request{sourceIP: "10.1.1.1", host: "httpbin.foo.svc.cluster.local:8000", port: 8000, headers: map[string]string{"X-Token": "admin"}}, true},
			{"other host", request{sourceIP: "10.1.1.1", host: "httpbin.foo.svc.cluster.local.evil", port: 8000, headers: map[string]string{"X-Token": "admin"}}, false},
			{"wildcard host", request{sourceIP: "10.1.1.1", host: "a.example.com", port: 8000, headers: map[string]string{"x-token": "admin"}}, true},
			{"excluded ip", request{sourceIP: "10.1.2.3", host: "a.example.com", port: 8000, headers: map[string]string{"x-token": "admin"}}, false},
			{"wrong port", request{sourceIP: "10.1.1.1", host: "a.example.com", port: 9000, headers: map[string]string{"x-token": "admin"}}, false},
			{"wrong header", request{sourceIP: "10.1.1.1", host: "a.example.com", port: 8000, headers: map[string]string{"x-token": "user"}}, false},
			{"remote ip + sni", request{sourceIP: "10.9.9.9", remoteIP: "192.0.2.7", sni: "a.secure.local"}, true},
			{"remote ip, wrong sni", request{sourceIP: "10.9.9.9", remoteIP: "192.0.2.7", sni: "a.other"}, false},
		},
	}, {
		name: "policies for other workloads and namespaces do not apply; root namespace applies mesh-wide",
		yaml: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-app, namespace: foo}
spec:
  selector: {matchLabels: {app: productpage}}
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-ns, namespace: bar}
spec:
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny-dev, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: ["dev"]}}]
`,
		checks: []check{
			{"from prod", request{principal: spiffe("prod", "a")}, true},
			{"from dev (mesh-wide)", request{principal: spiffe("dev", "a")}, false},
		},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			filters, diags := build(t, decode(t, c.yaml), httpbin, Options{})
			if config.HasErrors(diags) {
				t.Fatalf("diagnostics: %v", diags)
			}
			for _, ch := range c.checks {
				v := evalHTTP(t, filters, ch.req)
				if v.allowed != ch.allow {
					t.Errorf("%s: allowed=%v (%s), want %v", ch.name, v.allowed, v.by, ch.allow)
				}
			}
		})
	}
}

func TestNoPolicyAllows(t *testing.T) {
	filters, _ := build(t, nil, httpbin, Options{})
	if len(filters) != 0 {
		t.Fatalf("%d filters without policies", len(filters))
	}
	if !evalHTTP(t, filters, request{path: "/"}).allowed {
		t.Error("denied without any policy")
	}
}

func TestRuleNamesAndOrder(t *testing.T) {
	objs := decode(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin-1, namespace: foo}
spec:
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]
  - to: [{operation: {methods: ["GET"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-1, namespace: foo}
spec: {action: DENY, rules: [{to: [{operation: {paths: ["/x"]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-1, namespace: foo}
spec: {action: AUDIT, rules: [{to: [{operation: {paths: ["/audit"]}}]}]}
`)
	filters, diags := build(t, objs, httpbin, Options{})
	if len(diags) > 0 {
		t.Fatal(diags)
	}
	var got []string
	for _, f := range filters {
		got = append(got, f.GetName()+" "+policyNames(t, f))
	}
	want := []string{
		"envoy.filters.http.rbac.audit LOG[ns[foo]-policy[audit-1]-rule[0]]",
		"envoy.filters.http.rbac.deny DENY[ns[foo]-policy[deny-1]-rule[0]]",
		"envoy.filters.http.rbac.allow ALLOW[ns[foo]-policy[httpbin-1]-rule[0] ns[foo]-policy[httpbin-1]-rule[1]]",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("filters:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	v := evalHTTP(t, filters, request{method: "GET", path: "/audit"})
	if !v.allowed || len(v.logged) != 1 {
		t.Errorf("AUDIT: %+v, want allowed and logged once", v)
	}
}
