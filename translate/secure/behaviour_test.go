package secure

import (
	"os"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
)

// inboundChains returns, for a pod IP and destination port (0: the
// default chains), which transport protocols are matched and whether each
// terminates TLS, and with which SVID.
func inboundChains(t *testing.T, nc *translate.NodeConfig, ip string, port uint32) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, l := range nc.Listeners {
		if l.GetName() != "inbound_default" {
			continue
		}
		for _, fc := range l.GetFilterChains() {
			m := fc.GetFilterChainMatch()
			if m.GetDestinationPort().GetValue() != port || len(m.GetPrefixRanges()) != 1 || m.GetPrefixRanges()[0].GetAddressPrefix() != ip {
				continue
			}
			what := "plaintext"
			if tc := fc.GetTransportSocket().GetTypedConfig(); tc != nil {
				d := &tlsv3.DownstreamTlsContext{}
				if err := tc.UnmarshalTo(d); err != nil {
					t.Fatal(err)
				}
				if !d.GetRequireClientCertificate().GetValue() {
					t.Errorf("chain %s terminates TLS without requiring a client certificate", fc.GetName())
				}
				what = "mtls as " + d.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs()[0].GetName()
			}
			out[m.GetTransportProtocol()] = what
		}
	}
	return out
}

func hasInspector(nc *translate.NodeConfig) bool {
	for _, l := range nc.Listeners {
		if l.GetName() == "inbound_default" {
			for _, f := range l.GetListenerFilters() {
				if f.GetName() == "envoy.filters.listener.tls_inspector" {
					return true
				}
			}
		}
	}
	return false
}

func TestInboundModes(t *testing.T) {
	reviews := "mtls as " + sa(t, "bookinfo-reviews")
	ratings := "mtls as " + sa(t, "bookinfo-ratings")
	for _, tc := range []struct {
		name      string
		yaml      string
		ip        string
		port      uint32
		want      map[string]string
		inspector bool
	}{
		{"permissive by default", "", "10.1.0.13", 0, map[string]string{"tls": reviews, "raw_buffer": "plaintext"}, true},
		{"mesh STRICT", paStrict, "10.1.0.13", 0, map[string]string{"": reviews}, false},
		{"namespace DISABLE", paDisable, "10.1.0.13", 0, map[string]string{"": "plaintext"}, false},
		{"workload PERMISSIVE over namespace STRICT", paPortLevel, "10.1.0.13", 0, map[string]string{"tls": reviews, "raw_buffer": "plaintext"}, true},
		{"port-level STRICT on 9080", paPortLevel, "10.1.0.13", 9080, map[string]string{"": reviews}, true},
		{"port-level DISABLE of ratings", paPortLevel, "10.1.0.12", 9080, map[string]string{"": "plaintext"}, true},
		{"ratings inherits namespace STRICT elsewhere", paPortLevel, "10.1.0.12", 0, map[string]string{"": ratings}, true},
		// Envoy picks the port before the address: a pod with no
		// override needs its own chain on an overridden port.
		{"override elsewhere still gets a chain on the port", paPortLevel, "10.1.0.10", 9080, map[string]string{"": "mtls as " + sa(t, "bookinfo-productpage")}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc, _ := secured(t, decode(t, tc.yaml), translate.Proxy{Node: "node-a"})
			got := inboundChains(t, nc, tc.ip, tc.port)
			if len(got) != len(tc.want) {
				t.Fatalf("chains %v, want %v", got, tc.want)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("transport %q: %s, want %s", k, got[k], v)
				}
			}
			if hasInspector(nc) != tc.inspector {
				t.Errorf("tls_inspector present = %v, want %v", hasInspector(nc), tc.inspector)
			}
		})
	}
}

