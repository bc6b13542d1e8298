package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/nodeagent/agent"
	"github.com/nodemesh/nodemesh/xds"
)

// spireStartTimeout bounds the wait for the agent's first SVID from SPIRE.
const spireStartTimeout = 30 * time.Second

// spireFlags are the agent's SPIRE mode flags.
type spireFlags struct {
	socket      string // Workload API: the agent's own SVID
	adminSocket string // Delegated Identity API: its workloads' SVIDs
	bySelectors bool   // ask for them by k8s selectors, not by a pod's PID
}

func (f spireFlags) on() bool { return f.socket != "" }

// check refuses combinations that cannot work; otherCreds says whether
// another source of the agent's certificate (--xds-cert-dir, --xds-token)
// is set.
func (f spireFlags) check(otherCreds bool, envoySocket string) error {
	switch {
	case f.bySelectors && f.adminSocket == "":
		return errors.New("--spire-workload-selectors needs --spire-admin-socket")
	case f.adminSocket != "" && f.socket == "":
		return errors.New("--spire-admin-socket needs --spire-socket")
	case f.socket != "" && otherCreds:
		return errors.New("--spire-socket is exclusive with --xds-cert-dir and --xds-token: the agent's certificate comes from SPIRE or from meshd's CA")
	case f.socket != "" && envoySocket != "" && f.adminSocket == "":
		return errors.New("--envoy-socket with --spire-socket needs --spire-admin-socket: in SPIRE mode meshd serves no secrets, the agent serves the node Envoy's SDS from SPIRE's Delegated Identity API")
	}
	return nil
}

// workloadSVIDs is the source of the node's workload SVIDs in SPIRE mode:
// SPIRE's Delegated Identity API (the agent's SPIFFE ID must be in the
// SPIRE agent's authorized_delegates), or none without
// --spire-admin-socket.
func (f spireFlags) workloadSVIDs(sp *identity.SPIRE, log *slog.Logger) identity.Source {
	if f.adminSocket == "" {
		log.Warn("no --spire-admin-socket: the node's workloads get no SVIDs from this agent")
		return nil
	}
	return sp
}

// svidRequest is how SPIRE is asked for the workloads' SVIDs: by a pod's
// PID unless --spire-workload-selectors (the agent's default for SPIRE).
func (f spireFlags) svidRequest(log *slog.Logger) agent.SVIDRequest {
	if !f.bySelectors {
		return ""
	}
	log.Warn("--spire-workload-selectors: asking SPIRE for workload SVIDs by k8s:ns and k8s:sa selectors, not by a process of a pod on this node; SPIRE does not check that the pods run here")
	return agent.SVIDBySelectors
}

// workloadCertsDir has the agent write its workloads' SVIDs from SPIRE to
// dir (--workload-certs-dir in SPIRE mode).
func (f spireFlags) workloadCertsDir(cfg *agent.Config, dir string) error {
	if f.adminSocket == "" {
		return errors.New("--workload-certs-dir with --spire-socket needs --spire-admin-socket: the workloads' SVIDs come from SPIRE's Delegated Identity API")
	}
	cfg.WorkloadCertsDir = dir
	return nil
}

// localSDS: in SPIRE mode the agent answers the node Envoy's SDS itself
// (meshd holds no keys).
func (f spireFlags) localSDS(envoySocket string) bool {
	return f.on() && f.adminSocket != "" && envoySocket != ""
}

// spire connects to the local SPIRE agent and waits for this agent's own
// SVID, which must be identity.AgentID(trustDomain) naming node (see
// checkAgentSVID). It returns the SPIRE client (close it at exit; with
// --spire-admin-socket it also serves the node's workload SVIDs) and the
// dial option for mTLS to meshd, which follows SPIRE's renewals.
func (f spireFlags) spire(node, trustDomain string) (*identity.SPIRE, grpc.DialOption, error) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, nil, fmt.Errorf("--trust-domain: %w", err)
	}
	sp, err := identity.NewSPIRE(identity.SPIREConfig{WorkloadAPIAddr: f.socket, AdminSocketAddr: f.adminSocket})
	if err != nil {
		return nil, nil, fmt.Errorf("--spire-socket / --spire-admin-socket: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), spireStartTimeout)
	defer cancel()
	src, err := sp.X509Source(ctx)
	if err != nil {
		sp.Close()
		return nil, nil, fmt.Errorf("no SVID from the SPIRE agent at %s within %s (is it running, and is there an entry for %s matching this process?): %w",
			f.socket, spireStartTimeout, identity.AgentID(td), err)
	}
	svid, err := src.GetX509SVID()
	if err == nil {
		err = checkAgentSVID(svid, td, node)
	}
	if err != nil {
		sp.Close()
		return nil, nil, err
	}
	cfg, err := xds.AgentClientTLS(src, src, td)
	if err != nil {
		sp.Close()
		return nil, nil, err
	}
	return sp, grpc.WithTransportCredentials(credentials.NewTLS(cfg)), nil
}

// checkAgentSVID says what is wrong with SPIRE's registration when the
// SVID would not let this agent speak for node: meshd accepts
// identity.AgentID(td) with node in the Subject CN, which SPIRE takes from
// the entry's first DNS name.
func checkAgentSVID(svid *x509svid.SVID, td spiffeid.TrustDomain, node string) error {
	want := identity.AgentID(td)
	if svid.ID != want {
		return fmt.Errorf("SPIRE issued this agent the SVID %s, want %s: register the node agent's entry with -spiffeID %s", svid.ID, want, want)
	}
	got, err := identity.AgentNode(svid.Certificates[0], td)
	if err != nil || got != node {
		return fmt.Errorf("SPIRE's SVID %s names node %q in its Subject CN, not --node %q: SPIRE takes the CN from the entry's first DNS name, so register the agent's entry with -dns %s (spire-controller-manager: dnsNameTemplates [\"{{ .PodSpec.NodeName }}\"])",
			svid.ID, svid.Certificates[0].Subject.CommonName, node, node)
	}
	return nil
}
