package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// NeedsRotation reports whether half of cert's lifetime (NotBefore to
// NotAfter) has passed at now. A nil certificate always needs one.
func NeedsRotation(cert *x509.Certificate, now time.Time) bool {
	if cert == nil {
		return true
	}
	half := cert.NotAfter.Sub(cert.NotBefore) / 2
	return !now.Before(cert.NotBefore.Add(half))
}

// renewAt is when the Rotator fetches the next SVID: after fraction of the
// lifetime, so well before NeedsRotation turns true.
func renewAt(cert *x509.Certificate, fraction float64) time.Time {
	life := cert.NotAfter.Sub(cert.NotBefore)
	return cert.NotBefore.Add(time.Duration(float64(life) * fraction))
}

// RotatorConfig configures a Rotator. Source and Workload are required.
type RotatorConfig struct {
	Source   Source
	Workload Workload
	// RenewFraction is the part of an SVID's lifetime after which the next
	// one is fetched (default 0.4: before the half-life, so an SVID never
	// reaches NeedsRotation while the source is healthy).
	RenewFraction float64
	// RetryInterval is the wait after a failed fetch, or after a fetch
	// that returned the SVID already held (SPIRE renews on its own
	// schedule), and the least wait between two fetches: an SVID already
	// past its renewal time (a source's cache handing out an aged one, a
	// CA whose clock lags) is not fetched again at once, in a loop.
	// Default 5s.
	RetryInterval time.Duration
	// MaxRetryInterval, when above RetryInterval, makes the wait after
	// consecutive failed fetches double from RetryInterval up to it; zero
	// keeps it at RetryInterval.
	MaxRetryInterval time.Duration
	// FetchTimeout bounds one fetch (default 30s).
	FetchTimeout time.Duration
	// OnError, if set, is told about every failed fetch (the caller logs;
	// this package does not).
	OnError func(error)
}

// Validate reports an unusable configuration.
func (c RotatorConfig) Validate() error {
	switch {
	case c.Source == nil:
		return errors.New("rotator config: no Source")
	case c.Workload.ID.IsZero() && len(c.Workload.Selectors) == 0 && c.Workload.PID == 0:
		return errors.New("rotator config: Workload names no ID, selectors or PID")
	case c.RenewFraction < 0 || c.RenewFraction >= 0.5:
		return fmt.Errorf("rotator config: RenewFraction %g must be in (0, 0.5) to renew before the half-life", c.RenewFraction)
	case c.RetryInterval < 0:
		return fmt.Errorf("rotator config: RetryInterval %s is negative", c.RetryInterval)
	case c.MaxRetryInterval < 0:
		return fmt.Errorf("rotator config: MaxRetryInterval %s is negative", c.MaxRetryInterval)
	case c.FetchTimeout < 0:
		return fmt.Errorf("rotator config: FetchTimeout %s is negative", c.FetchTimeout)
	}
	return nil
}

func (c RotatorConfig) withDefaults() RotatorConfig {
	if c.RenewFraction == 0 {
		c.RenewFraction = 0.4
	}
	if c.RetryInterval == 0 {
		c.RetryInterval = 5 * time.Second
	}
	if c.FetchTimeout == 0 {
		c.FetchTimeout = 30 * time.Second
	}
	return c
}

// Update is one SVID with the trust bundle that verifies its peers.
type Update struct {
	SVID   *x509svid.SVID
	Bundle *x509bundle.Bundle
}

// PEM returns the update as the three PEM blobs a TLS stack or an SDS secret
// takes: the certificate chain (leaf first), the PKCS#8 private key and the
// trusted roots.
func (u Update) PEM() (chain, key, roots []byte, err error) {
	if u.SVID == nil || u.Bundle == nil {
		return nil, nil, nil, errors.New("update pem: no SVID or no bundle")
	}
	chain, key, err = u.SVID.Marshal()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("update pem for %s: %w", u.SVID.ID, err)
	}
	roots, err = u.Bundle.Marshal()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("update pem for %s: bundle: %w", u.SVID.ID, err)
	}
	return chain, key, roots, nil
}

// Rotator keeps one workload's SVID fresh: it fetches a new one before half
// of the current one's lifetime has passed and hands every new SVID to every
// subscriber, in order, dropping none. The old SVID stays valid until it
// expires, so connections that use it are not cut.
type Rotator struct {
	cfg     RotatorConfig
	refresh chan struct{}

	mu      sync.Mutex
	current *Update
	subs    map[*Subscription]struct{}
}

// NewRotator checks cfg; Run starts the work.
func NewRotator(cfg RotatorConfig) (*Rotator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Rotator{
		cfg:     cfg.withDefaults(),
		refresh: make(chan struct{}, 1),
		subs:    make(map[*Subscription]struct{}),
	}, nil
}

// Watcher is a Source that renews SVIDs on its own schedule and pushes them
// (SPIRE renews at half-life). A Rotator follows it instead of polling.
type Watcher interface {
	Source
	// WatchSVIDs calls fn with w's SVID and each renewal until ctx ends
	// or fn fails.
	WatchSVIDs(ctx context.Context, w Workload, fn func(*x509svid.SVID) error) error
}

