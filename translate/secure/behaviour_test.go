package secure

import (
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
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
	suffix := "~default/bookinfo-productpage"
	if c := byName["outbound|9080||ratings.default.svc.cluster.local"]; c == nil || c.GetTransportSocket() != nil {
		t.Errorf("ratings (DISABLE on 9080) should be one plaintext cluster; got %v", c)
	}
	if byName["outbound|9080||ratings.default.svc.cluster.local"+suffix] != nil {
		t.Error("ratings got a per-account TLS cluster although its pods refuse mTLS")
	}
	c := byName["outbound|9080||reviews.default.svc.cluster.local"+suffix]
	if c == nil {
		t.Fatal("no per-account cluster for reviews")
	}
	u := &tlsv3.UpstreamTlsContext{}
	if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(u); err != nil {
		t.Fatal(err)
	}
	sans := u.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames()
	if len(sans) != 1 || sans[0].GetMatcher().GetExact() != sa(t, "bookinfo-reviews") {
		t.Errorf("reviews expects %v, want exactly %s", sans, sa(t, "bookinfo-reviews"))
	}
	if got := u.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs()[0].GetName(); got != sa(t, "bookinfo-productpage") {
		t.Errorf("presents %s", got)
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
}
