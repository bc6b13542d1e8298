package envoy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ProxyConfig configures the local xDS proxy.
type ProxyConfig struct {
	// Socket is the unix socket path Envoy connects to (BootstrapConfig.XDSSocket).
	Socket string
	// Node is the node name. Envoy's node.id is forced to it, so a local
	// process cannot speak for another node over the agent's connection.
	Node string
	// Upstream is the agent's connection to the control plane.
	Upstream grpc.ClientConnInterface
	// Logger; default slog.Default().
	Logger *slog.Logger
	// StopTimeout bounds the graceful stop on shutdown; default 5s.
	StopTimeout time.Duration
	// MaxMessageBytes bounds one message from the control plane; default
	// 512 MiB (gRPC's 4 MiB default is too small for a large node's first
	// response).
	MaxMessageBytes int
	// Secrets, when set, answers Envoy's SDS requests (type
	// envoy.extensions.transport_sockets.tls.v3.Secret) locally: they are
	// no longer forwarded to the control plane, and a change of the
	// provider's secrets is pushed to Envoy. Every other type is still
	// proxied. Nil: secrets come from the control plane like the rest.
	Secrets SecretProvider
}

// Validate reports what is missing in c.
func (c ProxyConfig) Validate() error {
	var errs []error
	if c.Socket == "" {
		errs = append(errs, errors.New("socket is required"))
	}
	if c.Node == "" {
		errs = append(errs, errors.New("node is required"))
	}
	if c.Upstream == nil {
		errs = append(errs, errors.New("upstream connection is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("envoy xds proxy config: %w", err)
	}
	return nil
}

// Proxy is the agent's local ADS server for Envoy. Each Envoy stream (SotW
// or Delta) is forwarded to its own upstream stream on the shared
// connection; requests (including ACKs and NACKs) go up, responses come
// down, unchanged except for node.id.
type Proxy struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer

	cfg     ProxyConfig
	log     *slog.Logger
	ads     discovery.AggregatedDiscoveryServiceClient
	streams atomic.Int64 // open Envoy streams
	total   atomic.Int64 // streams served

	secretPushes atomic.Int64 // local SDS responses sent
	secretNACKs  atomic.Int64 // local SDS responses Envoy rejected
}

// NewProxy checks cfg and builds a Proxy.
func NewProxy(cfg ProxyConfig) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 5 * time.Second
	}
	if cfg.MaxMessageBytes <= 0 {
		cfg.MaxMessageBytes = 512 << 20
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Proxy{
		cfg: cfg,
		log: log.With("node", cfg.Node, "socket", cfg.Socket),
		ads: discovery.NewAggregatedDiscoveryServiceClient(cfg.Upstream),
	}, nil
}

// ProxyStats counts Envoy streams and, with ProxyConfig.Secrets, the
// secrets served locally.
type ProxyStats struct {
	Open, Total int64
	// LocalSecretPushes counts SDS responses sent from
	// ProxyConfig.Secrets, LocalSecretNACKs those Envoy rejected.
	LocalSecretPushes int64 `json:",omitempty"`
	LocalSecretNACKs  int64 `json:",omitempty"`
}

// Stats returns the stream counters.
func (p *Proxy) Stats() ProxyStats {
	return ProxyStats{Open: p.streams.Load(), Total: p.total.Load(),
		LocalSecretPushes: p.secretPushes.Load(), LocalSecretNACKs: p.secretNACKs.Load()}
}

