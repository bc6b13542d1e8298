package kube

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"

	"github.com/nodemesh/nodemesh/config"
)

func TestConfigValidate(t *testing.T) {
	rc, store := &rest.Config{Host: "https://127.0.0.1:1"}, config.NewStore()
	le := func(ns, id string) *LeaderElection { return &LeaderElection{Namespace: ns, Identity: id} }
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"minimal", Config{RESTConfig: rc, Store: store}, ""},
		{"with leader election", Config{RESTConfig: rc, Store: store, LeaderElection: le("ns", "pod-0")}, ""},
		{"no RESTConfig", Config{Store: store}, "RESTConfig"},
		{"no Store", Config{RESTConfig: rc}, "Store"},
		{"negative debounce", Config{RESTConfig: rc, Store: store, Debounce: -1}, "negative"},
		{"lease without namespace", Config{RESTConfig: rc, Store: store, LeaderElection: le("", "pod-0")}, "Namespace"},
		{"lease without identity", Config{RESTConfig: rc, Store: store, LeaderElection: le("ns", "")}, "Identity"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if (err == nil) != (tc.wantErr == "") || err != nil && !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Validate() = %v, want error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestDecodeCustom(t *testing.T) {
	obj := func(kind, apiVersion string, spec map[string]any) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": apiVersion, "kind": kind,
			"metadata": map[string]any{"name": "x", "namespace": "ns", "uid": "u1", "resourceVersion": "7"},
			"spec":     spec, "status": map[string]any{"anything": true},
		}}
	}
	tests := []struct {
		name      string
		in        *unstructured.Unstructured
		wantField string // "" means decoded
	}{
		{"VirtualService v1", obj("VirtualService", "networking.istio.io/v1",
			map[string]any{"hosts": []any{"reviews"}, "http": []any{map[string]any{"timeout": "5s"}}}), ""},
		{"AuthorizationPolicy v1beta1", obj("AuthorizationPolicy", "security.istio.io/v1beta1",
			map[string]any{"action": "DENY", "rules": []any{map[string]any{}}}), ""},
		{"unknown Istio field", obj("DestinationRule", "networking.istio.io/v1",
			map[string]any{"host": "reviews", "subsets": []any{map[string]any{"name": "v1", "lables": map[string]any{}}}}),
			"spec.subsets[0].lables"},
		{"wrong-typed SMI weight", obj("TrafficSplit", "split.smi-spec.io/v1alpha4",
			map[string]any{"service": "reviews", "backends": []any{map[string]any{"service": "r1", "weight": "ten"}}}),
			"spec.backends[0].weight"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := decodeCustom(tc.in)
			if d.resourceVersion != "7" || d.ref.UID != "u1" || d.ref.Kind != tc.in.GetKind() {
				t.Errorf("reference %+v, rv %q", d.ref, d.resourceVersion)
			}
			if tc.wantField == "" {
				if d.obj == nil || config.HasErrors(d.diags) {
					t.Fatalf("not decoded: %v", d.diags)
				}
				if d.obj.Key != (config.Key{Kind: config.Kind(tc.in.GetKind()), Namespace: "ns", Name: "x"}) || d.obj.Origin.File != "k8s" {
					t.Errorf("object %v from %v", d.obj.Key, d.obj.Origin)
				}
				return
			}
			if d.obj != nil {
				t.Fatalf("decoded %v, want it rejected", d.obj.Key)
			}
			msg := eventMessage(d.diags)
			if !strings.Contains(msg, tc.wantField) || strings.Contains(msg, "(line") {
				t.Errorf("event message %q: want the field %s and no line number", msg, tc.wantField)
			}
		})
	}
}
