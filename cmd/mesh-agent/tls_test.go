package main

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodemesh/nodemesh/identity"
)

func TestXDSCredentialsFlags(t *testing.T) {
	ca, err := identity.NewCA(identity.CAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	roots := filepath.Join(dir, "roots.pem")
	token := filepath.Join(dir, "token")
	certDir := filepath.Join(dir, "node-a")
	svid, err := ca.NewAgentSVID("node-a")
	if err != nil {
		t.Fatal(err)
	}
	chain, key, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	rootsPEM := identity.EncodeCertsPEM(ca.Bundle().X509Authorities())
	for path, data := range map[string][]byte{roots: rootsPEM, token: []byte("tok"),
		filepath.Join(certDir, "cert-chain.pem"): chain, filepath.Join(certDir, "key.pem"): key, filepath.Join(certDir, "root-cert.pem"): rootsPEM} {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	missing := filepath.Join(dir, "missing")
	for _, tc := range []struct {
		name     string
		f        xdsFlags
		node     string
		want     string // "" = no error
		wantMode string
	}{
		{"plaintext", xdsFlags{}, "node-a", "", ""},
		{"cert dir", xdsFlags{certDir: certDir}, "node-a", "", identity.AgentCertFiles},
		{"token", xdsFlags{token: token, rootCert: roots}, "node-a", "", identity.AgentCertToken},
		{"both", xdsFlags{certDir: certDir, token: token, rootCert: roots}, "node-a", "--xds-cert-dir and --xds-token exclude each other", ""},
		{"token without roots", xdsFlags{token: token}, "node-a", "--xds-token needs --xds-root-cert", ""},
		{"roots alone", xdsFlags{rootCert: roots}, "node-a", "--xds-root-cert needs --xds-token", ""},
		{"roots with cert dir", xdsFlags{certDir: certDir, rootCert: roots}, "node-a", "--xds-root-cert goes with --xds-token", ""},
		{"missing token", xdsFlags{token: missing, rootCert: roots}, "node-a", "--xds-token: open " + missing, ""},
		{"missing roots", xdsFlags{token: token, rootCert: missing}, "node-a", "--xds-root-cert: open " + missing, ""},
		{"missing cert dir", xdsFlags{certDir: missing}, "node-a", "--xds-cert-dir: open " + filepath.Join(missing, "cert-chain.pem"), ""},
		{"cert dir of another node", xdsFlags{certDir: certDir}, "node-b", `this agent is node "node-b"`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			creds, err := xdsCredentials(tc.f, tc.node, "127.0.0.1:1", "cluster.local", slog.New(slog.NewTextHandler(io.Discard, nil)))
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("xdsCredentials = %v; want an error containing %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("xdsCredentials: %v", err)
			}
			if (creds.dial != nil) != (tc.wantMode != "") {
				t.Fatalf("dial option %v; want one only with credentials", creds.dial)
			}
			if tc.wantMode != "" {
				if st := creds.Status()().(identity.AgentCertStatus); st.Mode != tc.wantMode {
					t.Errorf("mode %q; want %q", st.Mode, tc.wantMode)
				}
			}
		})
	}
}
