package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
)

// renew gets the next certificate: over mTLS with the current one while it
// is valid, else (or when that fails) with the bearer token.
func (a *AgentCert) renew(ctx context.Context, now time.Time) error {
	a.mu.RLock()
	cur := a.svid
	a.mu.RUnlock()
	var errs []error
	if cur != nil && now.Before(cur.Certificates[0].NotAfter) {
		svid, err := a.fetch(ctx, cur)
		if err == nil {
			a.install(svid, "mtls")
			return nil
		}
		errs = append(errs, fmt.Errorf("over mtls with serial %s: %w", cur.Certificates[0].SerialNumber.Text(16), err))
	}
	svid, err := a.fetch(ctx, nil)
	if err == nil {
		a.install(svid, AgentCertToken)
		if len(errs) > 0 { // renewed, but say why mTLS did not do
			a.fail(fmt.Errorf("agent cert: renewed the certificate of node %q with the token: %w", a.cfg.Node, errs[0]))
		}
		return nil
	}
	errs = append(errs, fmt.Errorf("with the token of %s: %w", a.cfg.TokenFile, err))
	return fmt.Errorf("agent cert: renew the certificate of node %q from %s: %w", a.cfg.Node, a.cfg.Address, errors.Join(errs...))
}

// fetch has a new key signed by meshd: authenticated by client as its
// client certificate, or, when client is nil, by the bearer token. The
// connection is dialled for this one call, so the handshake presents the
// certificate given.
func (a *AgentCert) fetch(ctx context.Context, client *x509svid.SVID) (*x509svid.SVID, error) {
	authorize := tlsconfig.AuthorizeID(a.cfg.ServerID)
	var tlsCfg *tls.Config
	if client != nil {
		tlsCfg = tlsconfig.MTLSClientConfig(client, a, authorize)
	} else {
		tlsCfg = tlsconfig.TLSClientConfig(a, authorize)
	}
	// The token goes with every request, renewals over mTLS included:
	// meshd renews an agent certificate only for a still valid token of
	// the same node.
	if a.cfg.TokenFile != "" {
		tok, err := readToken(a.cfg.TokenFile)
		if err != nil && client == nil {
			return nil, err
		}
		if err == nil {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
		}
	}
	tlsCfg.MinVersion = tls.VersionTLS13
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, fmt.Errorf("csr: %w", err)
	}
	// Our TLS last: a later transport option wins, and the token must
	// never go out in plaintext.
	opts := append(slices.Clone(a.cfg.DialOptions), grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	conn, err := grpc.NewClient(a.cfg.Address, opts...)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, a.cfg.FetchTimeout)
	defer cancel()
	resp, err := securityv1alpha1.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, &securityv1alpha1.IstioCertificateRequest{
		Csr:              string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})),
		ValidityDuration: int64(a.cfg.TTL / time.Second),
	})
	if err != nil {
		return nil, err
	}
	chain, err := responseChain(resp)
	if err != nil {
		return nil, err
	}
	a.mu.RLock()
	bundle := a.bundle
	a.mu.RUnlock()
	if err := verifyAgentSVID(chain, bundle, a.cfg.TrustDomain, a.cfg.Node, a.cfg.Now()); err != nil {
		return nil, fmt.Errorf("returned certificate (roots %s): %w", a.cfg.RootsFile, err)
	}
	if !publicKeysEqual(chain[0].PublicKey, key.Public()) {
		return nil, errors.New("returned certificate is not for our key")
	}
	return &x509svid.SVID{ID: AgentID(a.cfg.TrustDomain), Certificates: chain, PrivateKey: key}, nil
}

// responseChain parses the PEM chain of a CreateCertificate answer,
// without the root Istio appends.
func responseChain(resp *securityv1alpha1.IstioCertificateResponse) ([]*x509.Certificate, error) {
	var chain []*x509.Certificate
	for i, p := range resp.GetCertChain() {
		certs, err := ParseCertsPEM([]byte(p))
		if err != nil {
			return nil, fmt.Errorf("cert_chain[%d]: %w", i, err)
		}
		chain = append(chain, certs...)
	}
	for len(chain) > 1 && isSelfSigned(chain[len(chain)-1]) {
		chain = chain[:len(chain)-1]
	}
	if len(chain) == 0 {
		return nil, errors.New("empty cert_chain")
	}
	return chain, nil
}