// Run fetches and renews until ctx ends, then returns ctx's error. A Source
// that is a Watcher is followed; any other is polled at RenewFraction of
// each SVID's lifetime.
func (r *Rotator) Run(ctx context.Context) error {
	if w, ok := r.cfg.Source.(Watcher); ok {
		return r.runWatch(ctx, w)
	}
	failures := 0
	for {
		wait := r.cfg.RetryInterval
		upd, err := r.fetch(ctx)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if r.cfg.OnError != nil {
				r.cfg.OnError(err)
			}
			failures++
			wait = r.backoff(failures)
		case r.changed(upd):
			failures = 0
			r.publish(upd)
			wait = max(time.Until(renewAt(upd.SVID.Certificates[0], r.cfg.RenewFraction)), r.cfg.RetryInterval)
		default:
			failures = 0
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-r.refresh:
			timer.Stop()
		case <-timer.C:
		}
	}
}

// backoff is the wait after the given number of consecutive failed
// fetches: RetryInterval, doubling up to MaxRetryInterval.
func (r *Rotator) backoff(failures int) time.Duration {
	wait := r.cfg.RetryInterval
	for i := 1; i < failures && wait < r.cfg.MaxRetryInterval; i++ {
		wait *= 2
	}
	return max(min(wait, r.cfg.MaxRetryInterval), r.cfg.RetryInterval)
}

// runWatch follows a Watcher, resuming after RetryInterval when the watch
// fails.
func (r *Rotator) runWatch(ctx context.Context, w Watcher) error {
	for {
		err := w.WatchSVIDs(ctx, r.cfg.Workload, func(svid *x509svid.SVID) error {
			if svid == nil || len(svid.Certificates) == 0 {
				return fmt.Errorf("rotate svid for %s: watch returned no certificate", r.cfg.Workload)
			}
			bctx, cancel := context.WithTimeout(ctx, r.cfg.FetchTimeout)
			defer cancel()
			bundle, err := w.TrustBundle(bctx)
			if err != nil {
				return fmt.Errorf("rotate svid for %s: trust bundle: %w", r.cfg.Workload, err)
			}
			if upd := (Update{SVID: svid, Bundle: bundle}); r.changed(upd) {
				r.publish(upd)
			}
			return nil
		})
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if r.cfg.OnError != nil {
			r.cfg.OnError(fmt.Errorf("rotate svid for %s: watch ended: %w", r.cfg.Workload, err))
		}
		timer := time.NewTimer(r.cfg.RetryInterval)
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-r.refresh:
			timer.Stop()
		case <-timer.C:
		}
	}
}

// Refresh asks Run to fetch a new SVID now, e.g. after a root rotation.
// A watched source renews on its own; there Refresh only cuts short the
// wait before resuming a failed watch.
func (r *Rotator) Refresh() {
	select {
	case r.refresh <- struct{}{}:
	default: // one pending refresh is enough
	}
}

func (r *Rotator) fetch(ctx context.Context) (Update, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.FetchTimeout)
	defer cancel()
	svid, err := r.cfg.Source.SVIDFor(ctx, r.cfg.Workload)
	if err != nil {
		return Update{}, fmt.Errorf("rotate svid for %s: %w", r.cfg.Workload, err)
	}
	if svid == nil || len(svid.Certificates) == 0 {
		return Update{}, fmt.Errorf("rotate svid for %s: source returned no certificate", r.cfg.Workload)
	}
	bundle, err := r.cfg.Source.TrustBundle(ctx)
	if err != nil {
		return Update{}, fmt.Errorf("rotate svid for %s: trust bundle: %w", r.cfg.Workload, err)
	}
	return Update{SVID: svid, Bundle: bundle}, nil
}

func (r *Rotator) changed(upd Update) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.current == nil ||
		!r.current.SVID.Certificates[0].Equal(upd.SVID.Certificates[0]) ||
		!r.current.Bundle.Equal(upd.Bundle)
}

func (r *Rotator) publish(upd Update) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.current = &upd
	for s := range r.subs {
		s.push(upd)
	}
}

// Current returns the latest SVID, if one has been fetched.
func (r *Rotator) Current() (Update, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.current == nil {
		return Update{}, false
	}
	return *r.current, true
}

// Subscribe returns a subscription that first yields the current SVID (if
// any) and then every new one. Close it when done.
func (r *Rotator) Subscribe() *Subscription {
	s := &Subscription{r: r, signal: make(chan struct{}, 1)}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.current != nil {
		s.push(*r.current)
	}
	r.subs[s] = struct{}{}
	return s
}

// Subscription receives a Rotator's updates. Updates queue until read, so a
// slow reader misses none.
type Subscription struct {
	r      *Rotator
	signal chan struct{}

	mu     sync.Mutex
	queue  []Update
	closed bool
}

// ErrSubscriptionClosed is returned by Next after Close.
var ErrSubscriptionClosed = errors.New("subscription closed")

func (s *Subscription) push(u Update) {
	s.mu.Lock()
	s.queue = append(s.queue, u)
	s.mu.Unlock()
	select {
	case s.signal <- struct{}{}:
	default:
	}
}

// Next returns the next update, waiting for one until ctx ends.
func (s *Subscription) Next(ctx context.Context) (Update, error) {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return Update{}, ErrSubscriptionClosed
		}
		if len(s.queue) > 0 {
			u := s.queue[0]
			s.queue[0] = Update{}
			s.queue = s.queue[1:]
			s.mu.Unlock()
			return u, nil
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return Update{}, ctx.Err()
		case <-s.signal:
		}
	}
}

// Close ends the subscription; a blocked Next returns ErrSubscriptionClosed.
func (s *Subscription) Close() {
	s.r.mu.Lock()
	delete(s.r.subs, s)
	s.r.mu.Unlock()
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	select {
	case s.signal <- struct{}{}:
	default:
	}
}
