package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// t0 is the fixed clock of the CA tests.
var t0 = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

func newTestCA(t *testing.T, cfg CAConfig) *CA {
	t.Helper()
	if cfg.Now == nil {
		cfg.Now = fixedClock(t0)
	}
	ca, err := NewCA(cfg)
	if err != nil {
		t.Fatalf("NewCA: %v", err)
	}
	return ca
}

func mustWorkloadID(t *testing.T, ns, sa string) spiffeid.ID {
	t.Helper()
	id, err := WorkloadID(spiffeid.TrustDomain{}, ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// verifyAt checks the chain with go-spiffe against bundle at time now.
func verifyAt(chain []*x509.Certificate, bundle *x509bundle.Bundle, now time.Time) (spiffeid.ID, error) {
	id, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(now))
	return id, err
}

func TestNewSVIDIsAnX509SVID(t *testing.T) {
	ca := newTestCA(t, CAConfig{})
	id := mustWorkloadID(t, "demo", "web")
	svid, err := ca.NewSVID(id)
	if err != nil {
		t.Fatalf("NewSVID: %v", err)
	}
	got, err := verifyAt(svid.Certificates, ca.Bundle(), t0)
	if err != nil {
		t.Fatalf("x509svid.Verify: %v", err)
	}
	if got != id {
		t.Errorf("verified id = %s, want %s", got, id)
	}
	leaf := svid.Certificates[0]
	checkLeaf(t, leaf, id)
	if want := t0.Add(DefaultSVIDTTL); !leaf.NotAfter.Equal(want) {
		t.Errorf("NotAfter = %s, want %s (24h default)", leaf.NotAfter, want)
	}
	if k, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("leaf key = %T, want ECDSA P-256", leaf.PublicKey)
	}
	root := ca.Root()
	if k, ok := root.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("root key = %T, want ECDSA P-256", root.PublicKey)
	}
	if len(svid.Certificates) != 1 {
		t.Errorf("chain has %d certificates, want the leaf only (the root comes from the bundle)", len(svid.Certificates))
	}
	// The SVID round-trips through go-spiffe's own parser (key matches).
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	if _, err := x509svid.Parse(certPEM, keyPEM); err != nil {
		t.Errorf("x509svid.Parse: %v", err)
	}
	// Expired after the TTL.
	if _, err := verifyAt(svid.Certificates, ca.Bundle(), t0.Add(DefaultSVIDTTL+time.Second)); err == nil {
		t.Error("Verify after expiry succeeded")
	}
}

