package main

import (
	"fmt"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/nodemesh/nodemesh/xds"
)

// xdsCredentials reads the agent's certificate from dir (the layout meshd
// --bootstrap-agents writes: cert-chain.pem, key.pem, root-cert.pem) and
// returns the dial option for mTLS to meshd, which must present the
// control plane's SPIFFE ID in trustDomain. The files are read once: restart
// the agent to pick up a renewed certificate.
func xdsCredentials(dir, trustDomain string) (grpc.DialOption, error) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, fmt.Errorf("--trust-domain: %w", err)
	}
	svid, err := x509svid.Load(filepath.Join(dir, "cert-chain.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		return nil, fmt.Errorf("load the agent certificate from %s: %w", dir, err)
	}
	bundle, err := x509bundle.Load(td, filepath.Join(dir, "root-cert.pem"))
	if err != nil {
		return nil, fmt.Errorf("load the trust bundle from %s: %w", dir, err)
	}
	cfg, err := xds.AgentClientTLS(svid, bundle, td)
	if err != nil {
		return nil, err
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(cfg)), nil
}
