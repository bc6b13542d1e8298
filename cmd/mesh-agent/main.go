// Command mesh-agent is the nodemesh node agent. It runs in one of two modes:
//
//   - --control-plane ADDR: the full agent (nodeagent/agent): one ADS stream
//     to meshd for the dataplane resources, applied to the node's eBPF maps
//     (ACK after the maps are written), the shared Envoy's xDS proxied over
//     the same connection (--envoy-socket), status over HTTP (--status-addr),
//     and with --workload-certs-dir the SVIDs of the node's service accounts
//     (from meshd's CA) as files for proxyless gRPC workloads.
//   - --state FILE: standalone; programs the maps from a YAML file of
//     nodeagent.State and re-applies it whenever the file changes.
//
// In control-plane mode the agent proves its node to meshd with an mTLS
// certificate: --xds-cert-dir DIR (files, re-read when they change),
// --xds-token FILE with --xds-root-cert FILE (the certificate is
// bootstrapped through meshd with the bearer token and renewed at half its
// lifetime, identity.AgentCert), or, in SPIRE mode, --spire-socket: its own
// SVID from the node's SPIRE agent (spiffe://<td>/ns/nodemesh-system/sa/
// mesh-agent, its entry's first DNS name the node name; see
// identity/agent.go), renewed by SPIRE, with --spire-admin-socket for the
// SVIDs of the node's service accounts through SPIRE's Delegated Identity
// API, which the agent serves to the node's Envoy over local SDS (meshd
// serves no secrets then). It asks SPIRE for a service account's SVID by
// the PID of a live process of one of its pods on this node, so SPIRE's
// agent attests that process itself and issues only what a pod running
// here may have (--spire-workload-selectors, asking by k8s:ns:<ns> and
// k8s:sa:<sa> instead, trusts every node with every identity). None of them:
// plaintext, for meshd --xds-insecure.
//
// SIGTERM/SIGINT exit and leave the pinned programs and maps in place, so
// traffic keeps flowing; --uninstall removes them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/nodeagent"
	"github.com/nodemesh/nodemesh/nodeagent/agent"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "mesh-agent:", err)
		os.Exit(1)
	}
}

