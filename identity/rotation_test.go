package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func TestNeedsRotation(t *testing.T) {
	nb := t0
	cert := &x509.Certificate{NotBefore: nb, NotAfter: nb.Add(24 * time.Hour)}
	for _, tt := range []struct {
		name string
		now  time.Time
		want bool
	}{
		{"fresh", nb, false},
		{"just before half", nb.Add(12*time.Hour - time.Nanosecond), false},
		{"at half", nb.Add(12 * time.Hour), true},
		{"after half", nb.Add(20 * time.Hour), true},
		{"expired", nb.Add(25 * time.Hour), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := NeedsRotation(cert, tt.now); got != tt.want {
				t.Errorf("NeedsRotation at %s = %v, want %v", tt.now.Sub(nb), got, tt.want)
			}
		})
	}
	if !NeedsRotation(nil, nb) {
		t.Error("NeedsRotation(nil) = false")
	}
}

// flakySource issues from a CA and fails while fail > 0.
type flakySource struct {
	ca *CA
	mu sync.Mutex
	// fail is the number of next calls that fail.
	fail  int
	calls int
}

func (s *flakySource) SVIDFor(ctx context.Context, w Workload) (*x509svid.SVID, error) {
	s.mu.Lock()
	s.calls++
	if s.fail > 0 {
		s.fail--
		s.mu.Unlock()
		return nil, errors.New("upstream unavailable")
	}
	s.mu.Unlock()
	return s.ca.SVIDFor(ctx, w)
}

func (s *flakySource) TrustBundle(ctx context.Context) (*x509bundle.Bundle, error) {
	return s.ca.TrustBundle(ctx)
}

// The rotation tests run in a synctest bubble: time is fake and advances
// only when every goroutine is blocked, so they are deterministic and fast.
func TestRotatorRenewsBeforeHalfLife(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca := newTestCA(t, CAConfig{SVIDTTL: time.Hour, Now: time.Now})
		src := &flakySource{ca: ca}
		r, err := NewRotator(RotatorConfig{Source: src, Workload: Workload{ID: mustWorkloadID(t, "demo", "web")}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- r.Run(ctx) }()

		// A subscriber that reads every update as it comes, and one that
		// reads nothing until the end: both must see every SVID.
		eager := r.Subscribe()
		lazy := r.Subscribe()
		var seen []*x509.Certificate
		for i := 0; i < 4; i++ {
			u, err := eager.Next(ctx)
			if err != nil {
				t.Fatal(err)
			}
			leaf := u.SVID.Certificates[0]
			if len(seen) > 0 {
				prev := seen[len(seen)-1]
				if NeedsRotation(prev, time.Now()) {
					t.Errorf("update %d came %s after the previous SVID's NotBefore: past its half-life", i, time.Since(prev.NotBefore))
				}
				if time.Now().After(prev.NotAfter) {
					t.Errorf("update %d came after the previous SVID expired", i)
				}
			}
			if _, err := verifyAt(u.SVID.Certificates, u.Bundle, time.Now()); err != nil {
				t.Errorf("update %d does not verify with its bundle: %v", i, err)
			}
			seen = append(seen, leaf)
		}
		for i := range seen {
			u, err := lazy.Next(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !u.SVID.Certificates[0].Equal(seen[i]) {
				t.Errorf("lazy subscriber update %d differs from the eager one's", i)
			}
		}
		// A late subscriber starts with the current SVID.
		late := r.Subscribe()
		u, err := late.Next(ctx)
		if err != nil || !u.SVID.Certificates[0].Equal(seen[len(seen)-1]) {
			t.Errorf("late subscriber: got %v, want the current SVID", err)
		}
		late.Close()
		if _, err := late.Next(ctx); !errors.Is(err, ErrSubscriptionClosed) {
			t.Errorf("Next after Close = %v, want ErrSubscriptionClosed", err)
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v, want context.Canceled", err)
		}
		if src.calls != 4 {
			t.Errorf("source called %d times for 4 SVIDs, want 4 (no needless re-issue)", src.calls)
		}
	})
}

