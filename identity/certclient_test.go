package identity

import (
	"context"
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
)

// The built-in CA mode end to end, as meshd and a node agent will run it:
// the agent holds an SVID naming its node, asks the control plane's
// certificate service over mTLS for its pods' SVIDs, and keeps them fresh
// with a Rotator, across a root rotation, on one connection.
func TestNodeAgentGetsPodSVIDsOverMTLS(t *testing.T) {
	ca := newTestCA(t, CAConfig{Now: time.Now, SVIDTTL: time.Hour})
	web := mustWorkloadID(t, "demo", "web")
	db := mustWorkloadID(t, "demo", "db")
	podsOnNode := map[string][]spiffeid.ID{"node-1": {web}}
	svc, err := NewCertService(CertServiceConfig{Signer: ca, Authorizer: AuthorizerFunc(
		func(_ context.Context, c Caller, requested spiffeid.ID) error {
			for _, id := range podsOnNode[c.Node] {
				if id == requested {
					return nil
				}
			}
			return fmt.Errorf("node %q runs no pod of %s", c.Node, requested)
		})})
	if err != nil {
		t.Fatal(err)
	}
	meshd := mustWorkloadID(t, AgentNamespace, "meshd")
	serverSVID, err := ca.NewSVID(meshd)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The CA itself is the bundle source: TLS follows root rotations.
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsconfig.MTLSServerConfig(serverSVID, ca, tlsconfig.AuthorizeMemberOf(ca.TrustDomain())))))
	svc.Register(srv)
	go srv.Serve(lis)
	defer srv.Stop()

	agentSVID, err := ca.NewAgentSVID("node-1")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(
		tlsconfig.MTLSClientConfig(agentSVID, ca, tlsconfig.AuthorizeID(meshd)))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client, err := NewCertClient(CertClientConfig{Conn: conn, TrustDomain: ca.TrustDomain(), Bundle: ca, TTL: 30 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := client.SVIDFor(ctx, Workload{ID: db}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("SVIDFor(db, not on node-1) = %v, want PermissionDenied", err)
	}

	rot, err := NewRotator(RotatorConfig{Source: client, Workload: Workload{ID: web}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	rctx, rcancel := context.WithCancel(ctx)
	go func() { done <- rot.Run(rctx) }()
	defer func() { rcancel(); <-done }()
	sub := rot.Subscribe()
	first, err := sub.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkUpdate(t, first, web)
	if got := first.SVID.Certificates[0].NotAfter.Sub(first.SVID.Certificates[0].NotBefore) - backdate; got != 30*time.Minute {
		t.Errorf("lifetime %s, want the 30m asked for", got)
	}

	oldRoot := ca.Root()
	if _, err := ca.RotateRoot(); err != nil {
		t.Fatal(err)
	}
	rot.Refresh()
	second, err := sub.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkUpdate(t, second, web)
	if err := second.SVID.Certificates[0].CheckSignatureFrom(ca.Root()); err != nil {
		t.Errorf("SVID after rotation not from the new root: %v", err)
	}
	if !second.Bundle.HasX509Authority(oldRoot) {
		t.Error("bundle after rotation dropped the old root during the overlap")
	}
	if _, _, err := x509svid.Verify(first.SVID.Certificates, second.Bundle); err != nil {
		t.Errorf("pre-rotation SVID no longer verifies: %v", err)
	}
}

func checkUpdate(t *testing.T, u Update, want spiffeid.ID) {
	t.Helper()
	id, _, err := x509svid.Verify(u.SVID.Certificates, u.Bundle)
	if err != nil || id != want {
		t.Fatalf("update: %s, %v; want a verified SVID of %s", id, err, want)
	}
	checkLeaf(t, u.SVID.Certificates[0], want)
	certPEM, keyPEM, err := u.SVID.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := x509svid.Parse(certPEM, keyPEM); err != nil {
		t.Errorf("update SVID does not round-trip (key mismatch?): %v", err)
	}
}

func TestCertClientConfigValidate(t *testing.T) {
	ca := newTestCA(t, CAConfig{})
	conn, err := grpc.NewClient("passthrough:///127.0.0.1:1", grpc.WithTransportCredentials(credentials.NewTLS(nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, tt := range []struct {
		name string
		cfg  CertClientConfig
		ok   bool
	}{
		{"ok", CertClientConfig{Conn: conn, TrustDomain: ca.TrustDomain(), Bundle: ca}, true},
		{"no conn", CertClientConfig{TrustDomain: ca.TrustDomain(), Bundle: ca}, false},
		{"no trust domain", CertClientConfig{Conn: conn, Bundle: ca}, false},
		{"no bundle", CertClientConfig{Conn: conn, TrustDomain: ca.TrustDomain()}, false},
		{"negative ttl", CertClientConfig{Conn: conn, TrustDomain: ca.TrustDomain(), Bundle: ca, TTL: -time.Second}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.cfg.Validate(); (err == nil) != tt.ok {
				t.Errorf("Validate = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}
