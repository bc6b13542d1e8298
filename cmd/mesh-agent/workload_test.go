package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/nodeagent/agent"
)

func TestWithWorkloadCerts(t *testing.T) {
	ca, err := identity.NewCA(identity.CAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	certDir := t.TempDir()
	svid, err := ca.NewAgentSVID("node-1")
	if err != nil {
		t.Fatal(err)
	}
	chain, key, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"cert-chain.pem": chain, "key.pem": key, "root-cert.pem": identity.EncodeCertsPEM(ca.Bundle().X509Authorities())} {
		if err := os.WriteFile(filepath.Join(certDir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	creds, err := xdsCredentials(xdsFlags{certDir: certDir}, "node-1", "127.0.0.1:1", "cluster.local", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		creds xdsCreds
		td    string
		want  string // substring of the error; "" = ok
	}{
		{"built-in CA mode", creds, "cluster.local", ""},
		{"no agent credentials", xdsCreds{}, "cluster.local", "needs --xds-cert-dir or --xds-token"},
		{"bad trust domain", creds, "Not A Domain", "--trust-domain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := agent.Config{ControlPlane: "127.0.0.1:1"}
			closeConn, err := withWorkloadCerts(&cfg, "/run/nodemesh/workload-certs", tc.creds, tc.td)
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("got %v, want an error containing %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer closeConn()
			if _, ok := cfg.WorkloadSVIDs.(*identity.CertClient); !ok || cfg.WorkloadCertsDir != "/run/nodemesh/workload-certs" || cfg.LocalSDS {
				t.Errorf("config: source %T, dir %q, local SDS %v", cfg.WorkloadSVIDs, cfg.WorkloadCertsDir, cfg.LocalSDS)
			}
		})
	}
}