func TestRotatorRetriesAndRefreshes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca := newTestCA(t, CAConfig{Now: time.Now})
		src := &flakySource{ca: ca, fail: 3}
		var errs []error
		r, err := NewRotator(RotatorConfig{
			Source:        src,
			Workload:      Workload{ID: mustWorkloadID(t, "demo", "web")},
			RetryInterval: 2 * time.Second,
			OnError:       func(err error) { errs = append(errs, err) },
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		start := time.Now()
		go func() { done <- r.Run(ctx) }()
		sub := r.Subscribe()
		first, err := sub.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := time.Since(start); got != 6*time.Second {
			t.Errorf("first SVID after %s, want 3 retries x 2s = 6s", got)
		}
		if len(errs) != 3 {
			t.Errorf("OnError called %d times, want 3", len(errs))
		}

		// After a root rotation, Refresh re-issues at once from the new root,
		// and the update carries both roots.
		oldRoot := ca.Root()
		if _, err := ca.RotateRoot(); err != nil {
			t.Fatal(err)
		}
		r.Refresh()
		second, err := sub.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if time.Since(start) != 6*time.Second {
			t.Errorf("refresh took %s of fake time, want none", time.Since(start)-6*time.Second)
		}
		if err := second.SVID.Certificates[0].CheckSignatureFrom(ca.Root()); err != nil {
			t.Errorf("refreshed SVID not from the new root: %v", err)
		}
		if !second.Bundle.HasX509Authority(oldRoot) || !second.Bundle.HasX509Authority(ca.Root()) {
			t.Error("bundle after rotation lacks the old or the new root")
		}
		if _, err := verifyAt(first.SVID.Certificates, second.Bundle, time.Now()); err != nil {
			t.Errorf("first SVID no longer verifies during the overlap: %v", err)
		}
		cancel()
		<-done
	})
}

