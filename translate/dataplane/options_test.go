package dataplane

import (
	"slices"
	"strings"
	"testing"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/config"
)

func TestTrustDomain(t *testing.T) {
	snap := decode(t, authz("default", "ALLOW", "app: ratings", `
  - from: [{source: {principals: ["cluster.local/ns/default/sa/bookinfo-reviews", "example.org/ns/default/sa/bookinfo-productpage"]}}]`))
	for _, tc := range []struct {
		td, wantID, wantDiag string
		wantSources          []uint32
	}{
		{"", "spiffe://cluster.local/ns/default/sa/bookinfo-ratings", `"example.org", not the mesh's "cluster.local"`, []uint32{bookinfoIdentities["default/bookinfo-reviews"]}},
		{"example.org", "spiffe://example.org/ns/default/sa/bookinfo-ratings", `"cluster.local", not the mesh's "example.org"`, []uint32{bookinfoIdentities["default/bookinfo-productpage"]}},
		{"Not A Domain!", "spiffe://cluster.local/ns/default/sa/bookinfo-ratings", "bad trust domain", []uint32{bookinfoIdentities["default/bookinfo-reviews"]}},
	} {
		t.Run(tc.td, func(t *testing.T) {
			r := Options{TrustDomain: tc.td}.Translate(snap, "node-a")
			i := slices.IndexFunc(r.Workloads, func(w *dataplanev1.Workload) bool { return w.GetName() == ratings })
			if i < 0 || r.Workloads[i].GetSpiffeId() != tc.wantID {
				t.Fatalf("ratings workload %v, want SPIFFE ID %s", r.Workloads, tc.wantID)
			}
			if len(r.Policies) != 1 || len(r.Policies[0].GetRules()) != 1 || !slices.Equal(r.Policies[0].GetRules()[0].GetSources(), tc.wantSources) {
				t.Errorf("policies %v, want one rule with sources %v", r.Policies, tc.wantSources)
			}
			if !slices.ContainsFunc(r.Diagnostics, func(d config.Diagnostic) bool { return strings.Contains(d.Message, tc.wantDiag) }) {
				t.Errorf("no diagnostic contains %q: %v", tc.wantDiag, r.Diagnostics)
			}
		})
	}
}
