package xds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/translate"
)

// ControlPlaneNamespace and ControlPlaneServiceAccount name meshd's own
// identity: spiffe://<td>/ns/nodemesh-system/sa/meshd.
const (
	ControlPlaneNamespace      = "nodemesh-system"
	ControlPlaneServiceAccount = "meshd"
)

// ControlPlaneID is meshd's SPIFFE ID in td.
func ControlPlaneID(td spiffeid.TrustDomain) (spiffeid.ID, error) {
	return identity.WorkloadID(td, ControlPlaneNamespace, ControlPlaneServiceAccount)
}

// CA is what the ADS TLS needs from the built-in CA: SVIDs, agent SVIDs
// and the bundle (identity.CA).
type CA interface {
	Issuer
	x509bundle.Source
	TrustDomain() spiffeid.TrustDomain
}

// rotatingSVID is an x509svid.Source that re-issues its SVID once half of
// its lifetime has passed.
type rotatingSVID struct {
	issue func() (*x509svid.SVID, error)
	now   func() time.Time
	mu    sync.Mutex
	svid  *x509svid.SVID
}

func (r *rotatingSVID) GetX509SVID() (*x509svid.SVID, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.svid == nil || identity.NeedsRotation(r.svid.Certificates[0], r.now()) {
		s, err := r.issue()
		if err != nil {
			if r.svid != nil && r.now().Before(r.svid.Certificates[0].NotAfter) {
				return r.svid, nil // keep serving the current one until it expires
			}
			return nil, fmt.Errorf("re-issue meshd's SVID: %w", err)
		}
		r.svid = s
	}
	return r.svid, nil
}

// ServerTLS is meshd's TLS: its own SVID (spiffe://<td>/ns/
// nodemesh-system/sa/meshd, re-issued before half-life). A client
// certificate is optional, but when given it must be an SVID of the trust
// domain that verifies against the bundle: a node agent's first
// CreateCertificate call has no certificate yet and authenticates with a
// bearer token instead (identity.CertService). A server using this config
// must refuse such peers everywhere else: StartControlPlane does, on every
// other method, and ADSGuard with RequireTLS on ADS. Which node a client
// may speak for is decided per stream by ADSGuard.
func ServerTLS(ca CA, now func() time.Time) (*tls.Config, error) {
	id, err := ControlPlaneID(ca.TrustDomain())
	if err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	src := &rotatingSVID{issue: func() (*x509svid.SVID, error) { return ca.NewSVID(id) }, now: now}
	if _, err := src.GetX509SVID(); err != nil {
		return nil, fmt.Errorf("issue meshd's SVID: %w", err)
	}
	cfg := tlsconfig.MTLSServerConfig(src, ca, tlsconfig.AuthorizeMemberOf(ca.TrustDomain()))
	cfg.MinVersion = tls.VersionTLS13
	verify := cfg.VerifyPeerCertificate
	cfg.ClientAuth = tls.RequestClientCert
	cfg.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return nil // no certificate: each service decides (see above)
		}
		return verify(raw, chains)
	}
	return cfg, nil
}

// AgentClientTLS is a node agent's (or test client's) side: present svid,
// accept only meshd's identity.
func AgentClientTLS(svid x509svid.Source, bundle x509bundle.Source, td spiffeid.TrustDomain) (*tls.Config, error) {
	id, err := ControlPlaneID(td)
	if err != nil {
		return nil, err
	}
	cfg := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(id))
	cfg.MinVersion = tls.VersionTLS13
	return cfg, nil
}

// ADSGuard checks every ADS request against the stream's peer:
//   - with TLS, the peer's SPIFFE ID must be allowed to speak for the
//     request's node: identity.AgentID(td) with the node name bound in the
//     certificate (identity.AgentNode) equal to node.id, or, for a
//     proxyless gRPC client, a workload ID of the namespace the node's
//     metadata names. Anything else ends the stream with PermissionDenied;
//   - with or without TLS, SDS requests naming secrets the node may not
//     have (SVIDs of service accounts without pods on it) are logged and
//     counted; the snapshot never holds them, so nothing is sent.
type ADSGuard struct {
	TrustDomain spiffeid.TrustDomain
	// RequireTLS refuses streams without a verified client certificate.
	RequireTLS bool
	// Allowed lists the secrets a node may receive (SecureSource.AllowedSecrets).
	Allowed func(node string) []string
	Logger  *slog.Logger

	refusedSecrets atomic.Uint64
	refusedStreams atomic.Uint64
}

// RefusedSecretRequests counts secret names asked for by nodes that may
// not have them.
func (g *ADSGuard) RefusedSecretRequests() uint64 { return g.refusedSecrets.Load() }

// RefusedStreams counts streams ended because the peer may not speak for
// the node it claimed.
func (g *ADSGuard) RefusedStreams() uint64 { return g.refusedStreams.Load() }

