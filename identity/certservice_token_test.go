package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
)

// tokenTable is a TokenAuthenticator over a fixed token -> node table.
type tokenTable map[string]string

func (tt tokenTable) AuthenticateToken(_ context.Context, token string) (Caller, error) {
	node, ok := tt[token]
	if !ok {
		return Caller{}, errors.New("unknown token")
	}
	return Caller{ID: AgentID(spiffeid.RequireTrustDomainFromString("cluster.local")), Node: node}, nil
}

// startTokenCertService serves svc over TLS where the client certificate
// is optional (verified when given), as meshd's port is.
func startTokenCertService(t *testing.T, ca *CA, svc *CertService) string {
	t.Helper()
	serverSVID, err := ca.NewSVID(mustWorkloadID(t, AgentNamespace, "meshd"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := tlsconfig.MTLSServerConfig(serverSVID, ca.Bundle(), tlsconfig.AuthorizeMemberOf(ca.TrustDomain()))
	verify := cfg.VerifyPeerCertificate
	cfg.ClientAuth = tls.RequestClientCert
	cfg.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return nil
		}
		return verify(raw, chains)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	svc.Register(srv)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func TestCertServiceBearerToken(t *testing.T) {
	ca := newTestCA(t, CAConfig{Now: time.Now})
	svc, err := NewCertService(CertServiceConfig{Signer: ca, Tokens: tokenTable{"tok-a": "node-a"}})
	if err != nil {
		t.Fatal(err)
	}
	addr := startTokenCertService(t, ca, svc)
	meshd := mustWorkloadID(t, AgentNamespace, "meshd")
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(
		tlsconfig.TLSClientConfig(ca.Bundle(), tlsconfig.AuthorizeID(meshd)))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	client := securityv1alpha1.NewIstioCertificateServiceClient(conn)
	withToken := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+tok)
	}

	resp, err := client.CreateCertificate(withToken("tok-a"), &securityv1alpha1.IstioCertificateRequest{Csr: csrPEM(t)})
	if err != nil {
		t.Fatalf("token tok-a: %v", err)
	}
	chain := parseChain(t, resp)
	if node, err := AgentNode(chain[0], ca.TrustDomain()); err != nil || node != "node-a" {
		t.Errorf("token tok-a: AgentNode = %q, %v; want node-a", node, err)
	}
	if _, _, err := x509svid.Verify(chain[:len(chain)-1], ca.Bundle()); err != nil {
		t.Errorf("token tok-a: chain does not verify: %v", err)
	}

	for _, tc := range []struct {
		name string
		ctx  context.Context
		csr  string
		want codes.Code
	}{
		{"unknown token", withToken("tok-b"), csrPEM(t), codes.Unauthenticated},
		{"no token, no certificate", t.Context(), csrPEM(t), codes.Unauthenticated},
		{"not a bearer token", metadata.AppendToOutgoingContext(t.Context(), "authorization", "Basic tok-a"), csrPEM(t), codes.Unauthenticated},
		{"token asks for a workload", withToken("tok-a"), csrPEM(t, mustWorkloadID(t, "demo", "web")), codes.PermissionDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := client.CreateCertificate(tc.ctx, &securityv1alpha1.IstioCertificateRequest{Csr: tc.csr})
			if status.Code(err) != tc.want {
				t.Errorf("CreateCertificate = %v; want %s", err, tc.want)
			}
		})
	}
}

// The agent identity is only issued bound to the caller's node: an agent
// renewing keeps its node; a workload allowed everything by its
// authorizer still cannot get the agent identity.
func TestCertServiceAgentIdentityStaysBound(t *testing.T) {
	ca := newTestCA(t, CAConfig{Now: time.Now})
	allowAll := AuthorizerFunc(func(context.Context, Caller, spiffeid.ID) error { return nil })
	svc, err := NewCertService(CertServiceConfig{Signer: ca, Authorizer: allowAll})
	if err != nil {
		t.Fatal(err)
	}
	addr := startCertService(t, ca, svc)
	agentSVID, err := ca.NewAgentSVID("node-a")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := dialAs(t, ca, addr, agentSVID).CreateCertificate(t.Context(), &securityv1alpha1.IstioCertificateRequest{Csr: csrPEM(t)})
	if err != nil {
		t.Fatalf("agent renewal: %v", err)
	}
	if node, err := AgentNode(parseChain(t, resp)[0], ca.TrustDomain()); err != nil || node != "node-a" {
		t.Errorf("agent renewal: AgentNode = %q, %v; want node-a", node, err)
	}

	web, err := ca.NewSVID(mustWorkloadID(t, "demo", "web"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = dialAs(t, ca, addr, web).CreateCertificate(t.Context(), &securityv1alpha1.IstioCertificateRequest{Csr: csrPEM(t, AgentID(ca.TrustDomain()))})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("workload asking for the agent identity: %v; want PermissionDenied", err)
	}
}

// Where tokens are in use, an agent renewing over mTLS must bring a valid
// token of its own node: a stolen certificate cannot renew itself after
// its pod and token are gone.
func TestCertServiceAgentRenewalNeedsToken(t *testing.T) {
	ca := newTestCA(t, CAConfig{Now: time.Now})
	svc, err := NewCertService(CertServiceConfig{Signer: ca, Tokens: tokenTable{"tok-a": "node-a", "tok-b": "node-b"}})
	if err != nil {
		t.Fatal(err)
	}
	addr := startTokenCertService(t, ca, svc)
	agentSVID, err := ca.NewAgentSVID("node-a")
	if err != nil {
		t.Fatal(err)
	}
	client := dialAs(t, ca, addr, agentSVID)
	withToken := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+tok)
	}
	for _, tc := range []struct {
		name string
		ctx  context.Context
		want codes.Code
	}{
		{"no token", t.Context(), codes.Unauthenticated},
		{"unknown token", withToken("tok-x"), codes.Unauthenticated},
		{"another node's token", withToken("tok-b"), codes.PermissionDenied},
		{"oversized token", withToken(strings.Repeat("x", 9<<10)), codes.Unauthenticated},
		{"own node's token", withToken("tok-a"), codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := client.CreateCertificate(tc.ctx, &securityv1alpha1.IstioCertificateRequest{Csr: csrPEM(t), ValidityDuration: int64(30 * 24 * time.Hour / time.Second)})
			if status.Code(err) != tc.want {
				t.Fatalf("CreateCertificate = %v; want %s", err, tc.want)
			}
			if err != nil {
				return
			}
			leaf := parseChain(t, resp)[0]
			if node, err := AgentNode(leaf, ca.TrustDomain()); err != nil || node != "node-a" {
				t.Errorf("AgentNode = %q, %v; want node-a", node, err)
			}
			// 30 days asked for: an agent certificate lives at most DefaultSVIDTTL.
			if life := leaf.NotAfter.Sub(leaf.NotBefore); life > DefaultSVIDTTL+time.Minute {
				t.Errorf("agent certificate lives %s; want at most %s", life, DefaultSVIDTTL)
			}
		})
	}
}
