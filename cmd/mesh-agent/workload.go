package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/nodeagent/agent"
)

// withWorkloadCerts turns on the workload SVIDs of the built-in CA mode
// (--workload-certs-dir): a CertClient to meshd made with the agent's own
// dial options (its ADS TLS credentials), whose answers are verified
// against certDir/root-cert.pem. meshd serves the node Envoy's SDS itself
// in this mode, so LocalSDS stays off. The returned func closes the
// connection.
func withWorkloadCerts(cfg *agent.Config, dir, certDir, trustDomain string) (func(), error) {
	if certDir == "" || len(cfg.DialOptions) == 0 {
		return nil, errors.New("--workload-certs-dir needs --xds-cert-dir: meshd signs workload SVIDs only for an agent authenticated by mTLS")
	}
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, fmt.Errorf("--trust-domain: %w", err)
	}
	roots, err := newRootFile(filepath.Join(certDir, "root-cert.pem"), td)
	if err != nil {
		return nil, fmt.Errorf("--workload-certs-dir: %w", err)
	}
	cc, conn, err := builtinCASVIDs(cfg.ControlPlane, roots, td, cfg.DialOptions...)
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

// rootFile is an x509bundle.Source reading a trust domain's roots from a
// PEM file (the agent's root-cert.pem), again whenever the file changed,
// so that a root rotation written there reaches the workloads. A file that
// cannot be read keeps the last good bundle.
type rootFile struct {
	path string
	td   spiffeid.TrustDomain

	mu     sync.Mutex
	mtime  time.Time
	size   int64
	bundle *x509bundle.Bundle
}

// newRootFile reads path once, so that a missing or bad file is an error
// at start.
func newRootFile(path string, td spiffeid.TrustDomain) (*rootFile, error) {
	r := &rootFile{path: path, td: td}
	if _, err := r.GetX509BundleForTrustDomain(td); err != nil {
		return nil, err
	}
	return r, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (r *rootFile) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != r.td {
		return nil, fmt.Errorf("trust bundle %s: no bundle for trust domain %s (only %s)", r.path, td, r.td)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	fi, err := os.Stat(r.path)
	if err == nil && r.bundle != nil && fi.ModTime().Equal(r.mtime) && fi.Size() == r.size {
		return r.bundle, nil
	}
	var b *x509bundle.Bundle
	if err == nil {
		b, err = x509bundle.Load(td, r.path)
	}
	if err != nil {
		if r.bundle != nil {
			return r.bundle, nil // keep the last good roots
		}
		return nil, fmt.Errorf("trust bundle %s: %w", r.path, err)
	}
	r.bundle, r.mtime, r.size = b, fi.ModTime(), fi.Size()
	return b, nil
}
