package ads

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
)

// Applier programs a desired dataplane state. Apply receives the complete set
// of resources the node should have (not a delta). It must either apply all
// of it or leave the dataplane serving what it served before, and return an
// error saying why; the error message is sent to the control plane as the
// NACK's detail. Apply must not keep or modify res after it returns.
type Applier interface {
	Apply(ctx context.Context, res *Resources) error
}

// ApplierFunc adapts a function to the Applier interface.
type ApplierFunc func(ctx context.Context, res *Resources) error

// Apply calls f.
func (f ApplierFunc) Apply(ctx context.Context, res *Resources) error { return f(ctx, res) }

// Backoff bounds the delay between reconnect attempts. The delay starts at
// Initial, doubles after each failed attempt up to Max, and is spread by
// ±Jitter (a fraction) so that many agents do not reconnect in lock step.
// It resets once a stream has delivered a response.
type Backoff struct {
	Initial time.Duration // default 500ms
	Max     time.Duration // default 30s
	Jitter  float64       // default 0.2; 0 < Jitter < 1
}

func (b Backoff) withDefaults() Backoff {
	if b.Initial <= 0 {
		b.Initial = 500 * time.Millisecond
	}
	if b.Max <= 0 {
		b.Max = 30 * time.Second
	}
	if b.Max < b.Initial {
		b.Max = b.Initial
	}
	if b.Jitter <= 0 || b.Jitter >= 1 {
		b.Jitter = 0.2
	}
	return b
}

// Delay returns the wait before reconnect attempt n (0-based), jittered.
func (b Backoff) Delay(n int) time.Duration {
	b = b.withDefaults()
	d := b.Initial
	for i := 0; i < n && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	spread := (rand.Float64()*2 - 1) * b.Jitter // in [-Jitter, +Jitter)
	return time.Duration(float64(d) * (1 + spread))
}

// Config configures a Client. The zero value is not usable: Node, one of
// ControlPlane or Conn, and Applier are required.
type Config struct {
	// Node is this node's name; it is sent as node.id.
	Node string
	// ControlPlane is the control plane's gRPC address (host:port), dialed
	// with DialOptions. Ignored when Conn is set.
	ControlPlane string
	// DialOptions are used when dialing ControlPlane. When empty the client
	// dials with insecure transport credentials (mTLS comes with the
	// identity work).
	DialOptions []grpc.DialOption
	// Conn, if set, is an existing connection to the control plane shared
	// with other parts of the agent (the Envoy xDS proxy). The Client does
	// not close it.
	Conn grpc.ClientConnInterface
	// Applier receives the desired set after every response.
	Applier Applier
	// Types are the type URLs subscribed to; default dataplanev1.Types.
	Types []string
	// Logger; default slog.Default().
	Logger *slog.Logger
	// Backoff between reconnects, and before retrying an update the
	// Applier rejected.
	Backoff Backoff
	// NoRetry turns off the retry of rejected updates. By default, after
	// Apply failed, the client re-subscribes after a backoff (growing with
	// each consecutive failure) so that the control plane resends what the
	// client has not applied: a transient failure (a kernel map write) heals
	// without waiting for the next change, and a bad resource is NACKed
	// again, so the control plane keeps seeing it.
	NoRetry bool
	// MaxMessageBytes bounds one response from the control plane; default
	// DefaultMaxMessageBytes. gRPC's own default (4 MiB) is far too small
	// for the first response of a large node (100k services).
	MaxMessageBytes int
}

// DefaultMaxMessageBytes is the default Config.MaxMessageBytes.
const DefaultMaxMessageBytes = 512 << 20

// Validate reports what is missing or wrong in c.
func (c Config) Validate() error {
	var errs []error
	if c.Node == "" {
		errs = append(errs, errors.New("node is required"))
	}
	if c.Conn == nil && c.ControlPlane == "" {
		errs = append(errs, errors.New("control plane address or connection is required"))
	}
	if c.Applier == nil {
		errs = append(errs, errors.New("applier is required"))
	}
	for _, t := range c.Types {
		if _, ok := decoders[t]; !ok {
			errs = append(errs, fmt.Errorf("type %q is not a dataplane type", t))
		}
	}
	if c.MaxMessageBytes < 0 {
		errs = append(errs, fmt.Errorf("max message bytes %d is negative", c.MaxMessageBytes))
	}
	if c.Backoff.Jitter < 0 || c.Backoff.Jitter >= 1 {
		errs = append(errs, fmt.Errorf("backoff jitter %v is outside [0, 1)", c.Backoff.Jitter))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("ads client config: %w", err)
	}
	return nil
}