// StreamInterceptor applies the guard to the ADS streams of a gRPC server.
func (g *ADSGuard) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if info.FullMethod != discoveryv3.AggregatedDiscoveryService_StreamAggregatedResources_FullMethodName &&
			info.FullMethod != discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResources_FullMethodName {
			return handler(srv, ss)
		}
		p, err := g.peerOf(ss.Context())
		if err != nil {
			g.refusedStreams.Add(1)
			g.logger().Warn("xds stream refused", "err", err)
			return status.Error(codes.Unauthenticated, err.Error())
		}
		gs := &guardedStream{ServerStream: ss, g: g, peer: p}
		err = handler(srv, gs)
		// go-control-plane ends a stream quietly when a receive fails;
		// the client must learn why.
		if gs.refused != nil {
			return gs.refused
		}
		return err
	}
}

func (g *ADSGuard) logger() *slog.Logger {
	if g.Logger == nil {
		return slog.Default()
	}
	return g.Logger
}

// adsPeer is who is on the other end of a stream.
type adsPeer struct {
	tls  bool
	id   spiffeid.ID
	node string // for agent IDs: the node bound in the certificate
}

func (g *ADSGuard) peerOf(ctx context.Context) (adsPeer, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return adsPeer{}, errors.New("no peer information")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		if g.RequireTLS {
			return adsPeer{}, errors.New("a client certificate is required")
		}
		return adsPeer{}, nil
	}
	leaf := ti.State.PeerCertificates[0]
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return adsPeer{}, fmt.Errorf("client certificate: %w", err)
	}
	out := adsPeer{tls: true, id: id}
	if id == identity.AgentID(g.TrustDomain) {
		if out.node, err = identity.AgentNode(leaf, g.TrustDomain); err != nil {
			return adsPeer{}, fmt.Errorf("agent certificate: %w", err)
		}
	}
	return out, nil
}

// authorize decides whether p may speak for node.
func (g *ADSGuard) authorize(p adsPeer, node *corev3.Node) error {
	if !p.tls {
		return nil // insecure mode (RequireTLS is checked at stream start)
	}
	if p.id == identity.AgentID(g.TrustDomain) {
		if p.node != node.GetId() {
			return fmt.Errorf("agent of node %q may not speak for node %q", p.node, node.GetId())
		}
		return nil
	}
	ns, _, err := identity.ParseWorkloadID(p.id)
	if err != nil {
		return fmt.Errorf("peer %s is neither a node agent nor a workload", p.id)
	}
	proxy, err := ProxyForNode(node)
	if err != nil {
		return err
	}
	if proxy.Kind != translate.ProxylessGRPC || proxy.Namespace != ns {
		return fmt.Errorf("workload %s may only connect as a proxyless gRPC client of namespace %s", p.id, ns)
	}
	// A node's name is its agent's id: a workload holding it would keep
	// the agent out (the server refuses a second client of another kind).
	if g.Allowed != nil && len(g.Allowed(node.GetId())) > 1 {
		return fmt.Errorf("workload %s may not use node %q's name as its xDS node id", p.id, node.GetId())
	}
	return nil
}

// guardedStream checks each request received on an ADS stream.
type guardedStream struct {
	grpc.ServerStream
	g       *ADSGuard
	peer    adsPeer
	node    string // node.id of the first request
	refused error  // set once the stream is refused; read after the handler returns
}

func (s *guardedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	var node *corev3.Node
	var typeURL string
	var names []string
	switch r := m.(type) {
	case *discoveryv3.DiscoveryRequest:
		node, typeURL, names = r.GetNode(), r.GetTypeUrl(), r.GetResourceNames()
	case *discoveryv3.DeltaDiscoveryRequest:
		node, typeURL, names = r.GetNode(), r.GetTypeUrl(), r.GetResourceNamesSubscribe()
	default:
		return nil
	}
	if node != nil {
		if s.node != "" && node.GetId() != s.node {
			return s.refuse(fmt.Errorf("stream of node %q switched to node %q", s.node, node.GetId()))
		}
		if err := s.g.authorize(s.peer, node); err != nil {
			return s.refuse(err)
		}
		s.node = node.GetId()
	}
	if typeURL == resourcev3.SecretType && s.g.Allowed != nil {
		allowed := s.g.Allowed(s.node)
		for _, n := range names {
			if _, ok := slices.BinarySearch(allowed, n); !ok && n != "*" {
				s.g.refusedSecrets.Add(1)
				s.g.logger().Warn("xds secret refused: not a workload of this node", "node", s.node, "secret", n, "peer", s.peer.id)
			}
		}
	}
	return nil
}

func (s *guardedStream) refuse(err error) error {
	s.g.refusedStreams.Add(1)
	s.g.logger().Warn("xds stream refused", "node", s.node, "peer", s.peer.id, "err", err)
	s.refused = status.Error(codes.PermissionDenied, err.Error())
	return s.refused
}
