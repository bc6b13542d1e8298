package main

import (
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/nodeagent/agent"
)

// withWorkloadCerts turns on the workload SVIDs of the built-in CA mode
// (--workload-certs-dir): a CertClient to meshd made with the agent's own
// credentials (its ADS mTLS), whose answers are verified against the
// agent's roots (--xds-cert-dir's root-cert.pem or --xds-root-cert,
// re-read when they change). meshd serves the node Envoy's SDS itself in
// this mode, so LocalSDS stays off. The returned func closes the
// connection.
func withWorkloadCerts(cfg *agent.Config, dir string, creds xdsCreds, trustDomain string) (func(), error) {
	if creds.certs == nil {
		return nil, errors.New("--workload-certs-dir needs --xds-cert-dir or --xds-token: meshd signs workload SVIDs only for an agent authenticated by mTLS")
	}
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, fmt.Errorf("--trust-domain: %w", err)
	}
	cc, conn, err := builtinCASVIDs(cfg.ControlPlane, creds.certs, td, creds.dial)
	if err != nil {
		return nil, err
	}
	cfg.WorkloadSVIDs, cfg.WorkloadCertsDir = cc, dir
	return func() { conn.Close() }, nil
}

// builtinCASVIDs is the workload SVID source of the built-in CA mode:
// identity.CertClient asking meshd's CreateCertificate (Istio's
// certificate API on meshd's mTLS port) over a connection of its own, made
// with dial, the same TLS credentials the agent uses for ADS (meshd gives
// a node agent only the identities of its node's pods). bundle verifies
// what meshd returns and is the trust bundle handed to the workloads. The
// caller closes the returned connection.
func builtinCASVIDs(controlPlane string, bundle x509bundle.Source, td spiffeid.TrustDomain, dial ...grpc.DialOption) (*identity.CertClient, *grpc.ClientConn, error) {
	conn, err := grpc.NewClient(controlPlane, dial...)
	if err != nil {
		return nil, nil, fmt.Errorf("--workload-certs-dir: connection to meshd %s: %w", controlPlane, err)
	}
	cc, err := identity.NewCertClient(identity.CertClientConfig{Conn: conn, TrustDomain: td, Bundle: bundle})
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("--workload-certs-dir: %w", err)
	}
	return cc, conn, nil
}
