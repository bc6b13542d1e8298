package xds

import (
	"errors"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
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