// Run listens on the unix socket (replacing a stale one left by a previous
// run) and serves until ctx is done. The socket is only accessible to the
// agent's user.
func (p *Proxy) Run(ctx context.Context) error {
	if err := os.Remove(p.cfg.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale xds socket %s: %w", p.cfg.Socket, err)
	}
	lis, err := net.Listen("unix", p.cfg.Socket)
	if err != nil {
		return fmt.Errorf("listening on xds socket %s: %w", p.cfg.Socket, err)
	}
	defer os.Remove(p.cfg.Socket)
	if err := os.Chmod(p.cfg.Socket, 0o600); err != nil {
		lis.Close()
		return fmt.Errorf("restricting xds socket %s: %w", p.cfg.Socket, err)
	}
	srv := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(srv, p)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	p.log.Info("envoy xds proxy listening")
	select {
	case err := <-served:
		return fmt.Errorf("serving xds socket %s: %w", p.cfg.Socket, err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	t := time.NewTimer(p.cfg.StopTimeout)
	defer t.Stop()
	select {
	case <-stopped:
	case <-t.C:
		srv.Stop()
		<-stopped
	}
	<-served
	return nil
}

// StreamAggregatedResources forwards a State of the World stream.
func (p *Proxy) StreamAggregatedResources(down discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	s := stream[*discovery.DiscoveryRequest, *discovery.DiscoveryResponse]{
		open: func(ctx context.Context) (upstream[*discovery.DiscoveryRequest, *discovery.DiscoveryResponse], error) {
			return p.ads.StreamAggregatedResources(ctx, grpc.MaxCallRecvMsgSize(p.cfg.MaxMessageBytes))
		},
		node:    func(r *discovery.DiscoveryRequest) **corev3.Node { return &r.Node },
		typeURL: func(r *discovery.DiscoveryRequest) string { return r.GetTypeUrl() },
	}
	if p.cfg.Secrets != nil {
		s.secrets = p.serveSotWSecrets
	}
	return forward(p, down, s)
}

// DeltaAggregatedResources forwards a Delta stream.
func (p *Proxy) DeltaAggregatedResources(down discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	s := stream[*discovery.DeltaDiscoveryRequest, *discovery.DeltaDiscoveryResponse]{
		open: func(ctx context.Context) (upstream[*discovery.DeltaDiscoveryRequest, *discovery.DeltaDiscoveryResponse], error) {
			return p.ads.DeltaAggregatedResources(ctx, grpc.MaxCallRecvMsgSize(p.cfg.MaxMessageBytes))
		},
		node:    func(r *discovery.DeltaDiscoveryRequest) **corev3.Node { return &r.Node },
		typeURL: func(r *discovery.DeltaDiscoveryRequest) string { return r.GetTypeUrl() },
	}
	if p.cfg.Secrets != nil {
		s.secrets = p.serveDeltaSecrets
	}
	return forward(p, down, s)
}

// stop says why pumpUp stopped.
type stop struct {
	err      error
	upstream bool // up.Send failed (else down.Recv did)
}

// pumpUp forwards Envoy's requests to the control plane, or to
// secretReqs for Secret requests when that is set, until one side fails.
func pumpUp[Req, Resp any](ctx context.Context, p *Proxy, down downstream[Req, Resp], up upstream[Req, Resp], s stream[Req, Resp], secretReqs chan<- Req) stop {
	sentFirst := false
	var envoyNode *corev3.Node // from Envoy's first request
	for {
		req, err := down.Recv()
		if err != nil {
			return stop{err: err}
		}
		n := s.node(req)
		if *n != nil && (*n).GetId() != p.cfg.Node {
			p.log.Warn("envoy sent another node id; replacing it", "got", (*n).GetId())
			(*n).Id = p.cfg.Node
		}
		if envoyNode == nil {
			envoyNode = *n
		}
		if secretReqs != nil && isSecretRequest(s.typeURL(req)) {
			select {
			case secretReqs <- req:
				continue
			case <-ctx.Done():
				return stop{err: ctx.Err()}
			}
		}
		if !sentFirst && *n == nil {
			// The node went with a Secret request that stayed here; the
			// control plane needs it on its first request.
			*n = envoyNode
			if *n == nil {
				*n = &corev3.Node{Id: p.cfg.Node}
			}
		}
		sentFirst = true
		if err := up.Send(req); err != nil {
			return stop{err: err, upstream: true}
		}
	}
}

// stream is what forward needs to know about one flavour of ADS stream.
type stream[Req, Resp any] struct {
	open    func(context.Context) (upstream[Req, Resp], error)
	node    func(Req) **corev3.Node // the request's node field
	typeURL func(Req) string
	// secrets, when set, serves the Secret requests locally.
	secrets func(ctx context.Context, reqs <-chan Req, send func(Resp) error) error
}

type downstream[Req, Resp any] interface {
	Recv() (Req, error)
	Send(Resp) error
	Context() context.Context
}

type upstream[Req, Resp any] interface {
	Send(Req) error
	Recv() (Resp, error)
	CloseSend() error
}

// forward pumps one Envoy stream to a new upstream stream and back. It
// returns when either side ends; an upstream failure is returned to Envoy
// as Unavailable so that it reconnects (with its own backoff). With
// s.secrets, Secret requests go to it instead of upstream, and it sends
// its responses on the same Envoy stream.
func forward[Req, Resp any](p *Proxy, down downstream[Req, Resp], s stream[Req, Resp]) error {
	p.streams.Add(1)
	p.total.Add(1)
	defer p.streams.Add(-1)

	ctx, cancel := context.WithCancel(down.Context())
	defer cancel()
	up, err := s.open(ctx)
	if err != nil {
		return status.Errorf(codes.Unavailable, "opening control plane stream for node %s: %v", p.cfg.Node, err)
	}

	// Two senders (upstream responses, local secrets) share down.
	var sendMu sync.Mutex
	send := func(r Resp) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return down.Send(r)
	}
	var local sync.WaitGroup
	var secretReqs chan Req
	if s.secrets != nil {
		secretReqs = make(chan Req, 16)
		local.Go(func() {
			if err := s.secrets(ctx, secretReqs, send); err != nil {
				cancel() // Envoy went away
			}
		})
	}
	// The local secrets stop sending before the handler returns.
	defer local.Wait()
	defer cancel()

	// Envoy -> control plane. The goroutine records why it stopped and
	// cancels ctx, which ends up.Recv below. It may outlive the handler by
	// the moment gRPC needs to fail down.Recv once the handler returned.
	stopped := make(chan stop, 1)
	go func() {
		defer cancel()
		stopped <- pumpUp(ctx, p, down, up, s, secretReqs)
	}()

	// Control plane -> Envoy, on the handler goroutine so that down.Send
	// never runs after the handler returned.
	for {
		resp, err := up.Recv()
		if err != nil {
			select {
			case why := <-stopped:
				if !why.upstream {
					return nil // Envoy closed its stream or went away
				}
				// A failed client Send says only io.EOF; the stream's
				// status comes from Recv unless our own cancel ended it.
				if status.Code(err) == codes.Canceled {
					err = why.err
				}
			default:
				if down.Context().Err() != nil {
					return nil // Envoy went away
				}
			}
			p.log.Warn("control plane stream ended; closing the envoy stream", "error", err)
			return status.Errorf(codes.Unavailable, "control plane stream for node %s: %v", p.cfg.Node, err)
		}
		if err := send(resp); err != nil {
			return err // Envoy went away
		}
	}
}
