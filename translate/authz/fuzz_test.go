package authz

import (
	"testing"

	"github.com/nodemesh/nodemesh/config"
)

// FuzzBuild: whatever YAML the loader accepts, the translation does not
// panic and every filter passes Envoy's validation. The seeds run in every
// go test.
func FuzzBuild(f *testing.F) {
	f.Add(customYAML)
	f.Add(grpcPolicy)
	f.Add(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: foo}
spec:
  rules:
  - from: [{source: {requestPrincipals: ["iss/sub*"], remoteIpBlocks: ["::1/128"], notNamespaces: ["a*"]}}]
    to: [{operation: {paths: ["/a/{*}/b/{**}", "*x"], notHosts: ["*.b"]}}]
    when:
    - {key: "request.auth.claims[a][b]", values: ["*"]}
    - {key: "experimental.envoy.filters.network.mysql_proxy[db.table]", values: ["[update]"]}
    - {key: destination.ip, notValues: ["10.0.0.0/8"]}
`)
	f.Add(`apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: t, namespace: foo}
spec:
  destination: {kind: ServiceAccount, name: httpbin, namespace: foo}
  rules: [{kind: HTTPRouteGroup, name: g}, {kind: TCPRoute, name: r}]
  sources: [{kind: ServiceAccount, name: a}]
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: g, namespace: foo}
spec: {matches: [{name: m, pathRegex: "/x(y|z)", methods: [GET], headers: {a: "b.*"}}]}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {name: r, namespace: foo}
spec: {matches: {ports: [80]}}
`)
	opts := Options{ExtAuthzProviders: map[string]ExtAuthzProvider{"my-authz": {Cluster: "c"}}}
	f.Fuzz(func(t *testing.T, yaml string) {
		objs, diags := config.Decode("fuzz.yaml", []byte(yaml))
		if config.HasErrors(diags) {
			return
		}
		s := config.NewStore()
		if err := s.Replace("fuzz", objs); err != nil {
			return
		}
		out := Build(s.Snapshot(), httpbin, opts)
		if err := Validate(out.HTTP, out.TCP); err != nil {
			t.Fatalf("invalid filters: %v", err)
		}
	})
}
