package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/identity"
	meshagent "github.com/nodemesh/nodemesh/nodeagent/agent"
	"github.com/nodemesh/nodemesh/xds"
)

// nodeTokens is a TokenAuthenticator over a fixed token -> node table (in a
// cluster: kubetoken's TokenReview of pod-bound service account tokens).
type nodeTokens map[string]string

func (nt nodeTokens) AuthenticateToken(_ context.Context, token string) (identity.Caller, error) {
	node, ok := nt[token]
	if !ok {
		return identity.Caller{}, errors.New("unknown token")
	}
	return identity.Caller{ID: identity.AgentID(identity.DefaultTrustDomain), Node: node}, nil
}

// presented records the serials of the client certificates a TLS config
// hands out, handshake by handshake.
type presented struct {
	mu      sync.Mutex
	serials []string
}

func (p *presented) wrap(cfg *tls.Config) {
	get := cfg.GetClientCertificate
	cfg.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		c, err := get(cri)
		if err == nil && len(c.Certificate) > 0 {
			if leaf, perr := x509.ParseCertificate(c.Certificate[0]); perr == nil {
				p.mu.Lock()
				p.serials = append(p.serials, leaf.SerialNumber.Text(16))
				p.mu.Unlock()
			}
		}
		return c, err
	}
}

func (p *presented) last() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.serials) == 0 {
		return ""
	}
	return p.serials[len(p.serials)-1]
}

// startSecureMeshd starts the control plane with mTLS from ca, and token
// bootstrap of agent certificates by tokens.
func (m *meshADS) startSecureMeshd(ca *identity.CA, tokens identity.TokenAuthenticator) {
	m.t.Helper()
	cp, err := xds.StartControlPlane(xds.ControlPlaneConfig{ConfigDir: m.dir, XDSAddr: "127.0.0.1:0", DebugAddr: "127.0.0.1:0",
		PollInterval: 50 * time.Millisecond, ShutdownTimeout: 500 * time.Millisecond, Logger: testLogger(),
		Security: &xds.ControlPlaneSecurity{CA: ca, Tokens: tokens}})
	if err != nil {
		m.t.Fatalf("start meshd: %v", err)
	}
	m.cp, m.xdsAddr = cp, cp.XDSAddr()
}

