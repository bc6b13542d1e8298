package identity

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	delegatedidentityv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// DefaultWorkloadAPIAddr is the SPIRE agent's default Workload API socket.
const DefaultWorkloadAPIAddr = "unix:///tmp/spire-agent/public/api.sock"

// ErrNoAdminSocket is returned by SPIRE.SVIDFor when SPIREConfig has no
// AdminSocketAddr: without SPIRE's Delegated Identity API a process can only
// get its own SVID.
var ErrNoAdminSocket = errors.New("spire: no admin socket configured (needed for the Delegated Identity API)")

// SPIREConfig says where the local SPIRE agent listens. The zero value uses
// SPIRE's default Workload API socket and no Delegated Identity API.
type SPIREConfig struct {
	// WorkloadAPIAddr is the agent's Workload API, "unix:///path/api.sock"
	// (default DefaultWorkloadAPIAddr).
	WorkloadAPIAddr string
	// AdminSocketAddr is the agent's admin API (admin_socket_path), which
	// serves the Delegated Identity API, "unix:///path/admin.sock". The
	// caller's SPIFFE ID must be in the agent's authorized_delegates.
	AdminSocketAddr string
	// RetryInterval is the wait between attempts while the agent is not up
	// or has not issued the caller's identity yet (default 500ms).
	RetryInterval time.Duration
}

// Validate reports an unusable configuration.
func (c SPIREConfig) Validate() error {
	c = c.withDefaults()
	if err := workloadapi.ValidateAddress(c.WorkloadAPIAddr); err != nil {
		return fmt.Errorf("spire config: WorkloadAPIAddr %q: %w", c.WorkloadAPIAddr, err)
	}
	if c.AdminSocketAddr != "" {
		if !strings.HasPrefix(c.AdminSocketAddr, "unix:///") {
			return fmt.Errorf("spire config: AdminSocketAddr %q: want unix:///absolute/path", c.AdminSocketAddr)
		}
		if c.AdminSocketAddr == c.WorkloadAPIAddr {
			return errors.New("spire config: AdminSocketAddr is the Workload API socket")
		}
	}
	if c.RetryInterval < 0 {
		return fmt.Errorf("spire config: RetryInterval %s is negative", c.RetryInterval)
	}
	return nil
}

func (c SPIREConfig) withDefaults() SPIREConfig {
	if c.WorkloadAPIAddr == "" {
		c.WorkloadAPIAddr = DefaultWorkloadAPIAddr
	}
	if c.RetryInterval == 0 {
		c.RetryInterval = 500 * time.Millisecond
	}
	return c
}

// SPIRE uses a local SPIRE agent as the upstream of identities: the
// process's own SVID through the Workload API and the SVIDs of the node's
// workloads through the Delegated Identity API. It implements Source.
type SPIRE struct {
	cfg       SPIREConfig
	admin     *grpc.ClientConn
	delegated delegatedidentityv1.DelegatedIdentityClient

	mu  sync.Mutex
	own *workloadapi.X509Source
}

// NewSPIRE checks cfg. It does not wait for the agent: FetchOwnSVID and
// SVIDFor do.
func NewSPIRE(cfg SPIREConfig) (*SPIRE, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &SPIRE{cfg: cfg.withDefaults()}
	if s.cfg.AdminSocketAddr != "" {
		conn, err := grpc.NewClient(s.cfg.AdminSocketAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, fmt.Errorf("spire: admin socket %s: %w", s.cfg.AdminSocketAddr, err)
		}
		s.admin = conn
		s.delegated = delegatedidentityv1.NewDelegatedIdentityClient(conn)
	}
	return s, nil
}

// X509Source returns the process's own, self-renewing X.509 source (SVID and
// bundles) from the Workload API, starting it on first use. It waits until
// the agent has issued the identity (retrying "no identity issued") or ctx
// ends. Use it for mTLS with go-spiffe's tlsconfig.
func (s *SPIRE) X509Source(ctx context.Context) (*workloadapi.X509Source, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.own != nil {
		return s.own, nil
	}
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(s.cfg.WorkloadAPIAddr)))
	if err != nil {
		return nil, fmt.Errorf("spire: workload api %s: %w", s.cfg.WorkloadAPIAddr, err)
	}
	s.own = src
	return src, nil
}

// FetchOwnSVID returns this process's current SVID from the Workload API.
func (s *SPIRE) FetchOwnSVID(ctx context.Context) (*x509svid.SVID, error) {
	src, err := s.X509Source(ctx)
	if err != nil {
		return nil, err
	}
	svid, err := src.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("spire: own svid: %w", err)
	}
	return svid, nil
}

