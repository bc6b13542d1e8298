package xds

// SPIRE mode: meshd's TLS material comes from a SPIRE agent's Workload API
// instead of the built-in CA.
//
// meshd then signs nothing: its own SVID (ControlPlaneID) and the trust
// bundle it verifies node agents with come from SPIRE and rotate as SPIRE
// renews them; every node agent gets its own SVID and those of its node's
// workloads from its local SPIRE agent (Workload API, Delegated Identity
// API) and serves them to the node's Envoy over local SDS. meshd still runs
// translate/secure, so the configs it sends name the SDS secrets (one per
// service account, plus the bundle) that the agent serves; it serves no
// secrets and no CreateCertificate. The ADS guard is unchanged: an agent
// speaks for the node named in its SVID's Subject CN, which SPIRE sets to
// the registration entry's first DNS name (see identity/agent.go).

import (
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// SPIRETLS is meshd's TLS material in SPIRE mode, typically one
// workloadapi.X509Source as both SVID and Bundle.
type SPIRETLS struct {
	// TrustDomain of the mesh; meshd's SVID must be ControlPlaneID of it.
	TrustDomain spiffeid.TrustDomain
	// SVID is meshd's own SVID, asked for at every handshake (so a
	// renewal is used from the next connection on).
	SVID x509svid.Source
	// Bundle verifies the node agents' (and proxyless clients')
	// certificates.
	Bundle x509bundle.Source
}

// Validate checks that every field is set.
func (s *SPIRETLS) Validate() error {
	var errs []error
	if s.TrustDomain.IsZero() {
		errs = append(errs, errors.New("spire tls: TrustDomain is required"))
	}
	if s.SVID == nil {
		errs = append(errs, errors.New("spire tls: SVID source is required"))
	}
	if s.Bundle == nil {
		errs = append(errs, errors.New("spire tls: Bundle source is required"))
	}
	return errors.Join(errs...)
}

// SPIREServerTLS is meshd's ADS TLS in SPIRE mode: the SVID from s (which
// must be ControlPlaneID(s.TrustDomain) now; a registration entry for
// another ID is refused here, at start, rather than by every agent), a
// client certificate of the trust domain required, verified with s.Bundle.
func SPIREServerTLS(s SPIRETLS) (*tls.Config, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	want, err := ControlPlaneID(s.TrustDomain)
	if err != nil {
		return nil, err
	}
	svid, err := s.SVID.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("meshd's SVID from SPIRE: %w", err)
	}
	if svid.ID != want {
		return nil, fmt.Errorf("SPIRE issued meshd the SVID %s, want %s: register meshd's entry with -spiffeID %s", svid.ID, want, want)
	}
	if _, err := s.Bundle.GetX509BundleForTrustDomain(s.TrustDomain); err != nil {
		return nil, fmt.Errorf("trust bundle from SPIRE: %w", err)
	}
	cfg := tlsconfig.MTLSServerConfig(s.SVID, s.Bundle, tlsconfig.AuthorizeMemberOf(s.TrustDomain))
	cfg.MinVersion = tls.VersionTLS13
	return cfg, nil
}

// trustDomain is the trust domain of whichever upstream is configured.
func (c *ControlPlaneSecurity) trustDomain() spiffeid.TrustDomain {
	if c.SPIRE != nil {
		return c.SPIRE.TrustDomain
	}
	return c.CA.TrustDomain()
}

// issuer is the SecureSource's issuer: the built-in CA, or none in SPIRE
// mode (the node agents serve the SVIDs).
func (c *ControlPlaneSecurity) issuer() Issuer {
	if c.SPIRE != nil {
		return nil
	}
	return c.CA
}

// serverTLS is the ADS TLS of the configured upstream.
func (c *ControlPlaneSecurity) serverTLS() (*tls.Config, error) {
	if c.SPIRE != nil {
		return SPIREServerTLS(*c.SPIRE)
	}
	cfg, err := ServerTLS(c.CA, nil)
	if err != nil {
		return nil, err
	}
	if c.Tokens == nil {
		// No token bootstrap: no peer has a reason to come without a
		// certificate, so the handshake itself refuses them.
		cfg.ClientAuth = tls.RequireAnyClientCert
	}
	return cfg, nil
}

// validateUpstream: exactly one of CA and SPIRE.
func (c *ControlPlaneSecurity) validateUpstream() error {
	switch {
	case c.CA == nil && c.SPIRE == nil:
		return errors.New("control plane security: CA or SPIRE is required")
	case c.CA != nil && c.SPIRE != nil:
		return errors.New("control plane security: CA and SPIRE are exclusive (SPIRE mode runs no CA)")
	case c.SPIRE != nil && c.Tokens != nil:
		return errors.New("control plane security: Tokens bootstrap agent certificates from the built-in CA; with SPIRE, SPIRE attests the nodes")
	case c.SPIRE != nil:
		return c.SPIRE.Validate()
	}
	return nil
}
