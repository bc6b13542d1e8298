package identity

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
)

// startCertService serves svc over mTLS on 127.0.0.1 with an SVID of the
// control plane, as meshd will.
func startCertService(t *testing.T, ca *CA, svc *CertService) string {
	t.Helper()
	serverSVID, err := ca.NewSVID(mustWorkloadID(t, AgentNamespace, "meshd"))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg := tlsconfig.MTLSServerConfig(serverSVID, ca.Bundle(), tlsconfig.AuthorizeMemberOf(ca.TrustDomain()))
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)))
	svc.Register(srv)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// dialAs connects with the given client SVID, checking the server is the
// control plane.
func dialAs(t *testing.T, ca *CA, addr string, svid *x509svid.SVID) securityv1alpha1.IstioCertificateServiceClient {
	t.Helper()
	tlsCfg := tlsconfig.MTLSClientConfig(svid, ca.Bundle(), tlsconfig.AuthorizeID(mustWorkloadID(t, AgentNamespace, "meshd")))
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return securityv1alpha1.NewIstioCertificateServiceClient(conn)
}

func csrPEM(t *testing.T, uris ...spiffeid.ID) string {
	t.Helper()
	tmpl := &x509.CertificateRequest{DNSNames: []string{"ignored.example"}}
	for _, id := range uris {
		tmpl.URIs = append(tmpl.URIs, id.URL())
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, ecKey(t))
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func parseChain(t *testing.T, resp *securityv1alpha1.IstioCertificateResponse) []*x509.Certificate {
	t.Helper()
	var chain []*x509.Certificate
	for i, p := range resp.GetCertChain() {
		c, err := ParseCertsPEM([]byte(p))
		if err != nil || len(c) != 1 {
			t.Fatalf("cert_chain[%d]: %d certs, %v; want one PEM certificate per entry", i, len(c), err)
		}
		chain = append(chain, c...)
	}
	return chain
}

func TestCertServiceOverMTLS(t *testing.T) {
	ca := newTestCA(t, CAConfig{Now: time.Now})
	svc, err := NewCertService(CertServiceConfig{Signer: ca})
	if err != nil {
		t.Fatal(err)
	}
	addr := startCertService(t, ca, svc)
	web := mustWorkloadID(t, "demo", "web")
	db := mustWorkloadID(t, "demo", "db")
	webSVID, err := ca.NewSVID(web)
	if err != nil {
		t.Fatal(err)
	}
	client := dialAs(t, ca, addr, webSVID)
	ctx := t.Context()

	impersonate := func(id string) *structpb.Struct {
		return &structpb.Struct{Fields: map[string]*structpb.Value{ImpersonatedIdentityKey: structpb.NewStringValue(id)}}
	}
	tests := []struct {
		name     string
		req      *securityv1alpha1.IstioCertificateRequest
		wantCode codes.Code
		wantID   spiffeid.ID
		wantTTL  time.Duration
	}{
		{name: "own identity", req: &securityv1alpha1.IstioCertificateRequest{Csr: csrPEM(t, web)}, wantID: web, wantTTL: DefaultSVIDTTL},
		{name: "no SAN means own identity", req: &securityv1alpha1.IstioCertificateRequest{Csr: csrPEM(t), ValidityDuration: 3600}, wantID: web, wantTTL: time.Hour},
		{name: "impersonated self", req: &securityv1alpha1.IstioCertificateRequest{Csr: csrPEM(t), Metadata: impersonate(web.String())}, wantID: web, wantTTL: DefaultSVIDTTL},
		{name: "other identity", req: &securityv1alpha1.IstioCertificateRequest{Csr: csrPEM(t, db)}, wantCode: codes.PermissionDenied},
		{name: "other identity by metadata", req: &securityv1alpha1.IstioCertificateRequest{Csr: csrPEM(t), Metadata: impersonate(db.String())}, wantCode: codes.PermissionDenied},
		{name: "other trust domain", req: &securityv1alpha1.IstioCertificateRequest{Csr: csrPEM(t, spiffeid.RequireFromString("spiffe://evil.org/ns/demo/sa/web"))}, wantCode: codes.PermissionDenied},
		{name: "metadata disagrees with SAN", req: &securityv1alpha1.IstioCertificateRequest{Csr: csrPEM(t, web), Metadata: impersonate(db.String())}, wantCode: codes.InvalidArgument},
		{name: "two URI SANs", req: &securityv1alpha1.IstioCertificateRequest{Csr: csrPEM(t, web, db)}, wantCode: codes.InvalidArgument},
		{name: "malformed csr", req: &securityv1alpha1.IstioCertificateRequest{Csr: "-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n-----END CERTIFICATE REQUEST-----\n"}, wantCode: codes.InvalidArgument},
		{name: "not pem", req: &securityv1alpha1.IstioCertificateRequest{Csr: "hello"}, wantCode: codes.InvalidArgument},
		{name: "certificate instead of csr", req: &securityv1alpha1.IstioCertificateRequest{Csr: string(EncodeCertsPEM(webSVID.Certificates))}, wantCode: codes.InvalidArgument},
		{name: "negative validity", req: &securityv1alpha1.IstioCertificateRequest{Csr: csrPEM(t, web), ValidityDuration: -5}, wantCode: codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := client.CreateCertificate(ctx, tt.req)
			if tt.wantCode != codes.OK {
				if status.Code(err) != tt.wantCode {
					t.Fatalf("CreateCertificate = %v, want code %s", err, tt.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("CreateCertificate: %v", err)
			}
			chain := parseChain(t, resp)
			if len(chain) != 2 || !chain[len(chain)-1].Equal(ca.Root()) {
				t.Fatalf("chain has %d certs, want leaf then the root last", len(chain))
			}
			id, err := verifyAt(chain[:len(chain)-1], ca.Bundle(), time.Now())
			if err != nil {
				t.Fatalf("issued chain does not verify: %v", err)
			}
			if id != tt.wantID {
				t.Errorf("issued for %s, want %s", id, tt.wantID)
			}
			checkLeaf(t, chain[0], tt.wantID)
			if got := chain[0].NotAfter.Sub(chain[0].NotBefore) - backdate; got < tt.wantTTL-time.Minute || got > tt.wantTTL+time.Minute {
				t.Errorf("lifetime %s, want about %s", got, tt.wantTTL)
			}
		})
	}
}

// The rule the node agent will use plugs in as an Authorizer: a node agent
// may get the SVIDs of the service accounts scheduled on its node.
func TestCertServiceNodeAuthorizer(t *testing.T) {
	ca := newTestCA(t, CAConfig{Now: time.Now})
	web := mustWorkloadID(t, "demo", "web")
	podsOnNode := map[string][]spiffeid.ID{"node-1": {web}}
	authz := AuthorizerFunc(func(ctx context.Context, c Caller, requested spiffeid.ID) error {
		if c.Node == "" {
			return AuthorizeSelf().AuthorizeSVID(ctx, c, requested)
		}
		for _, id := range podsOnNode[c.Node] {
			if id == requested {
				return nil
			}
		}
		return fmt.Errorf("node %s runs no pod of %s", c.Node, requested)
	})
	svc, err := NewCertService(CertServiceConfig{Signer: ca, Authorizer: authz})
	if err != nil {
		t.Fatal(err)
	}
	addr := startCertService(t, ca, svc)
	for _, tt := range []struct {
		node string
		want codes.Code
	}{
		{"node-1", codes.OK},
		{"node-2", codes.PermissionDenied},
	} {
		t.Run(tt.node, func(t *testing.T) {
			agent, err := ca.NewAgentSVID(tt.node)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := dialAs(t, ca, addr, agent).CreateCertificate(t.Context(), &securityv1alpha1.IstioCertificateRequest{Csr: csrPEM(t, web)})
			if status.Code(err) != tt.want {
				t.Fatalf("CreateCertificate as agent of %s = %v, want %s", tt.node, err, tt.want)
			}
			if tt.want == codes.OK {
				if id, err := verifyAt(parseChain(t, resp), ca.Bundle(), time.Now()); err != nil || id != web {
					t.Errorf("issued %s, %v; want a verified SVID of %s", id, err, web)
				}
			}
		})
	}
}

func TestCertServicePluggedChainOrder(t *testing.T) {
	dir := t.TempDir()
	p := newPKI(t)
	writeCacerts(t, dir, p)
	ca := newTestCA(t, CAConfig{Dir: dir})
	svc, err := NewCertService(CertServiceConfig{Signer: ca, Now: fixedClock(t0)})
	if err != nil {
		t.Fatal(err)
	}
	web := mustWorkloadID(t, "demo", "web")
	webSVID, err := ca.NewSVID(web)
	if err != nil {
		t.Fatal(err)
	}
	// Called in-process with the peer a TLS handshake would record.
	ctx := peerContext(t.Context(), webSVID.Certificates)
	resp, err := svc.CreateCertificate(ctx, &securityv1alpha1.IstioCertificateRequest{Csr: csrPEM(t, web)})
	if err != nil {
		t.Fatal(err)
	}
	chain := parseChain(t, resp)
	if len(chain) != 3 || !chain[1].Equal(p.inter) || !chain[2].Equal(p.root) {
		t.Fatalf("chain of %d certs, want leaf, intermediate, root", len(chain))
	}

	// Without TLS peer information the caller is unauthenticated, and a
	// peer certificate from another CA is refused even if the TLS layer
	// was misconfigured to accept it.
	if _, err := svc.CreateCertificate(t.Context(), &securityv1alpha1.IstioCertificateRequest{Csr: csrPEM(t, web)}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("no peer: %v, want Unauthenticated", err)
	}
	stranger := newTestCA(t, CAConfig{})
	strangerSVID, err := stranger.NewSVID(web)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.CreateCertificate(peerContext(t.Context(), strangerSVID.Certificates), &securityv1alpha1.IstioCertificateRequest{Csr: csrPEM(t, web)}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("peer of another CA: %v, want Unauthenticated", err)
	}
}