// Clients follow the server's mode (Istio's auto mTLS): a service whose
// pods all DISABLE mTLS on the target port is reached in plaintext; the
// others over mTLS, expecting exactly the service accounts of their pods.
func TestUpstreamFollowsServerMode(t *testing.T) {
	nc, diags := secured(t, decode(t, paPortLevel), translate.Proxy{Node: "node-a"})
	if len(diags) != 0 {
		t.Fatalf("diagnostics: %v", diags)
	}
	byName := map[string]*clusterv3.Cluster{}
	for _, c := range nc.Clusters {
		byName[c.Name] = c
	}
	ratings := byName["outbound|9080||ratings.default.svc.cluster.local"]
	if ratings == nil || ratings.GetTransportSocket() != nil || ratings.GetTransportSocketMatcher() != nil {
		t.Errorf("ratings (DISABLE on 9080) should be one plaintext cluster; got %v", ratings)
	}
	c := byName["outbound|9080||reviews.default.svc.cluster.local"]
	if c == nil {
		t.Fatal("no cluster for reviews")
	}
	productpage := sa(t, "bookinfo-productpage")
	var u *tlsv3.UpstreamTlsContext
	for _, tm := range c.GetTransportSocketMatches() {
		if tm.GetName() == "default/bookinfo-productpage" {
			u = &tlsv3.UpstreamTlsContext{}
			if err := tm.GetTransportSocket().GetTypedConfig().UnmarshalTo(u); err != nil {
				t.Fatal(err)
			}
		}
	}
	if u == nil {
		t.Fatal("reviews has no transport socket for productpage")
	}
	sans := u.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames()
	if len(sans) != 1 || sans[0].GetMatcher().GetExact() != sa(t, "bookinfo-reviews") {
		t.Errorf("reviews expects %v, want exactly %s", sans, sa(t, "bookinfo-reviews"))
	}
	if got, err := selected(c, productpage); err != nil || got != productpage {
		t.Errorf("productpage's identity selects %q (%v), want its own SVID", got, err)
	}
	// No identity (or an unknown one) selects the default socket, which
	// presents no certificate but still checks the server.
	for _, id := range []string{"", sa(t, "not-on-this-node")} {
		if got, err := selected(c, id); err != nil || got != "" {
			t.Errorf("identity %q selects %q (%v), want no certificate", id, got, err)
		}
	}
	d := &tlsv3.UpstreamTlsContext{}
	if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(d); err != nil {
		t.Fatalf("default socket: %v", err)
	}
	if sans := d.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames(); len(sans) != 1 {
		t.Errorf("default socket checks %v", sans)
	}
}

func TestApplyRefusesOptionsWithoutTrustDomain(t *testing.T) {
	snap := decode(t, "")
	nc := translate.Translate(snap, translate.Proxy{Node: "node-a"})
	before := len(nc.Clusters)
	diags := Apply(nc, snap, Options{})
	if len(diags) != 1 || diags[0].Severity != config.SeverityError || len(nc.Clusters) != before {
		t.Fatalf("diags %v, clusters %d -> %d", diags, before, len(nc.Clusters))
	}
}

func sa(t *testing.T, name string) string {
	t.Helper()
	id, err := WorkloadID(td, "default", name)
	if err != nil {
		t.Fatal(err)
	}
	return id.String()
}

func TestCheckSecretsFindsProblems(t *testing.T) {
	snap := decode(t, paStrict)
	nc, _ := secured(t, snap, translate.Proxy{Node: "node-a"})
	all := SecretNames(nc)
	if len(all) < 2 {
		t.Fatalf("secrets %v", all)
	}
	if err := CheckSecrets(nc, all[1:]); err == nil || !strings.Contains(err.Error(), all[0]) {
		t.Errorf("a missing secret: %v", err)
	}
	for _, l := range nc.Listeners {
		if l.GetName() == "inbound_default" {
			l.FilterChains = append(l.FilterChains, proto.Clone(l.FilterChains[0]).(*listenerv3.FilterChain))
		}
	}
	if err := CheckSecrets(nc, all); err == nil || !strings.Contains(err.Error(), "same match") {
		t.Errorf("duplicate chain: %v", err)
	}
	nc, _ = secured(t, snap, translate.Proxy{Node: "node-a"})
	editClusters(t, nc, func(c *clusterv3.Cluster) bool {
		if len(c.GetTransportSocketMatches()) == 0 {
			return false
		}
		c.TransportSocketMatches[0].Name = "renamed"
		return true
	})
	if err := CheckSecrets(nc, all); err == nil || !strings.Contains(err.Error(), "which the cluster does not have") {
		t.Errorf("action naming a missing socket: %v", err)
	}
}

