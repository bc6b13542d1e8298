package identity

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
)

// ImpersonatedIdentityKey is the IstioCertificateRequest metadata key with
// which a node proxy (Istio's ztunnel) asks for a workload's certificate on
// its behalf. When present it must agree with the CSR's URI SAN, if any.
const ImpersonatedIdentityKey = "ImpersonatedIdentity"

// Caller is the authenticated peer of a certificate request.
type Caller struct {
	// ID is the SPIFFE ID of the peer's verified X.509-SVID.
	ID spiffeid.ID
	// Node is the node named by a node agent's certificate (see
	// AgentNode); empty for any other caller.
	Node string
	// Certificates is the peer's verified chain, leaf first.
	Certificates []*x509.Certificate
}

// Authorizer decides whether caller may get an SVID for requested. A non-nil
// error refuses the request (PermissionDenied); its text goes to the caller.
type Authorizer interface {
	AuthorizeSVID(ctx context.Context, caller Caller, requested spiffeid.ID) error
}

// AuthorizerFunc adapts a function to Authorizer.
type AuthorizerFunc func(ctx context.Context, caller Caller, requested spiffeid.ID) error

// AuthorizeSVID implements Authorizer.
func (f AuthorizerFunc) AuthorizeSVID(ctx context.Context, caller Caller, requested spiffeid.ID) error {
	return f(ctx, caller, requested)
}

// AuthorizeSelf lets a caller renew its own identity and nothing else. It is
// CertService's default.
func AuthorizeSelf() Authorizer {
	return AuthorizerFunc(func(_ context.Context, caller Caller, requested spiffeid.ID) error {
		if caller.ID != requested {
			return fmt.Errorf("%s may not get an SVID for %s", caller.ID, requested)
		}
		return nil
	})
}

// TokenAuthenticator vouches for a caller that presents no client
// certificate by the bearer token of its request ("authorization: Bearer
// <token>" metadata, as istiod accepts Kubernetes service account tokens):
// a node agent's first certificate. It returns who the token stands for,
// e.g. Caller{ID: AgentID(td), Node: the node the token is bound to}; an
// error refuses the request (Unauthenticated).
type TokenAuthenticator interface {
	AuthenticateToken(ctx context.Context, token string) (Caller, error)
}

// CSRSigner is what CertService needs from a CA (*CA implements it).
type CSRSigner interface {
	SignCSR(csr *x509.CertificateRequest, id spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error)
	// SignAgentCSR signs AgentID with node bound (see agent.go).
	SignAgentCSR(csr *x509.CertificateRequest, node string, ttl time.Duration) ([]*x509.Certificate, error)
	TrustDomain() spiffeid.TrustDomain
	Bundle() *x509bundle.Bundle
}

// CertServiceConfig configures CertService. Signer is required.
type CertServiceConfig struct {
	Signer CSRSigner
	// Authorizer decides who gets which identity; nil means AuthorizeSelf.
	Authorizer Authorizer
	// Tokens authenticates callers without a client certificate; nil
	// refuses them.
	Tokens TokenAuthenticator
	// Now is the clock used to verify peer certificates (default time.Now).
	Now func() time.Time
}

// Validate reports an unusable configuration.
func (c CertServiceConfig) Validate() error {
	if c.Signer == nil {
		return errors.New("cert service config: no Signer")
	}
	return nil
}

// CertService implements Istio's IstioCertificateService (istio.io/api
// security/v1alpha1) on top of a CA: a CSR in, a PEM chain out (leaf, then
// intermediates, root last, as istiod answers). It must be served over TLS:
// the caller is the peer's X.509-SVID, which CertService verifies again
// against the signer's bundle, or, for a peer without a client certificate
// (a node agent's first request), whoever Config.Tokens says its bearer
// token stands for. The agent identity is only ever signed bound to the
// caller's node.
type CertService struct {
	securityv1alpha1.UnimplementedIstioCertificateServiceServer
	cfg CertServiceConfig
}

