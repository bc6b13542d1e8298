package ads

import (
	"net/netip"
	"testing"

	"google.golang.org/protobuf/proto"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
)

// FuzzToState feeds arbitrary resources to the conversion: it must not
// panic, and whatever it accepts the kernel half must accept too (so that
// every rejection is reported by ToState, naming the resource, rather than
// by the kernel's Validate, naming a slice index).
func FuzzToState(f *testing.F) {
	for _, r := range []*Resources{meshResources()} {
		for _, s := range r.Services {
			sb, _ := proto.Marshal(s)
			for _, w := range r.Workloads {
				wb, _ := proto.Marshal(w)
				for _, p := range r.Policies {
					pb, _ := proto.Marshal(p)
					for _, l := range r.Listeners {
						lb, _ := proto.Marshal(l)
						f.Add(sb, wb, pb, lb)
					}
				}
			}
		}
	}
	f.Fuzz(func(t *testing.T, sb, wb, pb, lb []byte) {
		var s dataplanev1.Service
		var w dataplanev1.Workload
		var p dataplanev1.Policy
		var l dataplanev1.NamespaceListener
		if proto.Unmarshal(sb, &s) != nil || proto.Unmarshal(wb, &w) != nil || proto.Unmarshal(pb, &p) != nil || proto.Unmarshal(lb, &l) != nil {
			t.Skip()
		}
		res := meshResources()
		res.Services["fuzz/svc:1/TCP"] = &s
		res.Workloads["fuzz/pod"] = &w
		res.Policies["fuzz/policy"] = &p
		res.Listeners["fuzz"] = &l
		st, err := ToState(res, StateConfig{Node: "node-a", ProxyIP: netip.MustParseAddr("10.77.0.1")})
		if err != nil {
			return
		}
		if err := st.Validate(); err != nil {
			t.Fatalf("ToState accepted what the kernel half rejects: %v\nservice %v\nworkload %v\npolicy %v\nlistener %v", err, &s, &w, &p, &l)
		}
	})
}
