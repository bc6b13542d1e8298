package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
)

// pki is a test root and intermediate, as an operator would plug in.
type pki struct {
	root, inter   *x509.Certificate
	rootKey, iKey crypto.Signer
}

func newCert(t *testing.T, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func caTemplate(cn string, serial int64) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"test"}},
		NotBefore:             t0.Add(-time.Hour),
		NotAfter:              t0.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
}

func newPKI(t *testing.T) pki {
	t.Helper()
	rootKey, iKey := ecKey(t), ecKey(t)
	rt := caTemplate("test root", 1)
	root := newCert(t, rt, rt, rootKey.Public(), rootKey)
	inter := newCert(t, caTemplate("test intermediate", 2), root, iKey.Public(), rootKey)
	return pki{root: root, inter: inter, rootKey: rootKey, iKey: iKey}
}

func writePEM(t *testing.T, path, typ string, der ...[]byte) {
	t.Helper()
	var b []byte
	for _, d := range der {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: d})...)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func writeCacerts(t *testing.T, dir string, p pki) {
	t.Helper()
	keyDER, err := x509.MarshalECPrivateKey(p.iKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, CACertFile), "CERTIFICATE", p.inter.Raw)
	writePEM(t, filepath.Join(dir, CAKeyFile), "EC PRIVATE KEY", keyDER)
	writePEM(t, filepath.Join(dir, RootCertFile), "CERTIFICATE", p.root.Raw)
	writePEM(t, filepath.Join(dir, CertChainFile), "CERTIFICATE", p.inter.Raw, p.root.Raw)
}

func TestPluggedInCA(t *testing.T) {
	dir := t.TempDir()
	p := newPKI(t)
	writeCacerts(t, dir, p)
	ca := newTestCA(t, CAConfig{Dir: dir})
	if !ca.Root().Equal(p.root) {
		t.Fatalf("root = %q, want the plugged-in root", ca.Root().Subject)
	}
	id := mustWorkloadID(t, "demo", "web")
	svid, err := ca.NewSVID(id)
	if err != nil {
		t.Fatal(err)
	}
	if len(svid.Certificates) != 2 || !svid.Certificates[1].Equal(p.inter) {
		t.Fatalf("chain = %d certs, want leaf + plugged-in intermediate", len(svid.Certificates))
	}
	if _, err := verifyAt(svid.Certificates, x509bundle.FromX509Authorities(DefaultTrustDomain, []*x509.Certificate{p.root}), t0); err != nil {
		t.Errorf("Verify against the operator's root: %v", err)
	}
	if _, err := ca.RotateRoot(); err == nil {
		t.Error("RotateRoot of a plugged-in CA succeeded")
	}
	// The CA never writes over an operator's files.
	got, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil || !strings.Contains(string(got), "BEGIN CERTIFICATE") || len(mustParse(t, got)) != 1 || !mustParse(t, got)[0].Equal(p.inter) {
		t.Errorf("ca-cert.pem changed: %v", err)
	}
}

func mustParse(t *testing.T, b []byte) []*x509.Certificate {
	t.Helper()
	c, err := ParseCertsPEM(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestPluggedInCAErrorsNameTheFile(t *testing.T) {
	p := newPKI(t)
	other := newPKI(t)
	tests := []struct {
		name    string
		break_  func(t *testing.T, dir string)
		wantErr []string
	}{
		{
			name: "key does not match",
			break_: func(t *testing.T, dir string) {
				der, _ := x509.MarshalPKCS8PrivateKey(other.iKey)
				writePEM(t, filepath.Join(dir, CAKeyFile), "PRIVATE KEY", der)
			},
			wantErr: []string{CAKeyFile, "does not hold the key"},
		},
		{
			name:    "missing root",
			break_:  func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, RootCertFile)) },
			wantErr: []string{RootCertFile, "no such file"},
		},
		{
			name: "wrong root",
			break_: func(t *testing.T, dir string) {
				writePEM(t, filepath.Join(dir, RootCertFile), "CERTIFICATE", other.root.Raw)
			},
			wantErr: []string{CACertFile, "does not chain to a root in", RootCertFile},
		},
		{
			name:    "garbage cert",
			break_:  func(t *testing.T, dir string) { os.WriteFile(filepath.Join(dir, CACertFile), []byte("hello"), 0o600) },
			wantErr: []string{CACertFile, "no PEM certificate"},
		},
		{
			name: "not a CA",
			break_: func(t *testing.T, dir string) {
				tmpl := caTemplate("leaf", 9)
				tmpl.IsCA, tmpl.KeyUsage = false, x509.KeyUsageDigitalSignature
				leaf := newCert(t, tmpl, p.root, p.iKey.Public(), p.rootKey)
				writePEM(t, filepath.Join(dir, CACertFile), "CERTIFICATE", leaf.Raw)
			},
			wantErr: []string{CACertFile, "is not a CA"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeCacerts(t, dir, p)
			tt.break_(t, dir)
			_, err := NewCA(CAConfig{Dir: dir, Now: fixedClock(t0)})
			if err == nil {
				t.Fatal("NewCA succeeded")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}
