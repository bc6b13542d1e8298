package xds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	securityv1alpha1 "istio.io/api/security/v1alpha1"

	"github.com/nodemesh/nodemesh/identity"
)

// swappableSVID stands in for workloadapi.X509Source: SPIRE replaces the
// SVID when it renews it.
type swappableSVID struct {
	mu sync.Mutex
	s  *x509svid.SVID
}

func (s *swappableSVID) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.s, nil
}

func (s *swappableSVID) set(v *x509svid.SVID) { s.mu.Lock(); s.s = v; s.mu.Unlock() }

func startSPIREControlPlane(t *testing.T, tlsMat *SPIRETLS) (*ControlPlane, error) {
	t.Helper()
	cp, err := StartControlPlane(ControlPlaneConfig{
		ConfigDir: secureMeshDir(t), XDSAddr: "127.0.0.1:0", DebugAddr: "127.0.0.1:0", PollInterval: 50 * time.Millisecond,
		Security: &ControlPlaneSecurity{SPIRE: tlsMat},
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err == nil {
		t.Cleanup(func() { _ = cp.Stop() })
	}
	return cp, err
}

// In SPIRE mode meshd presents the SVID its source holds (renewals
// included), verifies agents with the source's bundle, authorises them by
// the node in their certificate, sends configs that name the node's SDS
// secrets, and serves no secrets and no CreateCertificate. Here an
// identity.CA plays SPIRE's part; e2e/spire runs the real one.
func TestSPIREModeControlPlane(t *testing.T) {
	upstream := newTestCA(t, 0)
	meshdID, err := ControlPlaneID(tdLocal)
	if err != nil {
		t.Fatal(err)
	}
	first, err := upstream.NewSVID(meshdID)
	if err != nil {
		t.Fatal(err)
	}
	own := &swappableSVID{s: first}
	cp, err := startSPIREControlPlane(t, &SPIRETLS{TrustDomain: tdLocal, SVID: own, Bundle: upstream})
	if err != nil {
		t.Fatal(err)
	}
	if cp.secureSrc == nil || cp.secureSrc.secrets != nil {
		t.Fatal("SPIRE mode: want a secure source without a secret cache")
	}

	agentGetsConfig := func(t *testing.T) {
		st := sotwOn(t, agentConn(t, upstream, cp.XDSAddr(), "node-a"))
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: resourcev3.ClusterType}); err != nil {
			t.Fatal(err)
		}
		r, err := recvWithin(t, 10*time.Second, st.Recv)
		if err != nil {
			t.Fatalf("agent of node-a: %v", err)
		}
		found := false
		for _, a := range r.GetResources() {
			c := &clusterv3.Cluster{}
			if err := a.UnmarshalTo(c); err != nil {
				t.Fatal(err)
			}
			if c.Name != "outbound|9080||details.default.svc.cluster.local" {
				continue
			}
			for _, tm := range c.GetTransportSocketMatches() {
				found = found || (tm.GetName() == "default/bookinfo-productpage" && tm.GetTransportSocket() != nil)
			}
		}
		if !found {
			t.Fatal("node-a's details cluster has no TLS socket for productpage's service account")
		}
	}

	t.Run("agent of node-a gets its mTLS config", agentGetsConfig)

	t.Run("no secrets are served", func(t *testing.T) {
		st := sotwOn(t, agentConn(t, upstream, cp.XDSAddr(), "node-a"))
		names := []string{sa("bookinfo-productpage")}
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: resourcev3.SecretType, ResourceNames: names}); err != nil {
			t.Fatal(err)
		}
		got := make(chan int, 1)
		go func() {
			r, err := st.Recv()
			if err != nil {
				got <- -1
				return
			}
			got <- len(r.GetResources())
		}()
		select {
		case n := <-got:
			if n != 0 {
				t.Fatalf("meshd served %d secrets in SPIRE mode", n)
			}
		case <-time.After(time.Second):
			// No response at all: nothing to serve.
		}
	})

	t.Run("no CreateCertificate", func(t *testing.T) {
		conn := agentConn(t, upstream, cp.XDSAddr(), "node-a")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := securityv1alpha1.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, &securityv1alpha1.IstioCertificateRequest{Csr: "x"})
		if status.Code(err) != codes.Unimplemented {
			t.Fatalf("CreateCertificate: %v; want Unimplemented", err)
		}
	})

	t.Run("an agent claiming another node is refused", func(t *testing.T) {
		st := sotwOn(t, agentConn(t, upstream, cp.XDSAddr(), "node-b"))
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: resourcev3.ClusterType}); err != nil {
			t.Fatal(err)
		}
		if _, err := recvWithin(t, 10*time.Second, st.Recv); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("got %v; want PermissionDenied", err)
		}
	})

	t.Run("a renewed SVID is presented from the next connection", func(t *testing.T) {
		renewed, err := upstream.NewSVID(meshdID)
		if err != nil {
			t.Fatal(err)
		}
		own.set(renewed)
		if got := presentedLeaf(t, upstream, cp.XDSAddr()); !got.Equal(renewed.Certificates[0]) {
			t.Fatalf("meshd presents serial %s, want the renewed %s", got.SerialNumber, renewed.Certificates[0].SerialNumber)
		}
	})
}

