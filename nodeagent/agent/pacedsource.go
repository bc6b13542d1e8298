package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/nodemesh/nodemesh/identity"
)

// maxSVIDBackoff caps the wait between failed fetches; below the
// rotator's 30s fetch timeout, which the wait counts against.
const maxSVIDBackoff = 20 * time.Second

// pacedSource spaces one service account's fetches from a polled Source:
// after a failure the next fetch waits twice as long as the one before
// (from gap up to maxSVIDBackoff), and any fetch comes at least gap after
// the previous one. The rotator fetches again at once when a new SVID is
// already past its renewal time (a source's cache handing out an aged SVID,
// or a CA whose clock lags), which without this would ask the source in a
// tight loop.
type pacedSource struct {
	identity.Source
	gap time.Duration

	mu       sync.Mutex
	next     time.Time // earliest next fetch
	failures int       // consecutive
}

// paced wraps src for one service account; a Watcher (SPIRE, which renews
// and pushes on its own schedule) is left as it is.
func paced(src identity.Source, gap time.Duration) identity.Source {
	if _, ok := src.(identity.Watcher); ok {
		return src
	}
	return &pacedSource{Source: src, gap: gap}
}

func (p *pacedSource) SVIDFor(ctx context.Context, w identity.Workload) (*x509svid.SVID, error) {
	p.mu.Lock()
	wait := time.Until(p.next)
	p.mu.Unlock()
	if wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("waiting %s before asking again: %w", wait.Round(time.Millisecond), ctx.Err())
		case <-t.C:
		}
	}
	svid, err := p.Source.SVIDFor(ctx, w)
	p.mu.Lock()
	defer p.mu.Unlock()
	delay := p.gap
	if err != nil {
		p.failures++
		for i := 1; i < p.failures && delay < maxSVIDBackoff; i++ {
			delay *= 2
		}
		delay = min(delay, maxSVIDBackoff)
	} else {
		p.failures = 0
	}
	p.next = time.Now().Add(delay)
	return svid, err
}

func (p *pacedSource) TrustBundle(ctx context.Context) (*x509bundle.Bundle, error) {
	return p.Source.TrustBundle(ctx)
}
