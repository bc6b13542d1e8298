package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Defaults of CAConfig.
const (
	DefaultSVIDTTL    = 24 * time.Hour
	DefaultMaxSVIDTTL = 7 * 24 * time.Hour
	DefaultRootTTL    = 10 * 365 * 24 * time.Hour
	// backdate is subtracted from NotBefore so that peers whose clock is a
	// little behind accept a fresh certificate; for SVIDs at most a tenth
	// of the TTL, so that a short-lived SVID is not past its half-life
	// (due for renewal) the moment it is issued.
	backdate = time.Minute
)

// CAConfig configures the built-in CA. The zero value is a usable in-memory
// CA for cluster.local with 24h SVIDs.
type CAConfig struct {
	// TrustDomain of every SVID; zero means DefaultTrustDomain.
	TrustDomain spiffeid.TrustDomain
	// Dir holds the CA in Istio's cacerts layout (ca-cert.pem, ca-key.pem,
	// root-cert.pem, cert-chain.pem). When ca-cert.pem exists the CA is
	// loaded from it (a plugged-in root or intermediate); otherwise a
	// self-signed root is generated and written there, the key with mode
	// 0600. Empty: the root lives in memory only.
	Dir string
	// SVIDTTL is the lifetime of an SVID when the caller asks for none
	// (default 24h). MaxSVIDTTL caps what a caller may ask for (default 7d).
	SVIDTTL    time.Duration
	MaxSVIDTTL time.Duration
	// RootTTL is the lifetime of a generated root (default 10 years).
	RootTTL time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Validate reports an unusable configuration.
func (c CAConfig) Validate() error {
	c = c.withDefaults()
	switch {
	case c.SVIDTTL < 0:
		return fmt.Errorf("ca config: SVIDTTL %s is negative", c.SVIDTTL)
	case c.MaxSVIDTTL < 0:
		return fmt.Errorf("ca config: MaxSVIDTTL %s is negative", c.MaxSVIDTTL)
	case c.RootTTL < 0:
		return fmt.Errorf("ca config: RootTTL %s is negative", c.RootTTL)
	case c.SVIDTTL > c.MaxSVIDTTL:
		return fmt.Errorf("ca config: SVIDTTL %s exceeds MaxSVIDTTL %s", c.SVIDTTL, c.MaxSVIDTTL)
	case c.RootTTL < 2*c.MaxSVIDTTL:
		return fmt.Errorf("ca config: RootTTL %s must be at least twice MaxSVIDTTL %s", c.RootTTL, c.MaxSVIDTTL)
	}
	return nil
}

func (c CAConfig) withDefaults() CAConfig {
	if c.TrustDomain.IsZero() {
		c.TrustDomain = DefaultTrustDomain
	}
	if c.SVIDTTL == 0 {
		c.SVIDTTL = DefaultSVIDTTL
	}
	if c.MaxSVIDTTL == 0 {
		c.MaxSVIDTTL = max(DefaultMaxSVIDTTL, c.SVIDTTL)
	}
	if c.RootTTL == 0 {
		c.RootTTL = DefaultRootTTL
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// signer is the certificate that signs SVIDs, with what a peer needs to
// chain it to a root.
type signer struct {
	cert *x509.Certificate
	key  crypto.Signer
	// intermediates go between the leaf and the root, nearest first; empty
	// when cert is the root itself.
	intermediates []*x509.Certificate
	root          *x509.Certificate
}

// CA is the built-in certificate authority. It is safe for concurrent use.
type CA struct {
	cfg CAConfig

	mu sync.RWMutex
	s  signer
	// roots is the trust bundle: the current root first, then roots kept
	// for the overlap of a rotation.
	roots []*x509.Certificate
	// rotatable is true when the CA owns its root (generated or a
	// self-signed ca-cert.pem) and may replace it.
	rotatable bool
}

// NewCA loads the CA from cfg.Dir, or generates a self-signed root (and
// persists it when cfg.Dir is set).
func NewCA(cfg CAConfig) (*CA, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ca := &CA{cfg: cfg.withDefaults()}
	if ca.cfg.Dir != "" {
		loaded, err := ca.load()
		if err != nil {
			return nil, err
		}
		if loaded {
			return ca, nil
		}
	}
	root, key, err := ca.newRoot()
	if err != nil {
		return nil, err
	}
	ca.s = signer{cert: root, key: key, root: root}
	ca.roots = []*x509.Certificate{root}
	ca.rotatable = true
	if err := ca.persist(); err != nil {
		return nil, err
	}
	return ca, nil
}

// TrustDomain is the trust domain of every SVID this CA signs.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.cfg.TrustDomain }

// Root returns the root that new SVIDs chain to.
func (ca *CA) Root() *x509.Certificate {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	return ca.s.root
}

// Bundle returns the trust bundle: every current root, including a previous
// root during a rotation's overlap, but no root that has expired (the
// signing root always stays). The caller owns the returned bundle.
func (ca *CA) Bundle() *x509bundle.Bundle {
	now := ca.cfg.Now()
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	roots := make([]*x509.Certificate, 0, len(ca.roots))
	for _, r := range ca.roots {
		if r.Equal(ca.s.root) || now.Before(r.NotAfter) {
			roots = append(roots, r)
		}
	}
	return x509bundle.FromX509Authorities(ca.cfg.TrustDomain, roots)
}

// GetX509BundleForTrustDomain implements go-spiffe's x509bundle.Source, so
// that TLS configs built on the CA (tlsconfig.MTLSServerConfig) follow root
// rotations without being rebuilt.
func (ca *CA) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != ca.cfg.TrustDomain {
		return nil, fmt.Errorf("ca: no bundle for trust domain %q (the CA serves %q)", td, ca.cfg.TrustDomain)
	}
	return ca.Bundle(), nil
}

// SignCSR signs an X.509-SVID for id with the CSR's public key. Everything
// else the CSR asks for (subject, DNS/URI/IP SANs, extensions) is ignored:
// the certificate carries exactly one URI SAN, id, which the caller must
// already have authorised. ttl <= 0 means CAConfig.SVIDTTL; larger than
// MaxSVIDTTL is capped. The chain is the leaf followed by any intermediates,
// never the root (peers take roots from the trust bundle).
func (ca *CA) SignCSR(csr *x509.CertificateRequest, id spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error) {
	if csr == nil {
		return nil, errors.New("sign csr: nil csr")
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("sign csr for %s: bad csr signature: %w", id, err)
	}
	if err := checkLeafKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("sign csr for %s: %w", id, err)
	}
	return ca.sign(csr.PublicKey, id, "", ttl)
}

// NewSVID generates a P-256 key and signs an SVID for id with the default
// TTL.
func (ca *CA) NewSVID(id spiffeid.ID) (*x509svid.SVID, error) {
	return ca.newSVID(id, "")
}

// SVIDFor implements Source: w.ID is issued (selectors are a SPIRE matter
// and are ignored here; authorisation is the caller's job).
func (ca *CA) SVIDFor(_ context.Context, w Workload) (*x509svid.SVID, error) {
	if w.ID.IsZero() {
		return nil, errors.New("ca: svid for workload: no SPIFFE ID given")
	}
	return ca.NewSVID(w.ID)
}

// TrustBundle implements Source.
func (ca *CA) TrustBundle(context.Context) (*x509bundle.Bundle, error) {
	return ca.Bundle(), nil
}

func (ca *CA) newSVID(id spiffeid.ID, node string) (*x509svid.SVID, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("new svid for %s: generate key: %w", id, err)
	}
	chain, err := ca.sign(key.Public(), id, node, 0)
	if err != nil {
		return nil, err
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, nil
}

// sign issues the leaf. node, when set, goes into the Subject common name
// (only the node agent's certificate has one, see SignAgentCSR).
func (ca *CA) sign(pub crypto.PublicKey, id spiffeid.ID, node string, ttl time.Duration) ([]*x509.Certificate, error) {
	if id.IsZero() {
		return nil, errors.New("sign svid: zero SPIFFE ID")
	}
	if !id.MemberOf(ca.cfg.TrustDomain) {
		return nil, fmt.Errorf("sign svid for %s: not in trust domain %s", id, ca.cfg.TrustDomain)
	}
	if id.Path() == "" {
		return nil, fmt.Errorf("sign svid for %s: an SVID needs a non-root path", id)
	}
	if ttl <= 0 {
		ttl = ca.cfg.SVIDTTL
	}
	ttl = min(ttl, ca.cfg.MaxSVIDTTL)
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("sign svid for %s: %w", id, err)
	}

	ca.mu.RLock()
	s := ca.s
	ca.mu.RUnlock()

	now := ca.cfg.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-min(backdate, ttl/10)),
		NotAfter:              now.Add(ttl),
		URIs:                  []*url.URL{id.URL()},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	if node != "" {
		tmpl.Subject = pkix.Name{CommonName: node}
	}
	// A certificate must not outlive its issuer.
	for _, c := range append([]*x509.Certificate{s.cert}, s.intermediates...) {
		if tmpl.NotAfter.After(c.NotAfter) {
			tmpl.NotAfter = c.NotAfter
		}
	}
	if !tmpl.NotAfter.After(now) {
		return nil, fmt.Errorf("sign svid for %s: signing certificate %q expired at %s", id, s.cert.Subject, s.cert.NotAfter.UTC())
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.cert, pub, s.key)
	if err != nil {
		return nil, fmt.Errorf("sign svid for %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("sign svid for %s: parse issued certificate: %w", id, err)
	}
	return append([]*x509.Certificate{leaf}, s.intermediates...), nil
}