func TestRotatorConfigValidate(t *testing.T) {
	src := &flakySource{}
	w := Workload{Selectors: []Selector{{"unix", "uid:1000"}}}
	for _, tt := range []struct {
		name string
		cfg  RotatorConfig
		ok   bool
	}{
		{"ok", RotatorConfig{Source: src, Workload: w}, true},
		{"no source", RotatorConfig{Workload: w}, false},
		{"no workload", RotatorConfig{Source: src}, false},
		{"renew after half-life", RotatorConfig{Source: src, Workload: w, RenewFraction: 0.6}, false},
		{"negative retry", RotatorConfig{Source: src, Workload: w, RetryInterval: -1}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.cfg.Validate(); (err == nil) != tt.ok {
				t.Errorf("Validate = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// pushSource is a Watcher that pushes the SVIDs sent on ch, and then fails
// its watch once to check that the Rotator resumes it.
type pushSource struct {
	ca      *CA
	ch      chan *x509svid.SVID
	watches int
}

func (p *pushSource) SVIDFor(context.Context, Workload) (*x509svid.SVID, error) {
	return nil, errors.New("pushSource is watched, never polled")
}

func (p *pushSource) TrustBundle(ctx context.Context) (*x509bundle.Bundle, error) {
	return p.ca.TrustBundle(ctx)
}

func (p *pushSource) WatchSVIDs(ctx context.Context, w Workload, fn func(*x509svid.SVID) error) error {
	p.watches++
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case s, ok := <-p.ch:
			if !ok {
				p.ch = make(chan *x509svid.SVID)
				return errors.New("stream broken")
			}
			if err := fn(s); err != nil {
				return err
			}
		}
	}
}

func TestRotatorFollowsWatcher(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca := newTestCA(t, CAConfig{Now: time.Now})
		id := mustWorkloadID(t, "demo", "web")
		src := &pushSource{ca: ca, ch: make(chan *x509svid.SVID)}
		var errs []error
		r, err := NewRotator(RotatorConfig{Source: src, Workload: Workload{ID: id}, RetryInterval: time.Second,
			OnError: func(err error) { errs = append(errs, err) }})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- r.Run(ctx) }()
		sub := r.Subscribe()

		s1, err1 := ca.NewSVID(id)
		s2, err2 := ca.NewSVID(id)
		if err := errors.Join(err1, err2); err != nil {
			t.Fatal(err)
		}
		src.ch <- s1
		src.ch <- s1 // a repeat (e.g. an unrelated agent update) is not republished
		src.ch <- s2
		close(src.ch) // the watch breaks; the Rotator resumes it after 1s
		synctest.Wait()
		time.Sleep(time.Second)
		synctest.Wait()
		s3, err := ca.NewSVID(id)
		if err != nil {
			t.Fatal(err)
		}
		src.ch <- s3
		for i, want := range []*x509svid.SVID{s1, s2, s3} {
			u, err := sub.Next(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !u.SVID.Certificates[0].Equal(want.Certificates[0]) {
				t.Errorf("update %d is not the pushed SVID %d", i, i)
			}
		}
		if src.watches != 2 || len(errs) != 1 {
			t.Errorf("watches = %d, errors = %v; want 2 watches and the one broken stream reported", src.watches, errs)
		}
		cancel()
		<-done
	})
}

func TestUpdatePEM(t *testing.T) {
	ca := newTestCA(t, CAConfig{})
	svid, err := ca.NewSVID(mustWorkloadID(t, "demo", "web"))
	if err != nil {
		t.Fatal(err)
	}
	chain, key, roots, err := Update{SVID: svid, Bundle: ca.Bundle()}.PEM()
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := x509svid.Parse(chain, key)
	if err != nil {
		t.Fatalf("x509svid.Parse of the PEM: %v", err)
	}
	rootCerts, err := ParseCertsPEM(roots)
	if err != nil || len(rootCerts) != 1 || !rootCerts[0].Equal(ca.Root()) {
		t.Fatalf("roots PEM: %d certs, %v; want the CA root", len(rootCerts), err)
	}
	if _, err := verifyAt(parsed.Certificates, x509bundle.FromX509Authorities(ca.TrustDomain(), rootCerts), t0); err != nil {
		t.Errorf("PEM round trip does not verify: %v", err)
	}
	if _, _, _, err := (Update{}).PEM(); err == nil {
		t.Error("PEM of an empty update succeeded")
	}
}

// A short-lived SVID is not due for renewal the moment it is issued (the
// clock-skew backdate would otherwise put its half-life in the past and
// every renewal loop would spin).
func TestShortSVIDNotDueAtIssue(t *testing.T) {
	now := t0
	ca := newTestCA(t, CAConfig{Now: func() time.Time { return now }, SVIDTTL: 10 * time.Second})
	for _, ttl := range []time.Duration{10 * time.Second, 90 * time.Second, time.Hour} {
		chain, err := ca.SignCSR(newCSR(t, ecKey(t), &x509.CertificateRequest{}), mustWorkloadID(t, "demo", "web"), ttl)
		if err != nil {
			t.Fatal(err)
		}
		if NeedsRotation(chain[0], now) {
			t.Errorf("ttl %s: due for renewal at issue (NotBefore %s before now)", ttl, now.Sub(chain[0].NotBefore))
		}
		if !NeedsRotation(chain[0], now.Add(ttl/2)) {
			t.Errorf("ttl %s: not due at half of the TTL", ttl)
		}
	}
}

// The rotator never asks its source in a loop: SVIDs already past their
// renewal time (a CA whose clock lags 50 minutes, TTL 1h) are fetched once
// per RetryInterval, and failures back off from RetryInterval, doubling up
// to MaxRetryInterval.
func TestRotatorPacesFetches(t *testing.T) {
	for _, tc := range []struct {
		name      string
		lag       time.Duration
		fail      int
		max       time.Duration
		firstAt   time.Duration // fake time of the first SVID
		callsAt10 int           // fetches in the first 10s
	}{
		{name: "aged SVIDs", lag: 50 * time.Minute, firstAt: 0, callsAt10: 6},                 // 0,2,4,6,8,10
		{name: "failures back off", fail: 4, max: 8 * time.Second, firstAt: 22 * time.Second}, // 0,2,6,14 fail; 22 ok
		{name: "failures without a maximum", fail: 4, firstAt: 8 * time.Second, callsAt10: 5}, // 0,2,4,6 fail; 8 ok
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ca := newTestCA(t, CAConfig{SVIDTTL: time.Hour, Now: func() time.Time { return time.Now().Add(-tc.lag) }})
				src := &flakySource{ca: ca, fail: tc.fail}
				r, err := NewRotator(RotatorConfig{Source: src, Workload: Workload{ID: mustWorkloadID(t, "demo", "web")},
					RetryInterval: 2 * time.Second, MaxRetryInterval: tc.max})
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithCancel(t.Context())
				done := make(chan error)
				start := time.Now()
				go func() { done <- r.Run(ctx) }()
				sub := r.Subscribe()
				if _, err := sub.Next(ctx); err != nil {
					t.Fatal(err)
				}
				if got := time.Since(start); got != tc.firstAt {
					t.Errorf("first SVID after %s, want %s", got, tc.firstAt)
				}
				if tc.callsAt10 > 0 {
					time.Sleep(10*time.Second - time.Since(start) + time.Millisecond)
					synctest.Wait()
					src.mu.Lock()
					calls := src.calls
					src.mu.Unlock()
					if calls != tc.callsAt10 {
						t.Errorf("%d fetches in 10s, want %d", calls, tc.callsAt10)
					}
				}
				cancel()
				<-done
			})
		})
	}
}
