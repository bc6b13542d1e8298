package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/nodeagent/agent"
)

// TestRootFile: the roots are read at start, again when the file changes
// (a root rotation), and a broken file keeps the last good roots.
func TestRootFile(t *testing.T) {
	ca, err := identity.NewCA(identity.CAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	td := ca.TrustDomain()
	path := filepath.Join(t.TempDir(), "root-cert.pem")
	write := func(b []byte, mtime time.Time) {
		t.Helper()
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := newRootFile(path, td); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("missing file: %v, want an error naming %s", err, path)
	}
	write(identity.EncodeCertsPEM(ca.Bundle().X509Authorities()), time.Now().Add(-time.Hour))
	r, err := newRootFile(path, td)
	if err != nil {
		t.Fatal(err)
	}
	roots := func() int {
		t.Helper()
		b, err := r.GetX509BundleForTrustDomain(td)
		if err != nil {
			t.Fatal(err)
		}
		return len(b.X509Authorities())
	}
	if n := roots(); n != 1 {
		t.Fatalf("%d roots, want 1", n)
	}
	if _, err := ca.RotateRoot(); err != nil {
		t.Fatal(err)
	}
	write(identity.EncodeCertsPEM(ca.Bundle().X509Authorities()), time.Now())
	if n := roots(); n != 2 {
		t.Fatalf("after a rotation: %d roots, want 2", n)
	}
	write([]byte("garbage"), time.Now().Add(time.Minute))
	if n := roots(); n != 2 {
		t.Fatalf("after a broken write: %d roots, want the last good 2", n)
	}
	if _, err := r.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.example")); err == nil {
		t.Fatal("a bundle for another trust domain")
	}
}

func TestWithWorkloadCerts(t *testing.T) {
	ca, err := identity.NewCA(identity.CAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	certDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(certDir, "root-cert.pem"), identity.EncodeCertsPEM(ca.Bundle().X509Authorities()), 0o644); err != nil {
		t.Fatal(err)
	}
	dial := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	for _, tc := range []struct {
		name        string
		dial        []grpc.DialOption
		certDir, td string
		want        string // substring of the error; "" = ok
	}{
		{"built-in CA mode", dial, certDir, "cluster.local", ""},
		{"no agent credentials", nil, "", "cluster.local", "needs --xds-cert-dir"},
		{"bad trust domain", dial, certDir, "Not A Domain", "--trust-domain"},
		{"no root-cert.pem", dial, t.TempDir(), "cluster.local", "root-cert.pem"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := agent.Config{ControlPlane: "127.0.0.1:1", DialOptions: tc.dial}
			closeConn, err := withWorkloadCerts(&cfg, "/run/nodemesh/workload-certs", tc.certDir, tc.td)
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
