package xds

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	securityv1alpha1 "istio.io/api/security/v1alpha1"

	"github.com/nodemesh/nodemesh/identity"
)

// tokenTable is an identity.TokenAuthenticator over a fixed token -> node
// table.
type tokenTable map[string]string

func (tt tokenTable) AuthenticateToken(_ context.Context, token string) (identity.Caller, error) {
	node, ok := tt[token]
	if !ok {
		return identity.Caller{}, errors.New("unknown token")
	}
	return identity.Caller{ID: identity.AgentID(tdLocal), Node: node}, nil
}

func startTokenControlPlane(t *testing.T, ca *identity.CA, tokens identity.TokenAuthenticator) *ControlPlane {
	t.Helper()
	cp, err := StartControlPlane(ControlPlaneConfig{
		ConfigDir: secureMeshDir(t), XDSAddr: "127.0.0.1:0", DebugAddr: "127.0.0.1:0", PollInterval: 50 * time.Millisecond,
		Security: &ControlPlaneSecurity{CA: ca, Tokens: tokens},
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Stop() })
	return cp
}

// certlessConn dials meshd verifying its SVID but presenting no
// certificate, as a node agent does before its first certificate.
func certlessConn(t *testing.T, ca *identity.CA, addr string) *grpc.ClientConn {
	t.Helper()
	meshd, err := ControlPlaneID(tdLocal)
	if err != nil {
		t.Fatal(err)
	}
	cfg := tlsconfig.TLSClientConfig(ca, tlsconfig.AuthorizeID(meshd))
	cfg.MinVersion = tls.VersionTLS13
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// agentSVIDByToken asks for the caller's own identity (a CSR without
// names) with token as bearer.
func agentSVIDByToken(ctx context.Context, t *testing.T, conn *grpc.ClientConn, token string) (*x509svid.SVID, error) {
	t.Helper()
	return requestSVID(ctx, t, conn, token, spiffeid.ID{})
}

// requestSVID calls CreateCertificate for target (none: the caller's
// own), with token as bearer when set, and returns the SVID without the
// root.
func requestSVID(ctx context.Context, t *testing.T, conn *grpc.ClientConn, token string, target spiffeid.ID) (*x509svid.SVID, error) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{}
	if !target.IsZero() {
		tmpl.URIs = []*url.URL{target.URL()}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	resp, err := securityv1alpha1.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, &securityv1alpha1.IstioCertificateRequest{
		Csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})),
	})
	if err != nil {
		return nil, err
	}
	chain, err := identity.ParseCertsPEM([]byte(strings.Join(resp.GetCertChain(), "")))
	if err != nil || len(chain) < 2 {
		t.Fatalf("cert chain of %d certificates: %v", len(chain), err)
	}
	chain = chain[:len(chain)-1] // the root comes last
	id, err := x509svid.IDFromCert(chain[0])
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, nil
}

// A node agent without a certificate gets one for its node with a token;
// with it, it may speak for its node over ADS and for no other.
func TestTokenBootstrapAgentCertificate(t *testing.T) {
	ca := newTestCA(t, 0)
	cp := startTokenControlPlane(t, ca, tokenTable{"tok-a": "node-a"})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn := certlessConn(t, ca, cp.XDSAddr())

	svid, err := agentSVIDByToken(ctx, t, conn, "tok-a")
	if err != nil {
		t.Fatalf("CreateCertificate with token tok-a: %v", err)
	}
	if svid.ID != identity.AgentID(tdLocal) {
		t.Fatalf("got an SVID for %s, want %s", svid.ID, identity.AgentID(tdLocal))
	}
	if node, err := identity.AgentNode(svid.Certificates[0], tdLocal); err != nil || node != "node-a" {
		t.Fatalf("AgentNode = %q, %v; want node-a", node, err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, ca.Bundle()); err != nil {
		t.Fatalf("the SVID does not verify against the bundle: %v", err)
	}
	if _, err := agentSVIDByToken(ctx, t, conn, "tok-b"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("unknown token: %v, want Unauthenticated", err)
	}

	cfg, err := AgentClientTLS(staticSVID{svid}, ca, tdLocal)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := grpc.NewClient(cp.XDSAddr(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	for _, tc := range []struct {
		node string
		want codes.Code
	}{
		{"node-a", codes.OK},
		{"node-b", codes.PermissionDenied},
	} {
		t.Run("ADS as "+tc.node, func(t *testing.T) {
			st := sotwOn(t, agent)
			if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: tc.node}, TypeUrl: resourcev3.ClusterType}); err != nil {
				t.Fatal(err)
			}
			r, err := recvWithin(t, 10*time.Second, st.Recv)
			if status.Code(err) != tc.want {
				t.Fatalf("got %v; want %s", err, tc.want)
			}
			if tc.want == codes.OK && len(r.GetResources()) == 0 {
				t.Fatal("no clusters for node-a")
			}
		})
	}
}