// checkLeafKey accepts the key types Envoy and Istio proxies send.
func checkLeafKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("csr key: ECDSA curve %s not allowed (want P-256 or P-384)", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("csr key: RSA key of %d bits is too short (want >= 2048)", k.N.BitLen())
		}
	case ed25519.PublicKey:
	default:
		return fmt.Errorf("csr key: unsupported key type %T", pub)
	}
	return nil
}

func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("random serial: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil // never zero
}

// newRoot generates a self-signed ECDSA P-256 root for the trust domain.
func (ca *CA) newRoot() (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("new root: generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, fmt.Errorf("new root: %w", err)
	}
	now := ca.cfg.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"nodemesh"},
			CommonName:   "nodemesh root " + ca.cfg.TrustDomain.Name() + " " + now.UTC().Format("20060102T150405Z"),
		},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(ca.cfg.RootTTL),
		URIs:                  []*url.URL{ca.cfg.TrustDomain.ID().URL()},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true, // the root signs SVIDs only
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("new root: %w", err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("new root: parse: %w", err)
	}
	return root, key, nil
}

// RotateRoot generates a new self-signed root. New SVIDs are signed by it at
// once; the previous roots stay in the bundle until RetireOldRoots, so that
// peers holding SVIDs of the old root keep verifying during the overlap.
// Only a CA that owns its root can rotate it; a plugged-in CA is rotated by
// replacing its files.
func (ca *CA) RotateRoot() (*x509.Certificate, error) {
	ca.mu.RLock()
	rotatable := ca.rotatable
	ca.mu.RUnlock()
	if !rotatable {
		return nil, errors.New("rotate root: the CA is plugged in (ca-cert.pem is not self-signed); replace its files instead")
	}
	root, key, err := ca.newRoot()
	if err != nil {
		return nil, fmt.Errorf("rotate root: %w", err)
	}
	ca.mu.Lock()
	ca.s = signer{cert: root, key: key, root: root}
	ca.roots = append([]*x509.Certificate{root}, ca.roots...)
	ca.mu.Unlock()
	if err := ca.persist(); err != nil {
		return nil, fmt.Errorf("rotate root: %w", err)
	}
	return root, nil
}

// RetireOldRoots ends a rotation's overlap: only the current root stays in
// the bundle. Call it once every SVID signed by an old root has been
// replaced (after at most MaxSVIDTTL).
func (ca *CA) RetireOldRoots() error {
	ca.mu.Lock()
	ca.roots = slices.DeleteFunc(ca.roots, func(c *x509.Certificate) bool { return !c.Equal(ca.s.root) })
	ca.mu.Unlock()
	if err := ca.persist(); err != nil {
		return fmt.Errorf("retire old roots: %w", err)
	}
	return nil
}
