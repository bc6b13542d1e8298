package ads

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/types/known/structpb"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
)

// UserAgent is sent as node.user_agent_name.
const UserAgent = "nodemesh-agent"

// Client keeps the node's dataplane resources in sync with the control plane
// over one Delta ADS stream. Build it with New and drive it with Run.
type Client struct {
	cfg    Config
	log    *slog.Logger
	status *statusTracker

	// Owned by the Run goroutine.
	applied  resourceSet // last set Apply accepted
	synced   bool        // applied holds a full set (first Apply succeeded)
	rejected int         // Apply failures since the last success
}

// errResubscribe ends a stream on purpose: the client re-subscribes so that
// the control plane resends what it holds beyond the applied set.
var errResubscribe = errors.New("re-subscribing to retry a rejected update")

// New checks cfg and builds a Client.
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(cfg.Types) == 0 {
		cfg.Types = slices.Clone(dataplanev1.Types)
	}
	cfg.Backoff = cfg.Backoff.withDefaults()
	if cfg.MaxMessageBytes == 0 {
		cfg.MaxMessageBytes = DefaultMaxMessageBytes
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Client{
		cfg:     cfg,
		log:     log.With("node", cfg.Node),
		status:  newStatusTracker(cfg.Node, cfg.Types),
		applied: resourceSet{},
	}, nil
}

// Status returns the current sync state. Safe for concurrent use.
func (c *Client) Status() Status { return c.status.get() }

// Run holds the ADS stream until ctx is done, reconnecting with backoff when
// it breaks. It returns nil when ctx is cancelled and an error only when the
// connection cannot be set up at all.
func (c *Client) Run(ctx context.Context) error {
	conn := c.cfg.Conn
	if conn == nil {
		cc, err := Dial(c.cfg.ControlPlane, c.cfg.Backoff, c.cfg.DialOptions...)
		if err != nil {
			return err
		}
		defer cc.Close()
		conn = cc
	}
	ads := discovery.NewAggregatedDiscoveryServiceClient(conn)

	failures := 0
	for streams := 0; ; streams++ {
		if streams > 0 {
			c.status.update(func(s *Status) { s.Reconnects++ })
		}
		gotResponse, err := c.runStream(ctx, ads)
		c.status.update(func(s *Status) {
			s.Connected = false
			if err != nil {
				s.LastError = err.Error()
			}
		})
		if ctx.Err() != nil {
			return nil
		}
		if gotResponse {
			failures = 0
		}
		if errors.Is(err, errResubscribe) {
			c.log.Info("re-subscribing to retry the update the dataplane rejected", "failures", c.rejected)
			continue
		}
		delay := c.cfg.Backoff.Delay(failures)
		failures++
		c.log.Warn("ads stream ended; reconnecting", "error", err, "backoff", delay, "attempt", failures)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// Dial opens the agent's connection to the control plane: keepalives to
// notice a dead peer, and gRPC's own reconnect backoff bounded by b (its
// default grows to 120s, too slow for a fleet coming back after a control
// plane restart). Without opts the transport is insecure (mTLS comes with
// the identity work). The connection can be shared by the ADS client
// (Config.Conn) and the Envoy xDS proxy.
func Dial(addr string, b Backoff, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	b = b.withDefaults()
	if len(opts) == 0 {
		opts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	opts = append([]grpc.DialOption{
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: b.Initial, Multiplier: 1.6, Jitter: b.Jitter, MaxDelay: b.Max},
			MinConnectTimeout: 5 * time.Second,
		}),
	}, opts...)
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("dialing control plane %s: %w", addr, err)
	}
	return cc, nil
}

// pending is a received response waiting for its ACK or NACK.
type pending struct {
	typeURL, nonce, version string
	delta                   delta
}

// streamState is what one stream holds beyond the client's applied set.
type streamState struct {
	staged  *stage // applied + deltas not yet applied; nil when none
	changed bool   // staged differs from applied
	pending []pending
	seen    map[string]bool // types with a response on this client before the first sync
	acked   map[string]bool // types ACKed on this stream
	nacked  bool            // a NACK was sent on this stream
}

func newStreamState() *streamState {
	return &streamState{seen: map[string]bool{}, acked: map[string]bool{}}
}

