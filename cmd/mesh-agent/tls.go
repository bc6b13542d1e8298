package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/xds"
)

// xdsFlags are the flags of the agent's credentials for meshd.
type xdsFlags struct {
	certDir, token, rootCert string
}

func (f xdsFlags) set() bool { return f.certDir != "" || f.token != "" || f.rootCert != "" }

// xdsCreds is what main wires: the dial option for meshd and the
// credentials whose Run keeps it current (nil for plaintext).
type xdsCreds struct {
	dial  grpc.DialOption
	certs *identity.AgentCert
}

// Start keeps the credentials current until ctx ends, and waits up to
// wait for the first certificate (the agent retries after that).
func (c xdsCreds) Start(ctx context.Context, wait time.Duration, log *slog.Logger) {
	if c.certs == nil {
		return
	}
	go c.certs.Run(ctx)
	select {
	case <-c.certs.Issued():
	case <-ctx.Done():
	case <-time.After(wait):
		log.Warn("no certificate from meshd yet; connecting anyway, the agent retries", "waited", wait, "last_error", c.certs.Status().LastError)
	}
}

// Status is agent.Config.XDSCredentials (nil for plaintext).
func (c xdsCreds) Status() func() any {
	if c.certs == nil {
		return nil
	}
	return func() any { return c.certs.Status() }
}

// xdsCredentials builds the agent's mTLS credentials for meshd, which must
// present the control plane's SPIFFE ID in trustDomain:
//   - --xds-cert-dir DIR: cert-chain.pem, key.pem and root-cert.pem (the
//     layout meshd --bootstrap-agents writes), re-read when they change;
//   - --xds-token FILE with --xds-root-cert FILE: the certificate is
//     bootstrapped with the bearer token through meshd (controlPlane) and
//     renewed at half of its lifetime.
//
// Without any of them the agent talks plaintext (meshd --xds-insecure).
func xdsCredentials(f xdsFlags, node, controlPlane, trustDomain string, log *slog.Logger) (xdsCreds, error) {
	if !f.set() {
		log.Warn("no --xds-cert-dir, --xds-token or --spire-socket: talking to meshd in plaintext (meshd must run with --xds-insecure)")
		return xdsCreds{}, nil
	}
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return xdsCreds{}, fmt.Errorf("--trust-domain: %w", err)
	}
	cfg := identity.AgentCertConfig{TrustDomain: td, Node: node,
		OnError: func(err error) { log.Warn("xds credentials", "err", err) },
		OnChange: func(st identity.AgentCertStatus) {
			log.Info("xds credentials updated", "via", st.Via, "serial", st.Serial, "not_after", st.NotAfter, "roots", st.Roots)
		}}
	switch {
	case f.certDir != "" && f.token != "":
		return xdsCreds{}, errors.New("--xds-cert-dir and --xds-token exclude each other: certificate files, or a token to get one from meshd")
	case f.certDir != "":
		if f.rootCert != "" {
			return xdsCreds{}, errors.New("--xds-root-cert goes with --xds-token; --xds-cert-dir has its own root-cert.pem")
		}
		cfg.CertFile, cfg.KeyFile = filepath.Join(f.certDir, "cert-chain.pem"), filepath.Join(f.certDir, "key.pem")
		cfg.RootsFile = filepath.Join(f.certDir, "root-cert.pem")
		for _, p := range []string{cfg.CertFile, cfg.KeyFile, cfg.RootsFile} {
			if err := readable(p); err != nil {
				return xdsCreds{}, fmt.Errorf("--xds-cert-dir: %w", err)
			}
		}
	default: // token
		if f.token == "" {
			return xdsCreds{}, errors.New("--xds-root-cert needs --xds-token (or use --xds-cert-dir)")
		}
		if f.rootCert == "" {
			return xdsCreds{}, errors.New("--xds-token needs --xds-root-cert: the PEM roots that verify meshd")
		}
		if err := readable(f.token); err != nil {
			return xdsCreds{}, fmt.Errorf("--xds-token: %w", err)
		}
		if err := readable(f.rootCert); err != nil {
			return xdsCreds{}, fmt.Errorf("--xds-root-cert: %w", err)
		}
		if cfg.ServerID, err = xds.ControlPlaneID(td); err != nil {
			return xdsCreds{}, err
		}
		cfg.TokenFile, cfg.RootsFile, cfg.Address = f.token, f.rootCert, controlPlane
	}
	certs, err := identity.NewAgentCert(cfg)
	if err != nil {
		return xdsCreds{}, err
	}
	tlsCfg, err := xds.AgentClientTLS(certs, certs, td)
	if err != nil {
		return xdsCreds{}, err
	}
	return xdsCreds{dial: grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)), certs: certs}, nil
}

func readable(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	return f.Close()
}
