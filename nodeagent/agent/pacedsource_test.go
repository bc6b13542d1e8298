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

// TestSVIDFetchPacing runs the manager for two seconds against sources
// the rotator alone would hammer: a CA whose SVIDs are past their renewal
// time when issued (TTL 10s, NotBefore backdated a minute), and a source
// that always fails (backoff from 50ms doubling).
func TestSVIDFetchPacing(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ttl   time.Duration
		fail  error
		retry time.Duration
		max   int // fetches in 2s
	}{
		{"SVIDs born past their renewal time", 10 * time.Second, nil, 200 * time.Millisecond, 12},
		{"a failing source backs off", time.Hour, errors.New("meshd unreachable"), 50 * time.Millisecond, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := newFakeSource(t)
			ca, err := identity.NewCA(identity.CAConfig{SVIDTTL: tc.ttl})
			if err != nil {
				t.Fatal(err)
			}
			src.ca = ca
			src.setFail(tc.fail)
			m := newSVIDManager(svidManagerConfig{Node: "node-a", Source: src, Retry: tc.retry, BundleRefresh: time.Hour,
				Logger: slog.New(slog.DiscardHandler)})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- m.Run(ctx) }()
			m.SetWorkloads(map[string]*dataplanev1.Workload{"shop/web-0": workload("shop", "web-0", "web", "node-a")})
			time.Sleep(2 * time.Second)
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			n, _ := src.count(wid(t, "shop", "web"))
			if n < 2 || n > tc.max {
				t.Errorf("%d fetches in 2s, want 2 to %d", n, tc.max)
			}
			t.Logf("%d fetches in 2s", n)
		})
	}
}
