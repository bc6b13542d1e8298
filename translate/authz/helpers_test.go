package authz

import (
	"testing"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/nodemesh/nodemesh/config"
)

// decode loads YAML through the real config loader.
func decode(t *testing.T, yaml string) []*config.Object {
	t.Helper()
	objs, diags := config.Decode("test.yaml", []byte(yaml))
	if config.HasErrors(diags) {
		t.Fatalf("decode: %v", diags)
	}
	return objs
}

var httpbin = Workload{Namespace: "foo", Name: "httpbin", Labels: map[string]string{"app": "httpbin", "version": "v1"}, ServiceAccount: "httpbin"}

// build runs BuildHTTP and checks every filter passes Validate.
func build(t *testing.T, objs []*config.Object, w Workload, opts Options) ([]*hcmv3.HttpFilter, []config.Diagnostic) {
	t.Helper()
	filters, diags := BuildHTTP(objs, w, opts)
	if err := Validate(filters, nil); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	return filters, diags
}

func spiffe(ns, sa string) string { return "spiffe://cluster.local/ns/" + ns + "/sa/" + sa }
