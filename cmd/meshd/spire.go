package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/xds"
)

// spireStartTimeout bounds the wait for meshd's first SVID from SPIRE.
const spireStartTimeout = 30 * time.Second

// builtInCAFlags are the flags of the built-in CA and of its agent
// bootstrap, refused with --spire-socket (SPIRE mode runs no CA; SPIRE
// attests the nodes).
var builtInCAFlags = []string{"ca-dir", "svid-ttl", "bootstrap-agents", "agent-certs-dir",
	"agent-service-account", "agent-token-audience", "root-cert-configmap"}

// checkSPIREFlags refuses flag combinations that make no sense in SPIRE
// mode: the built-in CA's flags, --mtls=false and --xds-insecure.
func checkSPIREFlags(fs *flag.FlagSet, mtls bool) error {
	var errs []error
	fs.Visit(func(f *flag.Flag) {
		for _, n := range builtInCAFlags {
			if f.Name == n {
				errs = append(errs, fmt.Errorf("--%s is a flag of the built-in CA; with --spire-socket meshd runs no CA", n))
			}
		}
	})
	if !mtls {
		errs = append(errs, errors.New("--spire-socket needs --mtls (the default): SPIRE mode is workload identity"))
	}
	if f := fs.Lookup("xds-insecure"); f != nil && f.Value.String() == "true" {
		errs = append(errs, errors.New("--spire-socket and --xds-insecure are exclusive: node agents in SPIRE mode authenticate with their SVIDs over mTLS"))
	}
	return errors.Join(errs...)
}

// spireSecurity takes meshd's TLS material from the SPIRE agent's Workload
// API at addr: its own SVID (which must be xds.ControlPlaneID of
// trustDomain; StartControlPlane checks) and the bundle, both following
// SPIRE's renewals. Close the returned closer at exit.
func spireSecurity(addr, trustDomain string) (*xds.SPIRETLS, io.Closer, error) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, nil, fmt.Errorf("--trust-domain %q: %w", trustDomain, err)
	}
	want, err := xds.ControlPlaneID(td)
	if err != nil {
		return nil, nil, err
	}
	sp, err := identity.NewSPIRE(identity.SPIREConfig{WorkloadAPIAddr: addr})
	if err != nil {
		return nil, nil, fmt.Errorf("--spire-socket: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), spireStartTimeout)
	defer cancel()
	src, err := sp.X509Source(ctx)
	if err != nil {
		sp.Close()
		return nil, nil, fmt.Errorf("no SVID from the SPIRE agent at %s within %s (is it running, and is there an entry for %s matching meshd's selectors?): %w",
			addr, spireStartTimeout, want, err)
	}
	return &xds.SPIRETLS{TrustDomain: td, SVID: src, Bundle: src}, sp, nil
}
