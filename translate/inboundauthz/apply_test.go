package inboundauthz

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/nodemesh/nodemesh/translate"
	"github.com/nodemesh/nodemesh/translate/authz"
)

// Apply replaces what it changes: the listeners and clusters it was given
// (which translate may share between nodes) are left as they were.
func TestApplyDoesNotMutateItsInput(t *testing.T) {
	snap := loadSnapshot(t, "")
	nc := translate.Translate(snap, translate.Proxy{Node: "node-a"})
	before := make([]proto.Message, 0, len(nc.Listeners)+len(nc.Clusters))
	orig := make([]proto.Message, 0, cap(before))
	for _, l := range nc.Listeners {
		orig, before = append(orig, l), append(before, proto.Clone(l))
	}
	for _, c := range nc.Clusters {
		orig, before = append(orig, c), append(before, proto.Clone(c))
	}
	Apply(nc, snap, authz.Options{})
	changed := 0
	for i, m := range orig {
		if !proto.Equal(m, before[i]) {
			t.Errorf("Apply mutated %v", before[i])
		}
	}
	for i, l := range nc.Listeners {
		if l.GetName() == "inbound_default" && !proto.Equal(l, before[i]) {
			changed++
		}
	}
	if changed == 0 {
		t.Fatal("Apply changed no inbound listener: the test proves nothing")
	}
}

// Only SharedEnvoy configs have inbound listeners to rewrite; a node with
// no selected pod is unchanged.
func TestApplyLeavesOthersAlone(t *testing.T) {
	snap := loadSnapshot(t, "")
	for _, proxy := range []translate.Proxy{
		{Kind: translate.ProxylessGRPC, Namespace: "default"},
		{Node: "node-b"}, // reviews-v2/v3: no policy selects them
	} {
		nc := translate.Translate(snap, proxy)
		want := translate.Translate(snap, proxy)
		if diags := Apply(nc, snap, authz.Options{}); len(diags) > 0 {
			t.Errorf("%+v: diagnostics %v", proxy, diags)
		}
		if len(nc.Listeners) != len(want.Listeners) || len(nc.Clusters) != len(want.Clusters) || len(nc.Routes) != len(want.Routes) {
			t.Fatalf("%+v: resources added or removed", proxy)
		}
		for i := range nc.Listeners {
			if !proto.Equal(nc.Listeners[i], want.Listeners[i]) {
				t.Errorf("%+v: listener %s changed", proxy, nc.Listeners[i].GetName())
			}
		}
	}
}