func run() error {
	node := flag.String("node", "", "node name (required)")
	controlPlane := flag.String("control-plane", "", "meshd gRPC address host:port (full agent mode)")
	state := flag.String("state", "", "YAML file with the desired dataplane state (standalone mode)")
	cgroup := flag.String("cgroup", "", "cgroup v2 directory to attach to; local pods' cgroups are found below it by pod UID where the kubelet puts them (kubepods.slice/... with the systemd driver, kubepods/... with cgroupfs), else at <cgroup>/<namespace>_<pod> or <cgroup>/<pod> (default: the cgroup v2 mount, i.e. every process of the node)")
	pinDir := flag.String("pin-dir", "", "bpffs directory for pins (default "+nodeagent.DefaultPinRoot+"/<node>)")
	nodeIP := flag.String("node-ip", "", "the node's IP as pods see it: node proxy address and host workload (control-plane mode)")
	envoySocket := flag.String("envoy-socket", "", "unix socket of the local xDS proxy for the node's Envoy; empty: no Envoy side (control-plane mode)")
	envoyBootstrap := flag.String("envoy-bootstrap", "", "where to write the Envoy bootstrap (default: envoy-bootstrap.json next to --envoy-socket)")
	envoyBinary := flag.String("envoy", "envoy", "Envoy binary, started when found (control-plane mode)")
	statusAddr := flag.String("status-addr", "", "HTTP status address host:port, e.g. 127.0.0.1:15020 (control-plane mode)")
	interval := flag.Duration("interval", time.Second, "how often the state file is checked for changes (standalone mode)")
	uninstall := flag.Bool("uninstall", false, "detach the programs, remove the pins and exit")
	var xf xdsFlags
	flag.StringVar(&xf.certDir, "xds-cert-dir", "", "directory with the agent's cert-chain.pem, key.pem and root-cert.pem for mTLS to meshd, re-read when they change (control-plane mode); without it, --xds-token and --spire-socket: plaintext, for meshd --xds-insecure only")
	flag.StringVar(&xf.token, "xds-token", "", "file with a bearer token (e.g. a projected service account token, re-read for every request): the agent gets its certificate from meshd with it and renews it (control-plane mode; needs --xds-root-cert)")
	flag.StringVar(&xf.rootCert, "xds-root-cert", "", "PEM file with the roots that verify meshd, re-read when it changes (with --xds-token)")
	workloadCerts := flag.String("workload-certs-dir", "", "write the SVIDs of the node's service accounts, from meshd's CA (or SPIRE), to DIR/<namespace>/<serviceaccount>/{cert-chain,key,root-cert}.pem for gRPC's file_watcher certificate provider (control-plane mode; needs --xds-cert-dir, --xds-token or --spire-admin-socket)")
	var sf spireFlags
	flag.StringVar(&sf.socket, "spire-socket", "", "SPIRE mode: the local SPIRE agent's Workload API (unix:///path/api.sock) for this agent's own SVID (mTLS to meshd; must be spiffe://<td>/ns/nodemesh-system/sa/mesh-agent with --node as the entry's first DNS name); exclusive with --xds-cert-dir and --xds-token")
	flag.StringVar(&sf.adminSocket, "spire-admin-socket", "", "SPIRE mode: the SPIRE agent's admin socket (unix:///path/admin.sock; Delegated Identity API) for the SVIDs of this node's workloads, each asked for by the PID of a live process of one of its pods on this node (found in the pod's cgroup under --cgroup), which SPIRE attests itself (k8s workload attestor); the entries must match the pods (e.g. spire-controller-manager's per-pod entries parented to this node's SPIRE agent)")
	flag.BoolVar(&sf.bySelectors, "spire-workload-selectors", false, "INSECURE opt-in (SPIRE mode): ask SPIRE for a service account's SVID by the selectors k8s:ns:<ns> and k8s:sa:<sa> instead of by a process of one of its pods on this node; SPIRE then checks nothing about the node, so with entries that match on every node every node's agent can get every service account's SVID: trusts every node with every identity")
	var logLevel slog.Level
	flag.TextVar(&logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn, error")
	trustDomain := flag.String("trust-domain", "cluster.local", "SPIFFE trust domain of meshd's identity")
	flag.Parse()
	modes := 0
	for _, set := range []bool{*controlPlane != "", *state != "", *uninstall} {
		if set {
			modes++
		}
	}
	if *node == "" || modes != 1 {
		flag.Usage()
		return errors.New("--node and exactly one of --control-plane, --state or --uninstall are required")
	}
	if xf.set() && *controlPlane == "" {
		return errors.New("--xds-cert-dir, --xds-token and --xds-root-cert need --control-plane")
	}
	if err := sf.check(xf.set(), *envoySocket); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel}))
	if *cgroup == "" {
		if *uninstall {
			// Open (below) attaches to the cgroup it is given before
			// Uninstall detaches: the default, the whole hierarchy, would
			// catch every process of the machine for that moment.
			return errors.New("--uninstall needs --cgroup: the cgroup the agent was attached to")
		}
		mount, err := nodeagent.CgroupV2Mount()
		if err != nil {
			return err
		}
		*cgroup = mount
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if *controlPlane != "" {
		var ip netip.Addr
		if *nodeIP != "" {
			var err error
			if ip, err = netip.ParseAddr(*nodeIP); err != nil {
				return fmt.Errorf("--node-ip: %w", err)
			}
		}
		var creds xdsCreds // the agent's certificate from files or meshd; zero in SPIRE mode
		var dial []grpc.DialOption
		var workloads identity.Source
		if sf.on() {
			sp, spireDial, err := sf.spire(*node, *trustDomain)
			if err != nil {
				return err
			}
			defer sp.Close()
			dial = append(dial, spireDial)
			workloads = sf.workloadSVIDs(sp, log)
		} else {
			var err error
			if creds, err = xdsCredentials(xf, *node, *controlPlane, *trustDomain, log); err != nil {
				return err
			}
			if creds.dial != nil {
				dial = append(dial, creds.dial)
			}
		}
		cfg := agent.Config{Node: *node, ControlPlane: *controlPlane, DialOptions: dial, CgroupPath: *cgroup, PinDir: *pinDir,
			NodeIP: ip, EnvoySocket: *envoySocket, EnvoyBootstrapPath: *envoyBootstrap, EnvoyBinary: *envoyBinary,
			StatusAddr: *statusAddr, XDSCredentials: creds.Status(), WorkloadSVIDs: workloads, WorkloadSVIDsBy: sf.svidRequest(log),
			LocalSDS: sf.localSDS(*envoySocket), Logger: log}
		if *workloadCerts != "" && sf.on() {
			if err := sf.workloadCertsDir(&cfg, *workloadCerts); err != nil {
				return err
			}
		} else if *workloadCerts != "" {
			closeConn, err := withWorkloadCerts(&cfg, *workloadCerts, creds, *trustDomain)
			if err != nil {
				return err
			}
			defer closeConn()
		}
		a, err := agent.New(cfg)
		if err != nil {
			return err
		}
		creds.Start(ctx, 10*time.Second, log)
		return a.Run(ctx)
	}

	dp, err := nodeagent.Open(nodeagent.Config{Node: *node, CgroupPath: *cgroup, PinDir: *pinDir, Logger: log})
	if err != nil {
		return err
	}
	if *uninstall {
		return dp.Uninstall()
	}
	defer dp.Close()
	err = nodeagent.WatchStateFile(ctx, nodeagent.WatchConfig{Path: *state, Interval: *interval, Logger: log}, dp)
	log.Info("exiting; pinned programs and maps stay attached")
	return err
}