// checkLeaf asserts the X.509-SVID profile: exactly the URI SAN, no other
// name, digitalSignature|keyEncipherment, server and client auth.
func checkLeaf(t *testing.T, leaf *x509.Certificate, id spiffeid.ID) {
	t.Helper()
	if diff := cmp.Diff([]string{id.String()}, urisOf(leaf)); diff != "" {
		t.Errorf("URI SANs (-want +got):\n%s", diff)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("leaf has other SANs: dns %v ip %v email %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if leaf.Subject.CommonName != "" || len(leaf.Subject.Organization) != 0 {
		t.Errorf("leaf subject = %q, want empty", leaf.Subject)
	}
	if want := x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment; leaf.KeyUsage != want {
		t.Errorf("KeyUsage = %b, want %b", leaf.KeyUsage, want)
	}
	if diff := cmp.Diff([]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, leaf.ExtKeyUsage); diff != "" {
		t.Errorf("ExtKeyUsage (-want +got):\n%s", diff)
	}
	if leaf.IsCA {
		t.Error("leaf is a CA")
	}
}

func urisOf(c *x509.Certificate) []string {
	var out []string
	for _, u := range c.URIs {
		out = append(out, u.String())
	}
	return out
}

func newCSR(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) *x509.CertificateRequest {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatalf("CreateCertificateRequest: %v", err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func ecKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSignCSRIgnoresRequestedNames(t *testing.T) {
	ca := newTestCA(t, CAConfig{})
	id := mustWorkloadID(t, "demo", "web")
	other := mustWorkloadID(t, "kube-system", "admin")
	key := ecKey(t)
	csr := newCSR(t, key, &x509.CertificateRequest{
		Subject:        pkix.Name{CommonName: "admin.kube-system", Organization: []string{"system:masters"}},
		DNSNames:       []string{"evil.example.com"},
		IPAddresses:    []net.IP{net.ParseIP("10.0.0.1")},
		EmailAddresses: []string{"root@example.com"},
		URIs:           []*url.URL{other.URL(), id.URL()},
	})
	chain, err := ca.SignCSR(csr, id, 0)
	if err != nil {
		t.Fatalf("SignCSR: %v", err)
	}
	checkLeaf(t, chain[0], id)
	if !publicKeysEqual(chain[0].PublicKey, key.Public()) {
		t.Error("leaf does not carry the CSR's public key")
	}
	if _, err := verifyAt(chain, ca.Bundle(), t0); err != nil {
		t.Errorf("Verify: %v", err)
	}
}

func TestSignCSRRejects(t *testing.T) {
	ca := newTestCA(t, CAConfig{})
	good := newCSR(t, ecKey(t), nil)
	tampered := *good
	tampered.Signature = append([]byte(nil), good.Signature...)
	tampered.Signature[len(tampered.Signature)-1] ^= 0xff
	rsaSmall, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id := mustWorkloadID(t, "demo", "web")
	foreign := spiffeid.RequireFromString("spiffe://other.org/ns/demo/sa/web")
	tests := []struct {
		name    string
		csr     *x509.CertificateRequest
		id      spiffeid.ID
		wantErr string
	}{
		{name: "nil csr", id: id, wantErr: "nil csr"},
		{name: "bad signature", csr: &tampered, id: id, wantErr: "bad csr signature"},
		{name: "short rsa key", csr: newCSR(t, rsaSmall, nil), id: id, wantErr: "too short"},
		{name: "p224 key", csr: newCSR(t, p224, nil), id: id, wantErr: "not allowed"},
		{name: "zero id", csr: good, wantErr: "zero SPIFFE ID"},
		{name: "other trust domain", csr: good, id: foreign, wantErr: "not in trust domain"},
		{name: "trust domain id", csr: good, id: DefaultTrustDomain.ID(), wantErr: "non-root path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := ca.SignCSR(tt.csr, tt.id, 0)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("SignCSR = %d certs, %v; want error containing %q", len(chain), err, tt.wantErr)
			}
		})
	}
}

func TestSVIDTTL(t *testing.T) {
	ca := newTestCA(t, CAConfig{SVIDTTL: time.Hour, MaxSVIDTTL: 4 * time.Hour})
	csr := newCSR(t, ecKey(t), nil)
	id := mustWorkloadID(t, "demo", "web")
	for _, tt := range []struct {
		name string
		ttl  time.Duration
		want time.Duration
	}{
		{"default", 0, time.Hour},
		{"requested", 2 * time.Hour, 2 * time.Hour},
		{"capped", 48 * time.Hour, 4 * time.Hour},
	} {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := ca.SignCSR(csr, id, tt.ttl)
			if err != nil {
				t.Fatal(err)
			}
			if got := chain[0].NotAfter.Sub(t0); got != tt.want {
				t.Errorf("lifetime = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestCAConfigValidate(t *testing.T) {
	for _, tt := range []struct {
		name    string
		cfg     CAConfig
		wantErr string
	}{
		{name: "zero value", cfg: CAConfig{}},
		{name: "negative ttl", cfg: CAConfig{SVIDTTL: -time.Hour}, wantErr: "SVIDTTL -1h0m0s is negative"},
		{name: "ttl over max", cfg: CAConfig{SVIDTTL: 2 * time.Hour, MaxSVIDTTL: time.Hour}, wantErr: "exceeds MaxSVIDTTL"},
		{name: "short root", cfg: CAConfig{RootTTL: 24 * time.Hour}, wantErr: "RootTTL 24h0m0s must be at least twice"},
		{name: "long default ttl raises max", cfg: CAConfig{SVIDTTL: 30 * 24 * time.Hour}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestCAPersistsGeneratedRoot(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca1 := newTestCA(t, CAConfig{Dir: dir})
	fi, err := os.Stat(filepath.Join(dir, CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s mode = %v, want 0600", CAKeyFile, fi.Mode().Perm())
	}
	for _, f := range []string{CACertFile, RootCertFile, CertChainFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("missing %s: %v", f, err)
		}
	}
	svid1, err := ca1.NewSVID(mustWorkloadID(t, "demo", "web"))
	if err != nil {
		t.Fatal(err)
	}

	ca2 := newTestCA(t, CAConfig{Dir: dir})
	if !ca2.Root().Equal(ca1.Root()) {
		t.Fatal("second start generated a new root instead of loading the persisted one")
	}
	if _, err := verifyAt(svid1.Certificates, ca2.Bundle(), t0); err != nil {
		t.Errorf("SVID of the first start does not verify after restart: %v", err)
	}
	svid2, err := ca2.NewSVID(mustWorkloadID(t, "demo", "web"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verifyAt(svid2.Certificates, ca1.Bundle(), t0); err != nil {
		t.Errorf("SVID after restart does not verify with the first bundle: %v", err)
	}
}

func TestRootRotation(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	now := t0
	ca := newTestCA(t, CAConfig{Dir: dir, Now: func() time.Time { return now }})
	id := mustWorkloadID(t, "demo", "web")
	oldRoot := ca.Root()
	oldSVID, err := ca.NewSVID(id)
	if err != nil {
		t.Fatal(err)
	}

	now = t0.Add(time.Hour)
	newRoot, err := ca.RotateRoot()
	if err != nil {
		t.Fatalf("RotateRoot: %v", err)
	}
	if newRoot.Equal(oldRoot) || !ca.Root().Equal(newRoot) {
		t.Fatal("RotateRoot did not switch to a new root")
	}
	newSVID, err := ca.NewSVID(id)
	if err != nil {
		t.Fatal(err)
	}
	if err := newSVID.Certificates[0].CheckSignatureFrom(newRoot); err != nil {
		t.Errorf("new SVID not signed by the new root: %v", err)
	}
	if err := newSVID.Certificates[0].CheckSignatureFrom(oldRoot); err == nil {
		t.Error("new SVID verifies against the old root")
	}
	bundle := ca.Bundle()
	if !bundle.HasX509Authority(oldRoot) || !bundle.HasX509Authority(newRoot) {
		t.Fatalf("bundle during the overlap has %d roots, want old and new", len(bundle.X509Authorities()))
	}
	for name, s := range map[string]*x509svid.SVID{"old": oldSVID, "new": newSVID} {
		if _, err := verifyAt(s.Certificates, bundle, now); err != nil {
			t.Errorf("%s SVID during the overlap: %v", name, err)
		}
	}

	// A restart during the overlap keeps both roots and the new signer.
	restarted := newTestCA(t, CAConfig{Dir: dir, Now: func() time.Time { return now }})
	if !restarted.Root().Equal(newRoot) || len(restarted.Bundle().X509Authorities()) != 2 {
		t.Errorf("after restart: root new=%v, %d roots; want the new root and 2 roots",
			restarted.Root().Equal(newRoot), len(restarted.Bundle().X509Authorities()))
	}

	if err := ca.RetireOldRoots(); err != nil {
		t.Fatal(err)
	}
	if _, err := verifyAt(oldSVID.Certificates, ca.Bundle(), now); err == nil {
		t.Error("old SVID still verifies after RetireOldRoots")
	}
	if _, err := verifyAt(newSVID.Certificates, ca.Bundle(), now); err != nil {
		t.Errorf("new SVID after RetireOldRoots: %v", err)
	}
	if got := len(newTestCA(t, CAConfig{Dir: dir, Now: func() time.Time { return now }}).Bundle().X509Authorities()); got != 1 {
		t.Errorf("after retire and restart: %d roots, want 1", got)
	}
}

func TestBundleDropsExpiredOldRoots(t *testing.T) {
	now := t0
	ca := newTestCA(t, CAConfig{RootTTL: 30 * 24 * time.Hour, Now: func() time.Time { return now }})
	oldRoot := ca.Root()
	now = t0.Add(20 * 24 * time.Hour)
	newRoot, err := ca.RotateRoot()
	if err != nil {
		t.Fatal(err)
	}
	if got := len(ca.Bundle().X509Authorities()); got != 2 {
		t.Fatalf("during the overlap: %d roots, want 2", got)
	}
	now = oldRoot.NotAfter.Add(time.Second)
	b := ca.Bundle()
	if b.HasX509Authority(oldRoot) || !b.HasX509Authority(newRoot) {
		t.Errorf("after the old root expired: has old %v, has new %v; want only the new root",
			b.HasX509Authority(oldRoot), b.HasX509Authority(newRoot))
	}
}