// TestAgentCertADS runs the real node agent (nodeagent/agent, in this
// process) on identity.AgentCert credentials against an in-process meshd
// with mTLS (xds.StartControlPlane, Security{CA, Tokens}) over real gRPC:
// each agent bootstraps its certificate with a token bound to its node,
// its ADS stream is accepted and syncs the kernel maps; the certificates
// are renewed over mTLS (SVID TTL 10s: every 5s) with a new serial and the
// same node, while the established ADS streams stay up (no reconnect) past
// the expiry of the certificate they were opened with and carry a config
// change; a new handshake presents the renewed certificate. A token
// bound to another node gets a certificate the agent refuses.
func TestAgentCertADS(t *testing.T) {
	c := NewCluster(t, Config{})
	RequireBPFFS(t)
	m := &meshADS{t: t, c: c, dir: t.TempDir(), vip: netip.MustParseAddr("10.78.0.95"), webVIP: netip.MustParseAddr("10.78.0.96"),
		agents: map[string]*runningAgent{}}
	echo := m.echoCandidates()
	m.write("mesh.yaml", m.meshYAML(echo))
	ca, err := identity.NewCA(identity.CAConfig{SVIDTTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	tokens := nodeTokens{}
	for _, n := range c.Nodes {
		tokens["tok-"+n.Name] = n.Name
	}
	m.startSecureMeshd(ca, tokens)
	t.Cleanup(m.stopMeshd)
	c.OnCleanup(func() {
		for _, n := range c.Nodes {
			m.stopAgent(n)
			m.uninstall(n)
		}
	})

	td := identity.DefaultTrustDomain
	meshdID, err := xds.ControlPlaneID(td)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	roots := filepath.Join(dir, "roots.pem")
	if err := os.WriteFile(roots, identity.EncodeCertsPEM(ca.Bundle().X509Authorities()), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	newCerts := func(node, token string) *identity.AgentCert {
		t.Helper()
		tokenFile := filepath.Join(dir, "token-"+node)
		if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		certs, err := identity.NewAgentCert(identity.AgentCertConfig{TrustDomain: td, Node: node, RootsFile: roots,
			TokenFile: tokenFile, Address: m.xdsAddr, ServerID: meshdID, PollInterval: 50 * time.Millisecond,
			RetryMin: 100 * time.Millisecond, RetryMax: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		go certs.Run(ctx)
		return certs
	}
	certs := map[string]*identity.AgentCert{}
	shown := map[string]*presented{}
	tlsCfgs := map[string]*tls.Config{}
	for _, n := range c.Nodes {
		certs[n.Name] = newCerts(n.Name, "tok-"+n.Name)
		select { // as mesh-agent does: the first handshake has a certificate
		case <-certs[n.Name].Issued():
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no certificate by token: %+v", n.Name, certs[n.Name].Status())
		}
		cfg, err := xds.AgentClientTLS(certs[n.Name], certs[n.Name], td)
		if err != nil {
			t.Fatal(err)
		}
		shown[n.Name] = &presented{}
		shown[n.Name].wrap(cfg)
		tlsCfgs[n.Name] = cfg
		st := certs[n.Name]
		m.startAgentWith(n, func(ac *meshagent.Config) {
			ac.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}
			ac.XDSCredentials = func() any { return st.Status() }
		})
	}
	start := time.Now()
	m.waitReady(30 * time.Second)
	t.Logf("agents bootstrapped by token and synced over mTLS in %v", time.Since(start))

	first := map[string]identity.AgentCertStatus{}
	for _, n := range c.Nodes {
		st := certs[n.Name].Status()
		if st.Via != identity.AgentCertToken || st.Node != n.Name || st.ID != identity.AgentID(td).String() {
			t.Fatalf("%s: first certificate %+v; want one for %s by token", n.Name, st, n.Name)
		}
		if got := shown[n.Name].last(); got != st.Serial {
			t.Errorf("%s: ADS handshake presented serial %q; want the bootstrapped %s", n.Name, got, st.Serial)
		}
		if s, ok := m.agents[n.Name].a.Status().XDSCredentials.(identity.AgentCertStatus); !ok || s.Serial != st.Serial {
			t.Errorf("%s: agent /status xdsCredentials = %+v; want serial %s", n.Name, m.agents[n.Name].a.Status().XDSCredentials, st.Serial)
		}
		first[n.Name] = st
	}

	t.Run("renewal-over-mtls", func(t *testing.T) {
		deadline := time.Now().Add(30 * time.Second)
		for _, n := range c.Nodes {
			for {
				st := certs[n.Name].Status()
				if st.Updates >= 3 && st.Via == "mtls" {
					if st.Serial == first[n.Name].Serial || st.Node != n.Name {
						t.Fatalf("%s: renewed certificate %+v; want a new serial for the same node", n.Name, st)
					}
					t.Logf("%s: %d certificates, serial %s -> %s, not after %s", n.Name, st.Updates, first[n.Name].Serial, st.Serial, st.NotAfter)
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: no second mTLS renewal within 30s: %+v", n.Name, st)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	})

	t.Run("stream-survives-renewal", func(t *testing.T) {
		for _, n := range c.Nodes {
			time.Sleep(time.Until(first[n.Name].NotAfter.Add(time.Second)))
		}
		since := time.Now()
		m.write("mesh.yaml", m.meshYAML(echo[:1]))
		m.waitBackends(echo[:1], since, 20*time.Second)
		for _, n := range c.Nodes {
			if st := m.agents[n.Name].a.Status().ADS; st.Reconnects != 0 || !st.Connected {
				t.Errorf("%s: ADS connected %v with %d reconnects (%s); want the first stream still up", n.Name, st.Connected, st.Reconnects, st.LastError)
			}
		}
	})

	t.Run("new-handshake-uses-renewed-cert", func(t *testing.T) {
		n := c.Nodes[0]
		conn, err := grpc.NewClient(m.xdsAddr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfgs[n.Name])))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
		defer scancel()
		stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: n.Name}, TypeUrl: dataplanev1.ServiceType}); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatalf("ADS as %s on a new connection: %v", n.Name, err)
		}
		cur := certs[n.Name].Status()
		if got := shown[n.Name].last(); got == first[n.Name].Serial || got == "" {
			t.Errorf("new handshake presented serial %q; want a renewed one (first %s, current %s)", got, first[n.Name].Serial, cur.Serial)
		}
	})

	t.Run("token-of-another-node", func(t *testing.T) {
		// node n1 with n2's token: meshd signs for n2, the agent refuses it.
		wrong := newCerts(c.Nodes[0].Name, "tok-"+c.Nodes[1].Name)
		deadline := time.Now().Add(10 * time.Second)
		want := `bound to node "` + c.Nodes[1].Name + `"`
		for !strings.Contains(wrong.Status().LastError, want) {
			if time.Now().After(deadline) {
				t.Fatalf("last error %q; want %q", wrong.Status().LastError, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if _, err := wrong.GetX509SVID(); err == nil {
			t.Error("a certificate for another node was installed")
		}
	})
}
