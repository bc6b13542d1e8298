package inboundauthz

import (
	"testing"

	"github.com/nodemesh/nodemesh/translate"
	"github.com/nodemesh/nodemesh/translate/authz"
)

// BenchmarkApply: node-a of bookinfo with the golden input's policies.
func BenchmarkApply(b *testing.B) {
	snap := loadSnapshot(b, "")
	base := translate.Translate(snap, translate.Proxy{Node: "node-a"})
	for b.Loop() {
		nc := *base
		nc.Listeners = append(nc.Listeners[:0:0], base.Listeners...)
		nc.Routes = append(nc.Routes[:0:0], base.Routes...)
		nc.Clusters = append(nc.Clusters[:0:0], base.Clusters...)
		Apply(&nc, snap, authz.Options{})
	}
}
