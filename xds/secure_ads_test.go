package xds

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// meshd's own SVID: re-issued after half its lifetime; if re-issuing fails
// the current one is served until it expires, never after.
func TestRotatingSVID(t *testing.T) {
	ca := newTestCA(t, time.Hour)
	id, err := ControlPlaneID(tdLocal)
	if err != nil {
		t.Fatal(err)
	}
	first, err := ca.NewSVID(id)
	if err != nil {
		t.Fatal(err)
	}
	notAfter := first.Certificates[0].NotAfter
	now := first.Certificates[0].NotBefore
	fail := false
	r := &rotatingSVID{now: func() time.Time { return now }, issue: func() (*x509svid.SVID, error) {
		if fail {
			return nil, errors.New("ca unavailable")
		}
		return first, nil
	}}
	if got, err := r.GetX509SVID(); err != nil || got != first {
		t.Fatalf("first issue: %v %v", got, err)
	}
	fail = true
	now = notAfter.Add(-time.Minute) // past half-life: re-issue is tried and fails
	if got, err := r.GetX509SVID(); err != nil || got != first {
		t.Fatalf("before expiry with a failing CA: %v %v, want the current SVID", got, err)
	}
	now = notAfter.Add(time.Second)
	if got, err := r.GetX509SVID(); err == nil {
		t.Fatalf("after expiry with a failing CA: got %v, want an error", got)
	}
}

// meshd serves Istio's CreateCertificate on its mTLS port: a node agent
// gets the SVIDs of its own node's pods and nothing else.
func TestControlPlaneServesCertificates(t *testing.T) {
	ca := newTestCA(t, 0)
	cp := startSecureControlPlane(t, ca, false, 0)
	client, err := identity.NewCertClient(identity.CertClientConfig{
		Conn: agentConn(t, ca, cp.XDSAddr(), "node-a"), TrustDomain: tdLocal, Bundle: ca,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	own := spiffeidOf(t, sa("bookinfo-productpage"))
	svid, err := client.SVIDFor(ctx, identity.Workload{ID: own})
	if err != nil {
		t.Fatalf("SVID of a pod on node-a: %v", err)
	}
	if svid.ID != own {
		t.Fatalf("got an SVID for %s, want %s", svid.ID, own)
	}
	if _, err := client.SVIDFor(ctx, identity.Workload{ID: spiffeidOf(t, sa("only-on-b"))}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("SVID of a pod only on node-b: %v, want PermissionDenied", err)
	}
}

// SVIDs of service accounts without pods are dropped, not kept and rotated
// forever.
func TestSecretCachePrune(t *testing.T) {
	ca := newTestCA(t, time.Hour)
	c := newSecretCache(ca, tdLocal, time.Now)
	a, b := spiffeidOf(t, sa("a")), spiffeidOf(t, sa("b"))
	if _, err := c.forNode([]spiffeid.ID{a, b}); err != nil {
		t.Fatal(err)
	}
	c.prune(map[string]bool{a.String(): true})
	if _, kept := c.svids[a.String()]; !kept || len(c.svids) != 1 {
		t.Fatalf("after prune: %d SVIDs, a kept %v; want only a", len(c.svids), kept)
	}
}

func spiffeidOf(t *testing.T, s string) spiffeid.ID {
	t.Helper()
	id, err := spiffeid.FromString(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
