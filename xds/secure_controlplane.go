package xds

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	securityv1alpha1 "istio.io/api/security/v1alpha1"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/translate/secure"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ControlPlaneSecurity turns on identity in meshd: translate/secure on
// every config, SDS secrets per node from CA, and ADS over mutual TLS
// (unless InsecureXDS) with the node agents authorised by ADSGuard.
//
// Who may connect, and how they get their certificate:
//
//   - Node agents present identity.AgentID(td)
//     (spiffe://<td>/ns/nodemesh-system/sa/mesh-agent) with their node name
//     bound in the certificate (identity.AgentNode); a stream's node.id must
//     be that name. The node's Envoy reaches meshd through its agent (local
//     xDS/SDS), so it needs no certificate of its own. In tests and demos
//     meshd's CA issues agent certificates directly (identity.NewAgentSVID;
//     meshd --bootstrap-agents writes them to files). In production the
//     agent gets its SVID either from SPIRE (SPIRE mode, see
//     secure_spire.go: node attestation by SPIRE, the node name as the
//     registration entry's first DNS name) or, with Tokens set, from meshd's CreateCertificate: the
//     agent connects without a client certificate (the TLS config allows
//     it; only CreateCertificate serves such a peer) and presents a bearer
//     token that Tokens binds to one node (in Kubernetes: a service account
//     token bound to the agent's pod, hence its node, checked by
//     TokenReview); the agent identity is only signed bound to that node.
//     After that it renews with its own SVID.
//   - Proxyless gRPC clients present their own workload SVID
//     (spiffe://<td>/ns/<ns>/sa/<sa>, from the file_watcher files the agent
//     writes for them, or from SPIRE) and may only connect as a
//     ProxylessGRPC node of that namespace (node metadata). With gRPC's
//     "tls" channel credentials they verify meshd against the SPIFFE bundle
//     map (GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true): meshd's certificate is
//     an SVID for spiffe://<td>/ns/nodemesh-system/sa/meshd with no DNS or
//     IP names, so hostname verification cannot succeed.
type ControlPlaneSecurity struct {
	// CA issues workload SVIDs, meshd's own SVID and the bundle (identity.CA).
	CA CA
	// SPIRE, instead of CA: meshd's SVID and bundle come from SPIRE and
	// meshd serves no secrets (see secure_spire.go).
	SPIRE *SPIRETLS
	// InsecureXDS serves ADS in plaintext (demos, tests); secrets are still
	// only served to the node whose pods need them, but any client can
	// claim any node id, so never use it across an untrusted network.
	InsecureXDS bool
	// RootNamespace of mesh-wide PeerAuthentication (default istio-system).
	RootNamespace string
	// RotationCheck: see SecurityConfig (default 1m).
	RotationCheck time.Duration
	// PerAccountClusters: copy clusters per service account instead of
	// selecting the account's transport socket by filter state, for node
	// Envoys older than 1.38 (secure.Options.PerAccountClusters).
	PerAccountClusters bool
	// Tokens authenticates CreateCertificate callers without a client
	// certificate by their bearer token: a node agent's first certificate
	// (e.g. kubetoken, Kubernetes service account tokens bound to a pod,
	// hence to its node). nil: no token bootstrap, a caller must present a
	// certificate. Unused with InsecureXDS (no CertService is served).
	Tokens identity.TokenAuthenticator
}

// Validate reports a configuration meshd cannot start with.
func (c *ControlPlaneSecurity) Validate() error {
	return c.validateUpstream()
}

// secure wraps src and returns the gRPC server options of the ADS server.
func (cp *ControlPlane) secure(src Source) (Source, []grpc.ServerOption, error) {
	sec := cp.cfg.Security
	if sec == nil {
		return src, nil, nil
	}
	if err := sec.Validate(); err != nil {
		return nil, nil, err
	}
	td := sec.trustDomain()
	ss, err := NewSecureSource(src, SecurityConfig{
		Issuer:        sec.issuer(),
		Options:       secure.Options{TrustDomain: td, RootNamespace: sec.RootNamespace, PerAccountClusters: sec.PerAccountClusters},
		RotationCheck: sec.RotationCheck,
		Logger:        cp.log,
	})
	if err != nil {
		return nil, nil, err
	}
	cp.secureSrc = ss
	cp.guard = &ADSGuard{TrustDomain: td, RequireTLS: !sec.InsecureXDS, Allowed: ss.AllowedSecrets, Logger: cp.log}
	opts := []grpc.ServerOption{grpc.ChainStreamInterceptor(cp.guard.StreamInterceptor())}
	if !sec.InsecureXDS {
		tlsCfg, err := sec.serverTLS()
		if err != nil {
			return nil, nil, err
		}
		// The TLS config lets peers without a certificate in (a node
		// agent's first CreateCertificate); nothing else serves them.
		unary, stream := requireClientCert(securityv1alpha1.IstioCertificateService_CreateCertificate_FullMethodName)
		opts = append(opts, grpc.Creds(credentials.NewTLS(tlsCfg)),
			grpc.ChainUnaryInterceptor(cp.countCertificates, unary), grpc.ChainStreamInterceptor(stream))
		if signer, ok := sec.CA.(identity.CSRSigner); ok {
			// Istio's certificate API on the same mTLS port.
			if cp.certs, err = identity.NewCertService(identity.CertServiceConfig{
				Signer: signer, Authorizer: certAuthorizer(ss), Tokens: sec.Tokens,
			}); err != nil {
				return nil, nil, err
			}
		}
	}
	return ss, opts, nil
}

