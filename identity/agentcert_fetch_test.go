package identity

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
)

// lyingCertService answers every CSR with what issue makes of it: a
// misbehaving (or impersonated) meshd.
type lyingCertService struct {
	securityv1alpha1.UnimplementedIstioCertificateServiceServer
	issue func(csr *x509.CertificateRequest) ([]*x509.Certificate, error)
	// tokens records the bearer tokens received.
	tokens chan string
}

func (s *lyingCertService) CreateCertificate(ctx context.Context, req *securityv1alpha1.IstioCertificateRequest) (*securityv1alpha1.IstioCertificateResponse, error) {
	if v := metadata.ValueFromIncomingContext(ctx, "authorization"); len(v) == 1 {
		select {
		case s.tokens <- v[0]:
		default:
		}
	}
	b, _ := pem.Decode([]byte(req.GetCsr()))
	if b == nil {
		return nil, errors.New("no csr")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, err
	}
	if len(csr.URIs)+len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) != 0 {
		return nil, errors.New("the agent's csr must carry no names")
	}
	chain, err := s.issue(csr)
	if err != nil {
		return nil, err
	}
	resp := &securityv1alpha1.IstioCertificateResponse{}
	for _, c := range chain {
		resp.CertChain = append(resp.CertChain, string(EncodeCertsPEM([]*x509.Certificate{c})))
	}
	return resp, nil
}

// startLyingCertService serves svc with server-only TLS as meshd's SVID.
func startLyingCertService(t *testing.T, ca *CA, svc *lyingCertService) string {
	t.Helper()
	serverSVID, err := ca.NewSVID(mustWorkloadID(t, AgentNamespace, "meshd"))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsconfig.TLSServerConfig(serverSVID))))
	securityv1alpha1.RegisterIstioCertificateServiceServer(srv, svc)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// A returned chain for another node, another key, another identity or
// another CA is refused, and the current certificate stays in use.
func TestAgentCertRefusesBadChain(t *testing.T) {
	ca := newTestCA(t, CAConfig{Now: time.Now})
	other := newTestCA(t, CAConfig{Now: time.Now})
	for _, tc := range []struct {
		name  string
		issue func(csr *x509.CertificateRequest) ([]*x509.Certificate, error)
		want  string
	}{
		{"another node", func(csr *x509.CertificateRequest) ([]*x509.Certificate, error) {
			return ca.SignAgentCSR(csr, "node-b", 0)
		}, `bound to node "node-b", this agent is node "node-a"`},
		{"another key", func(*x509.CertificateRequest) ([]*x509.Certificate, error) {
			svid, err := ca.NewAgentSVID("node-a")
			return svid.Certificates, err
		}, "not for our key"},
		{"a workload identity", func(csr *x509.CertificateRequest) ([]*x509.Certificate, error) {
			return ca.SignCSR(csr, mustWorkloadID(t, "demo", "web"), 0)
		}, "want spiffe://cluster.local/ns/nodemesh-system/sa/mesh-agent"},
		{"another CA", func(csr *x509.CertificateRequest) ([]*x509.Certificate, error) {
			return other.SignAgentCSR(csr, "node-a", 0)
		}, "x509svid: could not verify"},
		{"an empty chain", func(*x509.CertificateRequest) ([]*x509.Certificate, error) {
			return nil, nil
		}, "empty cert_chain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			svc := &lyingCertService{issue: tc.issue, tokens: make(chan string, 1)}
			a, _ := tokenAgent(t, ca, startLyingCertService(t, ca, svc), clock)
			a.check(t.Context())
			if _, err := a.GetX509SVID(); err == nil {
				t.Fatal("bootstrap: a bad chain was installed")
			}
			if st := a.Status(); !strings.Contains(st.LastError, tc.want) || st.Failures != 1 {
				t.Fatalf("bootstrap: last error %q, failures %d; want %q once", st.LastError, st.Failures, tc.want)
			}
			if got := <-svc.tokens; got != "Bearer tok-a" {
				t.Errorf("authorization sent = %q; want Bearer tok-a", got)
			}

			// With a valid certificate at its half-life, both the mTLS and
			// the token renewal are refused; the certificate stays.
			good, err := ca.NewAgentSVID("node-a")
			if err != nil {
				t.Fatal(err)
			}
			a.install(good, "test")
			clock.Add(13 * time.Hour) // default TTL 24h
			a.check(t.Context())
			st := a.Status()
			if !strings.Contains(st.LastError, "over mtls") || !strings.Contains(st.LastError, "with the token") || st.Failures != 1 {
				t.Errorf("renewal: last error %q, failures %d; want both ways refused once", st.LastError, st.Failures)
			}
			if got := currentSerial(t, a); got != good.Certificates[0].SerialNumber.Text(16) {
				t.Errorf("renewal: serial %s; want the valid certificate kept", got)
			}
		})
	}
}