// TrustBundle implements Source: the bundle of this process's trust domain,
// as the Workload API delivers it.
func (s *SPIRE) TrustBundle(ctx context.Context) (*x509bundle.Bundle, error) {
	src, err := s.X509Source(ctx)
	if err != nil {
		return nil, err
	}
	svid, err := src.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("spire: trust bundle: own svid: %w", err)
	}
	b, err := src.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
	if err != nil {
		return nil, fmt.Errorf("spire: trust bundle: %w", err)
	}
	return b, nil
}

// SVIDFor implements Source through the Delegated Identity API: the agent
// returns the SVID of the entries matching w.Selectors (or of the process
// w.PID, which the agent attests itself). When w.ID is set, only an SVID
// with that ID is accepted. It waits, until ctx ends, for the agent to be
// up, to have issued this caller's own identity and to hold a matching
// SVID; other refusals (PermissionDenied for a caller that is not an
// authorized delegate, InvalidArgument) return at once and keep their gRPC
// status.
func (s *SPIRE) SVIDFor(ctx context.Context, w Workload) (*x509svid.SVID, error) {
	var got *x509svid.SVID
	err := s.watch(ctx, w, func(svid *x509svid.SVID) (bool, error) {
		got = svid
		return true, nil
	})
	return got, err
}

// WatchSVIDs follows w's SVID through the Delegated Identity API: fn gets
// the first SVID and every later one as SPIRE renews it (and again when
// the agent sends an update for another reason, such as a bundle change).
// It returns when ctx ends or fn fails, or with a refusal as SVIDFor does;
// a broken stream while the agent restarts is resumed.
func (s *SPIRE) WatchSVIDs(ctx context.Context, w Workload, fn func(*x509svid.SVID) error) error {
	return s.watch(ctx, w, func(svid *x509svid.SVID) (bool, error) {
		return false, fn(svid)
	})
}

// watch subscribes and hands matching SVIDs to fn until fn says stop,
// retrying the states of a starting agent.
func (s *SPIRE) watch(ctx context.Context, w Workload, fn func(*x509svid.SVID) (stop bool, err error)) error {
	if s.delegated == nil {
		return ErrNoAdminSocket
	}
	req := &delegatedidentityv1.SubscribeToX509SVIDsRequest{Pid: w.PID}
	if w.PID == 0 {
		if len(w.Selectors) == 0 {
			return fmt.Errorf("spire: svid for %s: no selectors or pid", w)
		}
		for _, sel := range w.Selectors {
			req.Selectors = append(req.Selectors, &types.Selector{Type: sel.Type, Value: sel.Value})
		}
	}
	for {
		err := s.subscribeOnce(ctx, req, w, fn)
		if err == nil || !retryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (gave up: %w)", err, ctx.Err())
		case <-time.After(s.cfg.RetryInterval):
		}
	}
}

// retryable is true for the states of an agent that is starting: socket
// not there yet, or the caller's entries not synced ("no identity issued").
func retryable(err error) bool {
	st, _ := status.FromError(err)
	switch st.Code() {
	case codes.Unavailable:
		return true
	case codes.PermissionDenied:
		return strings.Contains(st.Message(), "no identity issued")
	}
	return false
}

func (s *SPIRE) subscribeOnce(ctx context.Context, req *delegatedidentityv1.SubscribeToX509SVIDsRequest, w Workload, fn func(*x509svid.SVID) (bool, error)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the subscription
	stream, err := s.delegated.SubscribeToX509SVIDs(ctx, req)
	if err != nil {
		return fmt.Errorf("spire: delegated svid for %s: %w", w, err)
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("spire: delegated svid for %s: %w", w, err)
		}
		// Until the agent has synced the workload's entries, updates come
		// without (the wanted) SVID: keep reading.
		for _, sk := range resp.GetX509Svids() {
			svid, err := parseDelegated(sk)
			if err != nil {
				return fmt.Errorf("spire: delegated svid for %s: %w", w, err)
			}
			if !w.ID.IsZero() && svid.ID != w.ID {
				continue
			}
			stop, err := fn(svid)
			if err != nil || stop {
				return err
			}
			break // one SVID per update
		}
	}
}

func parseDelegated(sk *delegatedidentityv1.X509SVIDWithKey) (*x509svid.SVID, error) {
	var der []byte
	for _, c := range sk.GetX509Svid().GetCertChain() {
		der = append(der, c...)
	}
	svid, err := x509svid.ParseRaw(der, sk.GetX509SvidKey())
	if err != nil {
		return nil, fmt.Errorf("parse svid: %w", err)
	}
	return svid, nil
}

// Close stops the Workload API source and the admin connection.
func (s *SPIRE) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	if s.own != nil {
		errs = append(errs, s.own.Close())
		s.own = nil
	}
	if s.admin != nil {
		errs = append(errs, s.admin.Close())
		s.admin = nil
	}
	return errors.Join(errs...)
}
