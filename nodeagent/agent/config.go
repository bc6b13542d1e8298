package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"time"

	"google.golang.org/grpc"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/nodeagent/ads"
	"github.com/nodemesh/nodemesh/nodeagent/envoy"
)

// Config configures an Agent. Node, ControlPlane and CgroupPath are
// required; every other field has a useful zero value.
type Config struct {
	// Node is this node's name: the xDS node id and the name the control
	// plane places pods on.
	Node string
	// ControlPlane is meshd's gRPC address (host:port).
	ControlPlane string
	// DialOptions for the control plane connection; default insecure
	// transport. mesh-agent passes mTLS credentials that follow the
	// agent's renewed certificate (identity.AgentCert).
	DialOptions []grpc.DialOption
	// CgroupPath is the cgroup v2 directory the programs attach to: the
	// node's, holding every pod's cgroup. Never the root of a shared
	// machine's hierarchy in a test.
	CgroupPath string
	// PinDir holds the pinned maps and links; default
	// nodeagent.DefaultPinRoot/<Node>.
	PinDir string
	// NodeIP is the node's address as pods see it: the node proxy's
	// address for L7 redirects, and a host workload (identity
	// nodeagent.IdentityHost) so that the node reaches default-deny pods.
	// Optional; without it namespace listeners are NACKed.
	NodeIP netip.Addr
	// PodCgroup returns the cgroup v2 directory of a local pod from its
	// namespace, name and UID ("" when the control plane sent none), or ""
	// when unknown. Default CgroupLayout(CgroupPath): the kubelet's layouts,
	// then the e2e harness's.
	PodCgroup func(namespace, pod, uid string) string
	// EnvoySocket is the unix socket of the local xDS proxy Envoy connects
	// to. Empty: no Envoy side at all.
	EnvoySocket string
	// EnvoyBootstrapPath is where the bootstrap is written; default
	// envoy-bootstrap.json next to EnvoySocket.
	EnvoyBootstrapPath string
	// EnvoyBinary is the Envoy executable (name on PATH or path); default
	// "envoy". When it is not found, Envoy is not started.
	EnvoyBinary string
	// EnvoyBootstrap overrides the bootstrap (admin port, limits); Node and
	// XDSSocket are filled in.
	EnvoyBootstrap envoy.BootstrapConfig
	// StatusAddr is the HTTP status listener (host:port); empty: none.
	StatusAddr string
	// XDSCredentials, if set, reports the state of the credentials in
	// DialOptions (identity.AgentCert.Status), shown under
	// "xdsCredentials" in /status.
	XDSCredentials func() any
	// Backoff between reconnects to the control plane.
	Backoff ads.Backoff

	// WorkloadSVIDs issues the SVIDs of the service accounts with pods on
	// this node (the Workloads of the applied resource set whose node is
	// Node), renewed before half their lifetime, and the trust bundle:
	// identity.CertClient against meshd's built-in CA, or identity.SPIRE
	// (Delegated Identity API). Nil: the agent handles no workload SVIDs.
	WorkloadSVIDs identity.Source
	// WorkloadSVIDsBy is how WorkloadSVIDs is asked for a service
	// account's SVID. Default: SVIDByPID for *identity.SPIRE (SPIRE
	// attests a live process of one of the account's pods on this node,
	// found through PodCgroup), SVIDByID for any other source (meshd
	// checks the node). SVIDBySelectors trusts every node with every
	// identity: only as an explicit opt-in.
	WorkloadSVIDsBy SVIDRequest
	// WorkloadCertsDir, when set (needs WorkloadSVIDs), receives each local
	// service account's SVID as <dir>/<namespace>/<serviceaccount>/
	// {cert-chain.pem,key.pem,root-cert.pem}, replaced atomically on
	// renewal and bundle change and removed when the service account's
	// last pod leaves: what gRPC's file_watcher certificate provider of a
	// proxyless workload reads. A pod mounts its own service account's
	// directory; whoever can mount other directories of the host (any
	// hostPath) can take the other identities.
	WorkloadCertsDir string
	// LocalSDS, when set (needs WorkloadSVIDs and EnvoySocket), answers the
	// node Envoy's SDS requests from WorkloadSVIDs instead of forwarding
	// them to meshd (SPIRE mode: meshd holds no keys). Other types are
	// still proxied.
	LocalSDS bool
	// WorkloadSVIDRetry is the first wait before retrying a failed SVID
	// fetch, doubled after each further failure up to 20s, and the least
	// time between two fetches for one service account (default 5s);
	// WorkloadBundleRefresh how often the trust bundle is re-read between
	// renewals (default 1m).
	WorkloadSVIDRetry, WorkloadBundleRefresh time.Duration
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Validate reports what is missing or wrong in c.
func (c Config) Validate() error {
	var errs []error
	if c.Node == "" {
		errs = append(errs, errors.New("node is required"))
	}
	if c.ControlPlane == "" {
		errs = append(errs, errors.New("control plane address is required"))
	}
	if c.CgroupPath == "" || !filepath.IsAbs(c.CgroupPath) {
		errs = append(errs, fmt.Errorf("cgroup path %q must be an absolute path", c.CgroupPath))
	}
	if c.EnvoySocket != "" && !filepath.IsAbs(c.EnvoySocket) {
		errs = append(errs, fmt.Errorf("envoy socket %q must be an absolute path", c.EnvoySocket))
	}
	if c.EnvoyBootstrapPath != "" && c.EnvoySocket == "" {
		errs = append(errs, errors.New("envoy bootstrap path needs an envoy socket"))
	}
	if c.NodeIP.IsValid() && !c.NodeIP.Unmap().Is4() && !c.NodeIP.Is6() {
		errs = append(errs, fmt.Errorf("node ip %s is not an IP address", c.NodeIP))
	}
	if c.WorkloadCertsDir != "" && c.WorkloadSVIDs == nil {
		errs = append(errs, errors.New("workload certs dir needs a workload SVID source"))
	}
	if c.WorkloadCertsDir != "" && !filepath.IsAbs(c.WorkloadCertsDir) {
		errs = append(errs, fmt.Errorf("workload certs dir %q must be an absolute path", c.WorkloadCertsDir))
	}
	if c.LocalSDS && (c.WorkloadSVIDs == nil || c.EnvoySocket == "") {
		errs = append(errs, errors.New("local SDS needs a workload SVID source and an envoy socket"))
	}
	if err := c.checkSVIDRequest(); err != nil {
		errs = append(errs, err)
	}
	if c.WorkloadSVIDRetry < 0 || c.WorkloadBundleRefresh < 0 {
		errs = append(errs, errors.New("workload SVID retry and bundle refresh must not be negative"))
	}
	if c.Backoff.Jitter < 0 || c.Backoff.Jitter >= 1 {
		errs = append(errs, fmt.Errorf("backoff jitter %v is outside [0, 1)", c.Backoff.Jitter))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("agent config: %w", err)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.PodCgroup == nil {
		c.PodCgroup = CgroupLayout(c.CgroupPath)
	}
	if c.EnvoySocket != "" && c.EnvoyBootstrapPath == "" {
		c.EnvoyBootstrapPath = filepath.Join(filepath.Dir(c.EnvoySocket), "envoy-bootstrap.json")
	}
	if c.EnvoyBinary == "" {
		c.EnvoyBinary = "envoy"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.NodeIP = c.NodeIP.Unmap()
	return c
}

// checkSVIDRequest refuses a WorkloadSVIDsBy the source cannot serve.
func (c Config) checkSVIDRequest() error {
	switch c.WorkloadSVIDsBy {
	case "", SVIDByID, SVIDByPID, SVIDBySelectors:
	default:
		return fmt.Errorf("workload SVIDs by %q: want %q, %q or %q", c.WorkloadSVIDsBy, SVIDByID, SVIDByPID, SVIDBySelectors)
	}
	if c.WorkloadSVIDs == nil {
		return nil
	}
	_, spire := c.WorkloadSVIDs.(*identity.SPIRE)
	_, watcher := c.WorkloadSVIDs.(identity.Watcher)
	switch by := svidRequest(c.WorkloadSVIDsBy, c.WorkloadSVIDs); {
	case by == SVIDByPID && !watcher:
		return fmt.Errorf("workload SVIDs by pid needs a source that attests processes (identity.SPIRE), not %T", c.WorkloadSVIDs)
	case by == SVIDByID && spire:
		return errors.New("workload SVIDs by id: SPIRE's Delegated Identity API is asked by pid (or, trusting every node with every identity, by selectors)")
	}
	return nil
}