// requireClientCert refuses (Unauthenticated) every call from a peer
// without a client certificate, except the methods named. The TLS config
// has verified any certificate given; a method allowed without one must
// authenticate the peer itself.
func requireClientCert(except ...string) (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	check := func(ctx context.Context, method string) error {
		if slices.Contains(except, method) {
			return nil
		}
		if p, ok := peer.FromContext(ctx); ok {
			if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
				return nil
			}
		}
		return status.Errorf(codes.Unauthenticated, "%s: a client certificate is required", method)
	}
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := check(ctx, info.FullMethod); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := check(ss.Context(), info.FullMethod); err != nil {
			return err
		}
		return handler(srv, ss)
	}
	return unary, stream
}

// certAuthorizer is who may get which SVID from CreateCertificate: a
// workload its own identity; a node agent the identities of the pods on
// its node (the same rule as SDS), nothing else. The agent identity goes
// only to agents (CertService binds it to their node), a bearer token gets
// nothing else, and nodemesh's own namespace (meshd's identity) is never
// issued here.
func certAuthorizer(ss *SecureSource) identity.Authorizer {
	td := ss.cfg.Options.TrustDomain
	return identity.AuthorizerFunc(func(_ context.Context, caller identity.Caller, requested spiffeid.ID) error {
		agent := identity.AgentID(td)
		switch ns, _, _ := identity.ParseWorkloadID(requested); {
		case requested == agent:
			if caller.ID != agent {
				return fmt.Errorf("%s may not get the node agent identity", caller.ID)
			}
			return nil
		case ns == identity.AgentNamespace:
			return fmt.Errorf("%s is nodemesh's own identity, never issued to a caller", requested)
		case len(caller.Certificates) == 0:
			return fmt.Errorf("a bearer token gets only the node agent identity, not %s", requested)
		case caller.ID == requested:
			return nil
		case caller.Node == "":
			return fmt.Errorf("%s may not get an SVID for %s", caller.ID, requested)
		case !slices.Contains(ss.AllowedSecrets(caller.Node), secure.SecretName(requested)):
			return fmt.Errorf("node %s runs no pod with identity %s", caller.Node, requested)
		}
		return nil
	})
}

// runSecure runs the secure source (rotation), if any, until ctx ends.
func (cp *ControlPlane) runSecure(ctx context.Context) error {
	if cp.secureSrc == nil {
		return nil
	}
	return cp.secureSrc.Run(ctx)
}

// Guard is the ADS guard (nil without Security), for its counters.
func (cp *ControlPlane) Guard() *ADSGuard { return cp.guard }

// countCertificates counts CreateCertificate answers and logs refusals
// (who asked, for what, why), as ADSGuard does for SDS.
func (cp *ControlPlane) countCertificates(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if info.FullMethod != securityv1alpha1.IstioCertificateService_CreateCertificate_FullMethodName {
		return resp, err
	}
	if err != nil {
		cp.certsRefused.Add(1)
		addr := ""
		if p, ok := peer.FromContext(ctx); ok {
			addr = p.Addr.String()
		}
		cp.log.Warn("certificate request refused", "peer", addr, "code", status.Code(err), "err", status.Convert(err).Message())
	} else {
		cp.certsIssued.Add(1)
	}
	return resp, err
}

// securityMetrics serves the ADS guard's and the certificate API's
// counters in the Prometheus text format (all zero without Security).
func (cp *ControlPlane) securityMetrics(w http.ResponseWriter, _ *http.Request) {
	var secrets, streams uint64
	if cp.guard != nil {
		secrets, streams = cp.guard.RefusedSecretRequests(), cp.guard.RefusedStreams()
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	fmt.Fprintf(w, "# HELP nodemesh_xds_refused_secret_requests_total SDS secret names asked for by nodes that may not have them.\n# TYPE nodemesh_xds_refused_secret_requests_total counter\n")
	fmt.Fprintf(w, "nodemesh_xds_refused_secret_requests_total %d\n", secrets)
	fmt.Fprintf(w, "# HELP nodemesh_xds_refused_streams_total ADS streams refused: no client certificate, or a peer speaking for another node.\n# TYPE nodemesh_xds_refused_streams_total counter\n")
	fmt.Fprintf(w, "nodemesh_xds_refused_streams_total %d\n", streams)
	fmt.Fprintf(w, "# HELP nodemesh_xds_certificates_issued_total CreateCertificate requests answered with a certificate.\n# TYPE nodemesh_xds_certificates_issued_total counter\n")
	fmt.Fprintf(w, "nodemesh_xds_certificates_issued_total %d\n", cp.certsIssued.Load())
	fmt.Fprintf(w, "# HELP nodemesh_xds_refused_certificate_requests_total CreateCertificate requests refused (unauthenticated, not allowed, malformed).\n# TYPE nodemesh_xds_refused_certificate_requests_total counter\n")
	fmt.Fprintf(w, "nodemesh_xds_refused_certificate_requests_total %d\n", cp.certsRefused.Load())
}
