package secure

import (
	"testing"

	"github.com/nodemesh/nodemesh/config"
)

func pa(name, ns, selector, mode, ports string) string {
	s := "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: " + name + ", namespace: " + ns + "}\nspec:\n"
	if selector != "" {
		s += "  selector: {matchLabels: {app: " + selector + "}}\n"
	}
	if mode != "" {
		s += "  mtls: {mode: " + mode + "}\n"
	}
	if ports != "" {
		s += "  portLevelMtls: {" + ports + "}\n"
	}
	return s
}

func TestPeerAuthenticationPrecedence(t *testing.T) {
	type want struct {
		def    Mode
		port   uint32
		atPort Mode
	}
	for _, tc := range []struct {
		name  string
		yaml  string
		want  want
		diags int
	}{
		{"default permissive", "", want{Permissive, 9080, Permissive}, 0},
		{"mesh strict", pa("mesh", "istio-system", "", "STRICT", ""), want{Strict, 9080, Strict}, 0},
		{"namespace overrides mesh", pa("mesh", "istio-system", "", "STRICT", "") + pa("ns", "default", "", "DISABLE", ""), want{Disable, 9080, Disable}, 0},
		{"namespace UNSET inherits mesh", pa("mesh", "istio-system", "", "STRICT", "") + pa("ns", "default", "", "", ""), want{Strict, 9080, Strict}, 0},
		{"workload overrides namespace", pa("ns", "default", "", "STRICT", "") + pa("wl", "default", "reviews", "PERMISSIVE", ""), want{Permissive, 9080, Permissive}, 0},
		{"port level", pa("ns", "default", "", "STRICT", "") + pa("wl", "default", "reviews", "", "9080: {mode: DISABLE}"), want{Strict, 9080, Disable}, 0},
		{"port level UNSET inherits workload", pa("wl", "default", "reviews", "DISABLE", "9080: {}"), want{Disable, 9080, Disable}, 0},
		{"other workload's policy ignored", pa("wl", "default", "ratings", "DISABLE", ""), want{Permissive, 9080, Permissive}, 0},
		{"namespace portLevelMtls ignored", pa("ns", "default", "", "STRICT", "9080: {mode: DISABLE}"), want{Strict, 9080, Strict}, 1},
		{"two namespace policies: first by name wins", pa("a", "default", "", "STRICT", "") + pa("b", "default", "", "DISABLE", ""), want{Strict, 9080, Strict}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			snap := decode(t, tc.yaml)
			pod, ok := snap.Get(config.Key{Kind: config.KindPod, Namespace: "default", Name: "reviews-v1-0"})
			if !ok {
				t.Fatal("pod reviews-v1-0 missing from test data")
			}
			var diags []config.Diagnostic
			m := newPeerAuth(snap, DefaultRootNamespace, &diags).forPod(pod)
			if m.def != tc.want.def || m.at(tc.want.port) != tc.want.atPort {
				t.Errorf("mode = %v, at %d = %v; want %v, %v", m.def, tc.want.port, m.at(tc.want.port), tc.want.def, tc.want.atPort)
			}
			if len(diags) != tc.diags {
				t.Errorf("diagnostics = %v; want %d", diags, tc.diags)
			}
		})
	}
}
