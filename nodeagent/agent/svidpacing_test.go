package agent

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/identity"
)

// agedCA issues SVIDs that are already past their renewal time: its clock
// runs 50 minutes behind, so an SVID of TTL 1h is valid now (until 10 min
// from now) but 40% of its lifetime lies in the past.
func agedCA(t *testing.T) *identity.CA {
	t.Helper()
	ca, err := identity.NewCA(identity.CAConfig{SVIDTTL: time.Hour, Now: func() time.Time { return time.Now().Add(-50 * time.Minute) }})
	if err != nil {
		t.Fatal(err)
	}
	svid, err := ca.NewSVID(wid(t, "shop", "web"))
	if err != nil {
		t.Fatal(err)
	}
	if !time.Now().After(svid.Certificates[0].NotBefore.Add(svid.Certificates[0].NotAfter.Sub(svid.Certificates[0].NotBefore) * 4 / 10)) {
		t.Fatalf("the aged CA's SVID (%s to %s) is not past its renewal time", svid.Certificates[0].NotBefore, svid.Certificates[0].NotAfter)
	}
	return ca
}

// TestSVIDFetchPacing: given SVIDs born past their renewal time, the
// manager's rotators fetch about once per Retry, not in a loop; a failing
// source backs off from Retry, doubling up to maxSVIDBackoff (pacing is
// identity.Rotator's, see TestRotatorPacesFetches; this checks the
// manager configures it). Only upper bounds on the counts depend on the
// clock, and a loaded machine only lowers them.
func TestSVIDFetchPacing(t *testing.T) {
	for _, tc := range []struct {
		name    string
		aged    bool
		fail    error
		retry   time.Duration
		backoff bool // the gap doubles after each fetch
	}{
		{"SVIDs born past their renewal time are fetched once per Retry", true, nil, 200 * time.Millisecond, false},
		{"a failing source backs off", false, errors.New("meshd unreachable"), 50 * time.Millisecond, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := newFakeSource(t)
			if tc.aged {
				src.ca = agedCA(t)
			}
			src.setFail(tc.fail)
			m := newSVIDManager(svidManagerConfig{Node: "node-a", Source: src, Retry: tc.retry, BundleRefresh: time.Hour,
				Logger: slog.New(slog.DiscardHandler)})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			start := time.Now()
			go func() { done <- m.Run(ctx) }()
			m.SetWorkloads(map[string]*dataplanev1.Workload{"shop/web-0": workload("shop", "web-0", "web", "node-a")})
			// It does fetch again (the SVID is due, or the fetch failed)...
			waitUntil(t, "a second fetch", 10*time.Second, func() bool {
				n, _ := src.count(wid(t, "shop", "web"))
				return n >= 2
			})
			time.Sleep(2 * time.Second)
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			// ...but no more often than the pacing allows: the most fetches
			// that fit in the time it ran, with gaps of Retry (doubling).
			elapsed := time.Since(start)
			n, _ := src.count(wid(t, "shop", "web"))
			limit, at, gap := 1, time.Duration(0), tc.retry
			for at+gap <= elapsed {
				at += gap
				limit++
				if tc.backoff {
					gap = min(2*gap, maxSVIDBackoff)
				}
			}
			if n > limit {
				t.Errorf("%d fetches in %s, want at most %d", n, elapsed.Round(time.Millisecond), limit)
			}
			t.Logf("%d fetches in %s (at most %d)", n, elapsed.Round(time.Millisecond), limit)
		})
	}
}