// runStream opens one stream, subscribes and serves it until it breaks or
// ctx is done. gotResponse reports whether the control plane answered.
func (c *Client) runStream(ctx context.Context, ads discovery.AggregatedDiscoveryServiceClient) (gotResponse bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := ads.DeltaAggregatedResources(sctx, grpc.MaxCallRecvMsgSize(c.cfg.MaxMessageBytes))
	if err != nil {
		return false, fmt.Errorf("opening delta ads stream: %w", err)
	}
	for i, t := range c.cfg.Types {
		req := &discovery.DeltaDiscoveryRequest{
			TypeUrl:                 t,
			ResourceNamesSubscribe:  []string{"*"},
			InitialResourceVersions: c.applied.versions(t),
		}
		if i == 0 {
			req.Node = c.node()
		}
		if err := stream.Send(req); err != nil {
			return false, fmt.Errorf("subscribing to %s: %w", t, err)
		}
	}
	c.status.update(func(s *Status) { s.Connected = true; s.LastError = "" })
	c.log.Info("ads stream open", "types", len(c.cfg.Types), "held", c.heldCount())

	// Recv runs on its own goroutine; Send stays on this one.
	type recvResult struct {
		resp *discovery.DeltaDiscoveryResponse
		err  error
	}
	recv := make(chan recvResult)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			resp, err := stream.Recv()
			select {
			case recv <- recvResult{resp, err}:
			case <-sctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	})
	defer wg.Wait()
	defer cancel()

	st := newStreamState()
	var retry *time.Timer // armed while an Apply failure is unhealed
	var retryC <-chan time.Time
	defer func() {
		if retry != nil {
			retry.Stop()
		}
	}()
	for {
		switch {
		case c.rejected > 0 && retry == nil && !c.cfg.NoRetry:
			retry = time.NewTimer(c.cfg.Backoff.Delay(c.rejected - 1))
			retryC = retry.C
		case c.rejected == 0 && retry != nil:
			retry.Stop()
			retry, retryC = nil, nil
		}
		select {
		case <-ctx.Done():
			return gotResponse, ctx.Err()
		case <-retryC:
			return gotResponse, errResubscribe
		case r := <-recv:
			if r.err != nil {
				return gotResponse, fmt.Errorf("receiving: %w", r.err)
			}
			gotResponse = true
			if err := c.stage(stream, st, r.resp); err != nil {
				return gotResponse, err
			}
			// Fold in whatever else has arrived (other types), so that one
			// Apply covers them all.
		drain:
			for {
				select {
				case r := <-recv:
					if r.err != nil {
						return gotResponse, fmt.Errorf("receiving: %w", r.err)
					}
					if err := c.stage(stream, st, r.resp); err != nil {
						return gotResponse, err
					}
				default:
					break drain
				}
			}
			if err := c.commit(ctx, stream, st); err != nil {
				return gotResponse, err
			}
		}
	}
}

func (c *Client) node() *core.Node {
	// The keys and values of xds.MetaProxy / xds.MetaNodeName: the agent
	// and its node's shared Envoy are one proxy to the control plane.
	md, _ := structpb.NewStruct(map[string]any{"NODEMESH_PROXY": "envoy", "NODE_NAME": c.cfg.Node})
	return &core.Node{Id: c.cfg.Node, UserAgentName: UserAgent, Metadata: md}
}

func (c *Client) heldCount() int {
	n := 0
	for _, m := range c.applied {
		n += len(m)
	}
	return n
}

type deltaSender interface {
	Send(*discovery.DeltaDiscoveryRequest) error
}

// ErrNotSynced is returned by Ready before the first full set was applied.
var ErrNotSynced = errors.New("dataplane resources not yet applied")

// Ready reports nil once the first full set was applied (for a readiness
// probe). It stays ready while the control plane is away: the kernel keeps
// forwarding with the last applied set.
func (c *Client) Ready() error {
	s := c.Status()
	if !s.Synced {
		if s.LastError != "" {
			return fmt.Errorf("%w: %s", ErrNotSynced, s.LastError)
		}
		return ErrNotSynced
	}
	return nil
}
