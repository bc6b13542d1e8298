package xds

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/nodemesh/nodemesh/translate/secure"
)

// ControlPlaneSecurity turns on identity in meshd: translate/secure on
// every config, SDS secrets per node from CA, and ADS over mutual TLS
// (unless InsecureXDS) with the node agents authorised by ADSGuard.
type ControlPlaneSecurity struct {
	// CA issues workload SVIDs, meshd's own SVID and the bundle (identity.CA).
	CA CA
	// InsecureXDS serves ADS in plaintext (demos, tests); secrets are still
	// only served to the node whose pods need them, but any client can
	// claim any node id, so never use it across an untrusted network.
	InsecureXDS bool
	// RootNamespace of mesh-wide PeerAuthentication (default istio-system).
	RootNamespace string
	// RotationCheck: see SecurityConfig (default 1m).
	RotationCheck time.Duration
}

// Validate reports a configuration meshd cannot start with.
func (c *ControlPlaneSecurity) Validate() error {
	if c.CA == nil {
		return errors.New("control plane security: CA is required")
	}
	return nil
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
	td := sec.CA.TrustDomain()
	ss, err := NewSecureSource(src, SecurityConfig{
		Issuer:        sec.CA,
		Options:       secure.Options{TrustDomain: td, RootNamespace: sec.RootNamespace},
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
		tlsCfg, err := ServerTLS(sec.CA, nil)
		if err != nil {
			return nil, nil, err
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(tlsCfg)))
	}
	return ss, opts, nil
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