// presentedLeaf is the certificate meshd presents to a new agent
// connection.
func presentedLeaf(t *testing.T, ca *identity.CA, addr string) *x509.Certificate {
	t.Helper()
	svid, err := ca.NewAgentSVID("node-a")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := AgentClientTLS(staticSVID{svid}, ca, tdLocal)
	if err != nil {
		t.Fatal(err)
	}
	var leaf *x509.Certificate
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		leaf = cs.PeerCertificates[0]
		return nil
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	return leaf
}

// meshd refuses to start in SPIRE mode when SPIRE issues it another ID
// (its entry is wrong) or when the configuration mixes the two modes.
func TestSPIREModeRefusals(t *testing.T) {
	upstream := newTestCA(t, 0)
	other, err := upstream.NewSVID(spiffeid.RequireFromString(sa("not-meshd")))
	if err != nil {
		t.Fatal(err)
	}
	meshdID, _ := ControlPlaneID(tdLocal)
	good, err := upstream.NewSVID(meshdID)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		sec  ControlPlaneSecurity
		want string
	}{
		{"wrong ID", ControlPlaneSecurity{SPIRE: &SPIRETLS{TrustDomain: tdLocal, SVID: staticSVID{other}, Bundle: upstream}}, "SPIRE issued meshd the SVID " + sa("not-meshd")},
		{"both CA and SPIRE", ControlPlaneSecurity{CA: upstream, SPIRE: &SPIRETLS{TrustDomain: tdLocal, SVID: staticSVID{good}, Bundle: upstream}}, "exclusive"},
		{"no bundle", ControlPlaneSecurity{SPIRE: &SPIRETLS{TrustDomain: tdLocal, SVID: staticSVID{good}}}, "Bundle source is required"},
		{"neither", ControlPlaneSecurity{}, "CA or SPIRE is required"},
		{"token bootstrap", ControlPlaneSecurity{SPIRE: &SPIRETLS{TrustDomain: tdLocal, SVID: staticSVID{good}, Bundle: upstream}, Tokens: noTokens{}}, "with SPIRE, SPIRE attests the nodes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sec := tc.sec
			cp, err := StartControlPlane(ControlPlaneConfig{
				ConfigDir: secureMeshDir(t), XDSAddr: "127.0.0.1:0", DebugAddr: "127.0.0.1:0",
				Security: &sec, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			})
			if err == nil {
				cp.Stop()
				t.Fatal("started")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

// noTokens is a TokenAuthenticator that accepts nothing.
type noTokens struct{}

func (noTokens) AuthenticateToken(context.Context, string) (identity.Caller, error) {
	return identity.Caller{}, errors.New("no tokens")
}