// NewCertService checks cfg and returns the service.
func NewCertService(cfg CertServiceConfig) (*CertService, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Authorizer == nil {
		cfg.Authorizer = AuthorizeSelf()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &CertService{cfg: cfg}, nil
}

// Register adds the service to a gRPC server.
func (s *CertService) Register(r grpc.ServiceRegistrar) {
	securityv1alpha1.RegisterIstioCertificateServiceServer(r, s)
}

// CreateCertificate implements IstioCertificateServiceServer.
func (s *CertService) CreateCertificate(ctx context.Context, req *securityv1alpha1.IstioCertificateRequest) (*securityv1alpha1.IstioCertificateResponse, error) {
	// The CSR first: a malformed request costs no token review.
	csr, err := parseCSR(req.GetCsr())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "create certificate: %v", err)
	}
	if req.GetValidityDuration() < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "create certificate: negative validity_duration %d", req.GetValidityDuration())
	}
	caller, err := s.caller(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "create certificate: %v", err)
	}
	requested, err := requestedID(csr, req, caller)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "create certificate: %v", err)
	}
	if td := s.cfg.Signer.TrustDomain(); !requested.MemberOf(td) {
		return nil, status.Errorf(codes.PermissionDenied, "create certificate: %s is not in trust domain %s", requested, td)
	}
	if err := s.cfg.Authorizer.AuthorizeSVID(ctx, caller, requested); err != nil {
		return nil, status.Errorf(codes.PermissionDenied, "create certificate: %v", err)
	}
	ttl := time.Duration(req.GetValidityDuration()) * time.Second
	var chain []*x509.Certificate
	if requested == AgentID(s.cfg.Signer.TrustDomain()) {
		if err := s.authorizeAgent(ctx, caller); err != nil {
			return nil, err
		}
		chain, err = s.cfg.Signer.SignAgentCSR(csr, caller.Node, min(ttl, DefaultSVIDTTL))
	} else {
		chain, err = s.cfg.Signer.SignCSR(csr, requested, ttl)
	}
	if err != nil {
		return nil, status.Errorf(codes.Internal, "create certificate: %v", err)
	}
	resp := &securityv1alpha1.IstioCertificateResponse{}
	for _, c := range chain {
		resp.CertChain = append(resp.CertChain, string(EncodeCertsPEM([]*x509.Certificate{c})))
	}
	if root := issuingRoot(chain[len(chain)-1], s.cfg.Signer.Bundle()); root != nil {
		resp.CertChain = append(resp.CertChain, string(EncodeCertsPEM([]*x509.Certificate{root})))
	}
	return resp, nil
}

// caller returns the verified identity of the mTLS peer, or, for a peer
// without a client certificate, the caller its bearer token stands for.
func (s *CertService) caller(ctx context.Context) (Caller, error) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return Caller{}, errors.New("no peer information (not served over mTLS)")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return Caller{}, fmt.Errorf("peer authenticated with %q, want tls", p.AuthInfo.AuthType())
	}
	certs := info.State.PeerCertificates
	if len(certs) == 0 {
		return s.tokenCaller(ctx)
	}
	// The TLS config should have verified the chain already; verifying
	// again costs little and keeps a misconfigured server safe.
	id, _, err := x509svid.Verify(certs, s.cfg.Signer.Bundle(), x509svid.WithTime(s.cfg.Now()))
	if err != nil {
		return Caller{}, fmt.Errorf("peer certificate: %w", err)
	}
	c := Caller{ID: id, Certificates: certs}
	if node, err := AgentNode(certs[0], s.cfg.Signer.TrustDomain()); err == nil {
		c.Node = node
	}
	return c, nil
}

// authorizeAgent decides whether caller may get the agent identity. It is
// only ever issued bound to the caller's node: to a token for node A, or to
// A's own agent SVID renewing. Where tokens are checked at all
// (Config.Tokens), a renewal must also bring a valid token for the same
// node, so that a certificate outlives neither the node's agent pod nor
// its token: a stolen certificate cannot renew itself forever.
func (s *CertService) authorizeAgent(ctx context.Context, caller Caller) error {
	if caller.Node == "" {
		return status.Errorf(codes.PermissionDenied, "create certificate: %s is issued only to a caller bound to a node", AgentID(s.cfg.Signer.TrustDomain()))
	}
	if s.cfg.Tokens == nil || len(caller.Certificates) == 0 {
		return nil // no tokens in use, or caller is the token's
	}
	tok, err := s.tokenCaller(ctx)
	if err != nil {
		return status.Errorf(codes.Unauthenticated, "create certificate: renewing the agent identity of node %s needs the node agent's bearer token too: %v", caller.Node, err)
	}
	if tok.Node != caller.Node {
		return status.Errorf(codes.PermissionDenied, "create certificate: the certificate is node %s's, the token node %s's", caller.Node, tok.Node)
	}
	return nil
}