// The TLS config lets a peer without a certificate in, but ADS still
// refuses it (SotW and Delta), and without Tokens so does CreateCertificate.
func TestCertlessPeerRefused(t *testing.T) {
	ca := newTestCA(t, 0)
	// Without token bootstrap the handshake itself refuses such a peer.
	noTokens := startTokenControlPlane(t, ca, nil)
	_, err := discoveryv3.NewAggregatedDiscoveryServiceClient(certlessConn(t, ca, noTokens.XDSAddr())).StreamAggregatedResources(t.Context())
	if err == nil {
		_, err = agentSVIDByToken(t.Context(), t, certlessConn(t, ca, noTokens.XDSAddr()), "tok-a")
	}
	// (TLS 1.3 reports it as an alert, EOF or a broken pipe: Unavailable.
	// The same client gets through the handshake below, with Tokens.)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("without Tokens: %v; want the handshake refused (Unavailable)", err)
	}

	cp := startTokenControlPlane(t, ca, tokenTable{"tok-a": "node-a"})
	conn := certlessConn(t, ca, cp.XDSAddr())
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	for _, tc := range []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"SotW", func(ctx context.Context) error {
			st, err := ads.StreamAggregatedResources(ctx)
			if err != nil {
				return err
			}
			// The server may refuse before reading: Send then sees
			// io.EOF and the status comes with Recv.
			if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: resourcev3.SecretType}); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			_, err = recvWithin(t, 10*time.Second, st.Recv)
			return err
		}},
		{"Delta", func(ctx context.Context) error {
			st, err := ads.DeltaAggregatedResources(ctx)
			if err != nil {
				return err
			}
			// The server may refuse before reading: Send then sees
			// io.EOF and the status comes with Recv.
			if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: resourcev3.SecretType}); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			_, err = recvWithin(t, 10*time.Second, st.Recv)
			return err
		}},
		{"CreateCertificate with a bad token", func(ctx context.Context) error {
			_, err := agentSVIDByToken(ctx, t, conn, "tok-x")
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			before := cp.Guard().RefusedStreams()
			err := tc.call(ctx)
			if status.Code(err) != codes.Unauthenticated {
				t.Fatalf("got %v; want Unauthenticated (the TLS handshake must succeed, the service refuse)", err)
			}
			if tc.name != "CreateCertificate with a bad token" && cp.Guard().RefusedStreams() == before {
				t.Fatal("refusal not counted")
			}
		})
	}
}

// requireClientCert serves a peer without a certificate only the methods it
// names.
func TestRequireClientCert(t *testing.T) {
	unary, stream := requireClientCert("/allowed/Unary")
	withCert := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{
		State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{{}}},
	}})
	without := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{}})
	for _, tc := range []struct {
		name   string
		ctx    context.Context
		method string
		want   codes.Code
	}{
		{"certificate, any method", withCert, "/other/Method", codes.OK},
		{"no certificate, allowed method", without, "/allowed/Unary", codes.OK},
		{"no certificate, other method", without, "/other/Method", codes.Unauthenticated},
		{"no peer", context.Background(), "/other/Method", codes.Unauthenticated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := unary(tc.ctx, nil, &grpc.UnaryServerInfo{FullMethod: tc.method}, func(context.Context, any) (any, error) { return nil, nil })
			if status.Code(err) != tc.want {
				t.Errorf("unary: %v; want %s", err, tc.want)
			}
			err = stream(nil, ctxStream{ctx: tc.ctx}, &grpc.StreamServerInfo{FullMethod: tc.method}, func(any, grpc.ServerStream) error { return nil })
			if status.Code(err) != tc.want {
				t.Errorf("stream: %v; want %s", err, tc.want)
			}
		})
	}
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s ctxStream) Context() context.Context { return s.ctx }

// A client certificate is optional, but one that is given must verify: an
// agent certificate of another CA is refused at the handshake.
func TestForeignClientCertRefused(t *testing.T) {
	ca, other := newTestCA(t, 0), newTestCA(t, 0)
	cp := startTokenControlPlane(t, ca, tokenTable{"tok-a": "node-a"})
	svid, err := other.NewAgentSVID("node-a")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := AgentClientTLS(staticSVID{svid}, ca, tdLocal)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(cp.XDSAddr(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// With TLS 1.3 the client learns of the refused certificate only
	// after its side of the handshake, as an alert, EOF or broken pipe:
	// Unavailable, whatever the text.
	_, err = agentSVIDByToken(ctx, t, conn, "tok-a")
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("CreateCertificate with a foreign certificate and a good token: %v; want a failed TLS handshake (Unavailable)", err)
	}
	// The same token without the foreign certificate is served: the
	// certificate, not the token, was refused.
	if _, err := agentSVIDByToken(ctx, t, certlessConn(t, ca, cp.XDSAddr()), "tok-a"); err != nil {
		t.Fatalf("the same token without a client certificate: %v", err)
	}
}