// A DestinationRule's TLS mode overrides auto mTLS for its clients:
// DISABLE sends plaintext, ISTIO_MUTUAL mTLS even to a server that says
// DISABLE; subset settings beat the top level; a rule exported only to its
// own namespace does not apply to others.
func TestDestinationRuleTLS(t *testing.T) {
	dr := func(ns, host, tls, subsetTLS, export string) string {
		s := "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: tls-" + host + ", namespace: " + ns + "}\nspec:\n  host: " + host + "\n"
		if export != "" {
			s += "  exportTo: [\"" + export + "\"]\n"
		}
		if tls != "" {
			s += "  trafficPolicy: {tls: {mode: " + tls + "}}\n"
		}
		s += "  subsets:\n  - {name: v1, labels: {version: v1}"
		if subsetTLS != "" {
			s += ", trafficPolicy: {tls: {mode: " + subsetTLS + "}}"
		}
		s += "}\n"
		return s
	}
	vsV1 := "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: details, namespace: default}\nspec:\n  hosts: [details]\n  http:\n  - route:\n    - destination: {host: details, subset: v1}\n"
	productpage := sa(t, "bookinfo-productpage")
	for _, tc := range []struct {
		name    string
		yaml    string
		cluster string
		tls     bool
	}{
		{"auto mTLS", "", "outbound|9080||details.default.svc.cluster.local", true},
		{"DISABLE", dr("default", "details", "DISABLE", "", ""), "outbound|9080||details.default.svc.cluster.local", false},
		{"ISTIO_MUTUAL beats the server's DISABLE", paDisable + dr("default", "details.default.svc.cluster.local", "ISTIO_MUTUAL", "", ""), "outbound|9080||details.default.svc.cluster.local", true},
		{"subset DISABLE", vsV1 + dr("default", "details", "ISTIO_MUTUAL", "DISABLE", ""), "outbound|9080|v1|details.default.svc.cluster.local", false},
		{"rule of another namespace exported to itself only", dr("istio-system", "details.default.svc.cluster.local", "DISABLE", "", "."), "outbound|9080||details.default.svc.cluster.local", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The test DestinationRules replace bookinfo's for details.
			nc, _ := secured(t, decodeWithout(t, tc.yaml, "details"), translate.Proxy{Node: "node-a"})
			var c *clusterv3.Cluster
			for _, cl := range nc.Clusters {
				if cl.Name == tc.cluster {
					c = cl
				}
			}
			if c == nil {
				t.Fatalf("no cluster %s", tc.cluster)
			}
			got, err := selected(c, productpage)
			if err != nil {
				t.Fatal(err)
			}
			if tc.tls && got != productpage {
				t.Errorf("%s: productpage presents %q, want its SVID", tc.cluster, got)
			}
			if !tc.tls && (got != "" || c.GetTransportSocket() != nil || c.GetTransportSocketMatcher() != nil) {
				t.Errorf("%s: want plaintext (presents %q, default socket %v)", tc.cluster, got, c.GetTransportSocket())
			}
		})
	}
}

// decodeWithout is decode without bookinfo's DestinationRule for host.
func decodeWithout(t *testing.T, yaml, host string) *config.Snapshot {
	t.Helper()
	snap := decode(t, yaml)
	st := config.NewStore()
	var objs []*config.Object
	for _, k := range []config.Kind{config.KindService, config.KindPod, config.KindPeerAuthentication, config.KindVirtualService, config.KindDestinationRule, config.KindServiceAccount, config.KindEndpointSlice, config.KindNamespace} {
		for _, o := range snap.List(k) {
			if k == config.KindDestinationRule && o.Name == host && o.Namespace == "default" {
				continue
			}
			objs = append(objs, o)
		}
	}
	if err := st.Replace("test", objs); err != nil {
		t.Fatal(err)
	}
	return st.Snapshot()
}

// Accounts of a namespace whose DestinationRule says DISABLE reach a
// destination in plaintext while the other accounts of the node reach the
// same cluster over mTLS: the cluster maps the first to its "plaintext"
// socket and the others to their SVIDs.
func TestPlaintextForOneNamespaceOnly(t *testing.T) {
	mesh, err := os.ReadFile("../testdata/behaviour/mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dr := `---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db-plain, namespace: open}
spec:
  host: db.shop.svc.cluster.local
  exportTo: ["."]
  trafficPolicy: {tls: {mode: DISABLE}}
  subsets:
  - {name: primary, labels: {role: primary}}
  - {name: replica, labels: {role: replica}}
`
	nc, _ := secured(t, decode(t, string(mesh)+dr), translate.Proxy{Node: "node-a"})
	open, err := WorkloadID(td, "open", "default")
	if err != nil {
		t.Fatal(err)
	}
	productpage := sa(t, "bookinfo-productpage")
	n := 0
	for _, c := range nc.Clusters {
		m := c.GetTransportSocketMatcher().GetMatcherTree().GetExactMatchMap().GetMap()
		if !strings.HasSuffix(c.GetName(), "|db.shop.svc.cluster.local") || m[open.String()] == nil {
			continue // open's chains do not reach it
		}
		n++
		if got, err := selected(c, open.String()); err != nil || got != "" {
			t.Errorf("%s: open/default presents %q (%v), want plaintext", c.GetName(), got, err)
		}
		var plain *corev3.TransportSocket
		for _, tm := range c.GetTransportSocketMatches() {
			if tm.GetName() == PlaintextSocket {
				plain = tm.GetTransportSocket()
			}
		}
		if plain.GetName() != "envoy.transport_sockets.raw_buffer" {
			t.Errorf("%s: plaintext socket %v", c.GetName(), plain)
		}
		if got, err := selected(c, productpage); err != nil || got != productpage {
			t.Errorf("%s: productpage presents %q (%v), want its SVID", c.GetName(), got, err)
		}
	}
	if n == 0 {
		t.Fatal("no db cluster selects transport sockets")
	}
}
