package main

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/nodeagent/agent"
)

func TestCheckAgentSVID(t *testing.T) {
	ca, err := identity.NewCA(identity.CAConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	td := ca.TrustDomain()
	must := func(s *x509svid.SVID, err error) *x509svid.SVID {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	web, err := identity.WorkloadID(td, "demo", "web")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		svid *x509svid.SVID
		want string // "" = accepted
	}{
		{"agent of node-a", must(ca.NewAgentSVID("node-a")), ""},
		{"agent of node-b", must(ca.NewAgentSVID("node-b")), "register the agent's entry with -dns node-a"},
		{"agent without a node", must(ca.NewSVID(identity.AgentID(td))), `names node "" in its Subject CN`},
		{"a workload", must(ca.NewSVID(web)), "register the node agent's entry with -spiffeID " + identity.AgentID(td).String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkAgentSVID(tc.svid, td, "node-a")
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v; want an error saying %q", err, tc.want)
			}
		})
	}
	other := spiffeid.RequireTrustDomainFromString("other.test")
	if err := checkAgentSVID(must(ca.NewAgentSVID("node-a")), other, "node-a"); err == nil {
		t.Fatal("an agent SVID of another trust domain was accepted")
	}
}

func TestSPIREFlagsCheck(t *testing.T) {
	for _, tc := range []struct {
		name       string
		f          spireFlags
		otherCreds bool
		envoy      string
		want       string
	}{
		{"off", spireFlags{}, true, "/envoy.sock", ""},
		{"workload api", spireFlags{socket: "unix:///a"}, false, "", ""},
		{"both sockets", spireFlags{socket: "unix:///a", adminSocket: "unix:///b"}, false, "/envoy.sock", ""},
		{"admin alone", spireFlags{adminSocket: "unix:///b"}, false, "", "--spire-admin-socket needs --spire-socket"},
		{"with cert files or token", spireFlags{socket: "unix:///a"}, true, "", "exclusive"},
		{"envoy without admin", spireFlags{socket: "unix:///a"}, false, "/envoy.sock", "needs --spire-admin-socket"},
		{"selectors opt-in", spireFlags{socket: "unix:///a", adminSocket: "unix:///b", bySelectors: true}, false, "", ""},
		{"selectors without admin", spireFlags{socket: "unix:///a", bySelectors: true}, false, "", "--spire-workload-selectors needs --spire-admin-socket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.f.check(tc.otherCreds, tc.envoy)
			if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("got %v; want %q", err, tc.want)
			}
		})
	}
}

func TestSPIREWorkloadCertsDir(t *testing.T) {
	var cfg agent.Config
	if err := (spireFlags{socket: "unix:///a"}).workloadCertsDir(&cfg, "/w"); err == nil || !strings.Contains(err.Error(), "needs --spire-admin-socket") {
		t.Fatalf("without the admin socket: %v", err)
	}
	if err := (spireFlags{socket: "unix:///a", adminSocket: "unix:///b"}).workloadCertsDir(&cfg, "/w"); err != nil || cfg.WorkloadCertsDir != "/w" {
		t.Fatalf("with the admin socket: %v, dir %q", err, cfg.WorkloadCertsDir)
	}
}
