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

// TestSVIDFetchPacing shows what the pacing wrapper is for: a rotator
// alone, given SVIDs born past their renewal time, fetches again at once,
// in a tight loop; the manager (which wraps its source in pacedSource)
// fetches about once per Retry. A failing source backs off from Retry,
// doubling. Only upper bounds on the paced counts depend on the clock,
// and a loaded machine only lowers them.
func TestSVIDFetchPacing(t *testing.T) {
	t.Run("without pacing the rotator hammers a source of aged SVIDs", func(t *testing.T) {
		src := newFakeSource(t)
		src.ca = agedCA(t)
		rot, err := identity.NewRotator(identity.RotatorConfig{Source: src, Workload: identity.Workload{ID: wid(t, "shop", "web")},
			RetryInterval: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- rot.Run(ctx) }()
		// At one fetch per RetryInterval this would take 20s.
		waitUntil(t, "100 fetches", 10*time.Second, func() bool {
			n, _ := src.count(wid(t, "shop", "web"))
			return n >= 100
		})
		cancel()
		<-done
	})

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
