package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
)

// CertClientConfig configures CertClient. Conn, TrustDomain and Bundle are
// required.
type CertClientConfig struct {
	// Conn reaches a CertService (or istiod) over mTLS, authenticated with
	// the caller's own SVID (a node agent's).
	Conn grpc.ClientConnInterface
	// TrustDomain of the SVIDs asked for.
	TrustDomain spiffeid.TrustDomain
	// Bundle verifies what the service returns and is what TrustBundle
	// reports; how roots reach the node (xDS, a file) is the caller's
	// choice.
	Bundle x509bundle.Source
	// TTL asked for (validity_duration); zero lets the service choose.
	TTL time.Duration
}

// Validate reports an unusable configuration.
func (c CertClientConfig) Validate() error {
	switch {
	case c.Conn == nil:
		return errors.New("cert client config: no Conn")
	case c.TrustDomain.IsZero():
		return errors.New("cert client config: no TrustDomain")
	case c.Bundle == nil:
		return errors.New("cert client config: no Bundle")
	case c.TTL < 0:
		return fmt.Errorf("cert client config: TTL %s is negative", c.TTL)
	}
	return nil
}

// CertClient is the node side of the built-in CA: a Source that generates a
// key locally and has the workload's SVID signed through Istio's certificate
// API. The private key never leaves the process.
type CertClient struct {
	cfg    CertClientConfig
	client securityv1alpha1.IstioCertificateServiceClient
}

// NewCertClient checks cfg.
func NewCertClient(cfg CertClientConfig) (*CertClient, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &CertClient{cfg: cfg, client: securityv1alpha1.NewIstioCertificateServiceClient(cfg.Conn)}, nil
}

// SVIDFor implements Source: a CSR for w.ID (required) goes to the service,
// which decides whether this caller may have it. The returned chain must
// verify against the bundle and carry w.ID.
func (c *CertClient) SVIDFor(ctx context.Context, w Workload) (*x509svid.SVID, error) {
	if w.ID.IsZero() {
		return nil, errors.New("cert client: svid for workload: no SPIFFE ID given")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("cert client: svid for %s: generate key: %w", w.ID, err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{w.ID.URL()}}, key)
	if err != nil {
		return nil, fmt.Errorf("cert client: svid for %s: csr: %w", w.ID, err)
	}
	resp, err := c.client.CreateCertificate(ctx, &securityv1alpha1.IstioCertificateRequest{
		Csr:              string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})),
		ValidityDuration: int64(c.cfg.TTL / time.Second),
	})
	if err != nil {
		return nil, fmt.Errorf("cert client: svid for %s: %w", w.ID, err)
	}
	var chain []*x509.Certificate
	for i, p := range resp.GetCertChain() {
		certs, err := ParseCertsPEM([]byte(p))
		if err != nil {
			return nil, fmt.Errorf("cert client: svid for %s: cert_chain[%d]: %w", w.ID, i, err)
		}
		chain = append(chain, certs...)
	}
	// Istio appends the root; an SVID's chain stops before it.
	for len(chain) > 1 && isSelfSigned(chain[len(chain)-1]) {
		chain = chain[:len(chain)-1]
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("cert client: svid for %s: empty cert_chain", w.ID)
	}
	id, _, err := x509svid.Verify(chain, c.cfg.Bundle)
	if err != nil {
		return nil, fmt.Errorf("cert client: svid for %s: returned chain: %w", w.ID, err)
	}
	if id != w.ID {
		return nil, fmt.Errorf("cert client: asked for %s, got an SVID for %s", w.ID, id)
	}
	if !publicKeysEqual(chain[0].PublicKey, key.Public()) {
		return nil, fmt.Errorf("cert client: svid for %s: returned certificate is not for our key", w.ID)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, nil
}

// TrustBundle implements Source.
func (c *CertClient) TrustBundle(context.Context) (*x509bundle.Bundle, error) {
	b, err := c.cfg.Bundle.GetX509BundleForTrustDomain(c.cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("cert client: trust bundle: %w", err)
	}
	return b, nil
}