// maxTokenBytes bounds a bearer token: Kubernetes service account tokens
// are about 1 KiB; a larger one is refused without a review.
const maxTokenBytes = 8 << 10

// tokenCaller authenticates the bearer token of a caller without a client
// certificate.
func (s *CertService) tokenCaller(ctx context.Context) (Caller, error) {
	if s.cfg.Tokens == nil {
		return Caller{}, errors.New("peer sent no client certificate")
	}
	auth := metadata.ValueFromIncomingContext(ctx, "authorization")
	if len(auth) != 1 {
		return Caller{}, fmt.Errorf("%d authorization headers, want one bearer token", len(auth))
	}
	token, ok := strings.CutPrefix(auth[0], "Bearer ")
	switch {
	case !ok || token == "":
		return Caller{}, errors.New("authorization header is not a bearer token")
	case len(token) > maxTokenBytes:
		return Caller{}, fmt.Errorf("bearer token of %d bytes, more than %d", len(token), maxTokenBytes)
	}
	c, err := s.cfg.Tokens.AuthenticateToken(ctx, token)
	if err != nil {
		return Caller{}, fmt.Errorf("bearer token: %w", err)
	}
	return c, nil
}

func parseCSR(p string) (*x509.CertificateRequest, error) {
	b, rest := pem.Decode([]byte(p))
	if b == nil {
		return nil, errors.New("csr: no PEM block")
	}
	if b.Type != "CERTIFICATE REQUEST" && b.Type != "NEW CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("csr: PEM block type %q, want CERTIFICATE REQUEST", b.Type)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("csr: trailing data after the PEM block")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("csr: bad signature: %w", err)
	}
	if err := checkLeafKey(csr.PublicKey); err != nil {
		return nil, err
	}
	return csr, nil
}

// requestedID is the identity asked for: the ImpersonatedIdentity metadata,
// else the CSR's URI SAN, else the caller's own. The CSR's other names are
// never used.
func requestedID(csr *x509.CertificateRequest, req *securityv1alpha1.IstioCertificateRequest, caller Caller) (spiffeid.ID, error) {
	var fromCSR spiffeid.ID
	switch len(csr.URIs) {
	case 0:
	case 1:
		id, err := spiffeid.FromURI(csr.URIs[0])
		if err != nil {
			return spiffeid.ID{}, fmt.Errorf("csr URI SAN %q: %w", csr.URIs[0], err)
		}
		fromCSR = id
	default:
		return spiffeid.ID{}, fmt.Errorf("csr has %d URI SANs, an SVID has exactly one", len(csr.URIs))
	}
	if v, ok := req.GetMetadata().GetFields()[ImpersonatedIdentityKey]; ok {
		id, err := spiffeid.FromString(v.GetStringValue())
		if err != nil {
			return spiffeid.ID{}, fmt.Errorf("metadata %s %q: %w", ImpersonatedIdentityKey, v.GetStringValue(), err)
		}
		if !fromCSR.IsZero() && fromCSR != id {
			return spiffeid.ID{}, fmt.Errorf("metadata %s %s differs from the csr's URI SAN %s", ImpersonatedIdentityKey, id, fromCSR)
		}
		return id, nil
	}
	if !fromCSR.IsZero() {
		return fromCSR, nil
	}
	return caller.ID, nil
}

// issuingRoot finds the root in bundle that signed top.
func issuingRoot(top *x509.Certificate, bundle *x509bundle.Bundle) *x509.Certificate {
	for _, r := range bundle.X509Authorities() {
		if r.Equal(top) {
			return nil // top is itself a root (not the case for SVIDs)
		}
		if bytes.Equal(top.RawIssuer, r.RawSubject) && top.CheckSignatureFrom(r) == nil {
			return r
		}
	}
	return nil
}
