// Command meshd is the nodemesh control plane: it reads Kubernetes and
// Istio YAML from a directory, translates it per node and serves it over
// ADS (see package xds). Identity comes from its built-in CA (--ca-dir), or
// in SPIRE mode (--spire-socket) from a SPIRE agent: meshd's SVID and the
// bundle from the Workload API, no CA, no secrets served (spire.go). This
// file only reads flags and wires the parts.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/identity/kubetoken"
	"github.com/nodemesh/nodemesh/xds"
)

func main() {
	var (
		cfg         xds.ControlPlaneConfig
		logLevel    slog.Level
		mtls        bool
		xdsInsecure bool
		caDir       string
		svidTTL     time.Duration
		agentCerts  string
		agentsDir   string
		kf          kubeFlags
		spireSocket string
		publisher   *kubetoken.BundlePublisher
	)
	flag.StringVar(&cfg.ConfigDir, "config", "", "directory of Kubernetes and Istio YAML to serve (or --kube)")
	flag.StringVar(&cfg.XDSAddr, "xds-addr", "127.0.0.1:15010", "ADS gRPC listen address")
	flag.StringVar(&cfg.DebugAddr, "debug-addr", "127.0.0.1:15014", "debug HTTP listen address (/debug/syncz, /debug/config_dump, /metrics)")
	flag.DurationVar(&cfg.PollInterval, "poll-interval", 200*time.Millisecond, "how often the config directory is checked for changes")
	flag.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 5*time.Second, "graceful shutdown deadline")
	flag.StringVar(&cfg.TrustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of workload identities")
	flag.TextVar(&logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn, error")
	flag.BoolVar(&mtls, "mtls", true, "workload identity: mTLS per service account in every config, SVIDs over SDS; false serves plaintext configs")
	flag.BoolVar(&xdsInsecure, "xds-insecure", false, "serve ADS without TLS (demos and tests only: any client can claim any node)")
	flag.StringVar(&caDir, "ca-dir", defaultCADir(), "directory of the built-in CA (Istio cacerts layout); a root is generated and persisted there on first start")
	flag.DurationVar(&svidTTL, "svid-ttl", identity.DefaultSVIDTTL, "lifetime of workload SVIDs (renewed at half)")
	flag.StringVar(&agentCerts, "bootstrap-agents", "", "comma-separated node names: write an agent certificate for each under --agent-certs-dir at start (tests and demos; in a cluster agents get theirs with a service account token, see --agent-service-account)")
	flag.StringVar(&agentsDir, "agent-certs-dir", "", "where --bootstrap-agents writes <node>/{cert-chain.pem,key.pem,root-cert.pem}")
	flag.StringVar(&spireSocket, "spire-socket", "", "SPIRE mode: the SPIRE agent's Workload API (unix:///path/api.sock); meshd's SVID (spiffe://<td>/ns/nodemesh-system/sa/meshd) and bundle come from SPIRE, no built-in CA runs and no secrets are served (agents get SVIDs from their own SPIRE agent)")
	flag.BoolVar(&kf.enabled, "kube", false, "read the mesh from the Kubernetes API (in-cluster config unless --kubeconfig) instead of --config")
	flag.StringVar(&kf.kubeconfig, "kubeconfig", "", "kubeconfig file for --kube")
	flag.StringVar(&kf.namespace, "kube-namespace", "", "with --kube: read only this namespace")
	flag.StringVar(&kf.leaseNamespace, "lease-namespace", "", "with --kube: namespace of the Lease electing the replica that writes Events")
	flag.StringVar(&kf.leaseName, "lease-name", "nodemesh-meshd", "with --kube: name of that Lease")
	flag.StringVar(&kf.leaseIdentity, "lease-identity", "", "with --kube: this replica's identity in the election (e.g. the pod name)")
	flag.StringVar(&kf.agentServiceAccount, "agent-service-account", "nodemesh-system/mesh-agent", "with --kube and mTLS: namespace/name of the node agents' ServiceAccount; a pod-bound token of it gets a first agent certificate for the pod's node (checked by TokenReview). Without --kube there is no token bootstrap")
	flag.StringVar(&kf.agentTokenAudience, "agent-token-audience", kubetoken.DefaultAudience, "with --kube and mTLS: audience the agents' projected tokens must be issued for; empty disables token bootstrap")
	flag.StringVar(&kf.rootCertConfigMap, "root-cert-configmap", kubetoken.DefaultRootCertConfigMap, "with --kube, mTLS and --lease-namespace: ConfigMap in the lease namespace where meshd publishes its trust bundle (key root-cert.pem) for the agents to verify it; empty disables")
	perAccountClusters := flag.Bool("envoy-per-account-clusters", false, "with mTLS: copy every upstream cluster per service account instead of selecting the account's certificate by filter state in one cluster (needed for node Envoys older than 1.38, which lack envoy.hashable_string; many times the clusters)")
	flag.Parse()
	kf.explicit = map[string]bool{}
	flag.Visit(func(f *flag.Flag) { kf.explicit[f.Name] = true })
	if (cfg.ConfigDir == "") == !kf.on() || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: meshd (--config DIR | --kube [--kubeconfig FILE]) [--xds-addr ADDR] [--debug-addr ADDR] [--ca-dir DIR | --spire-socket unix:///PATH] [--xds-insecure] [--mtls=false] [--log-level LEVEL]")
		os.Exit(2)
	}
	if err := kf.check(); err != nil {
		fmt.Fprintln(os.Stderr, "meshd:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel}))
	cfg.Logger = log
	if kf.on() {
		cfg.NewFeed = kf.newFeed(log)
	}
	if spireSocket != "" {
		if err := checkSPIREFlags(flag.CommandLine, mtls); err != nil {
			fmt.Fprintln(os.Stderr, "meshd:", err)
			os.Exit(2)
		}
		sec, closer, err := spireSecurity(spireSocket, cfg.TrustDomain)
		if err != nil {
			log.Error("meshd failed to get its SVID from SPIRE", "err", err)
			os.Exit(1)
		}
		defer closer.Close()
		cfg.Security = &xds.ControlPlaneSecurity{SPIRE: sec, InsecureXDS: xdsInsecure}
	} else if mtls {
		ca, err := newCA(caDir, cfg.TrustDomain, svidTTL)
		if err != nil {
			log.Error("meshd failed to start its CA", "dir", caDir, "err", err)
			os.Exit(1)
		}
		cfg.Security = &xds.ControlPlaneSecurity{CA: ca, InsecureXDS: xdsInsecure}
		if kf.on() && !xdsInsecure {
			if publisher, err = kf.agentBootstrap(ca, cfg.Security, log); err != nil {
				log.Error("meshd failed to set up the node agents' bootstrap", "err", err)
				os.Exit(2)
			}
		}
		if err := bootstrapAgents(ca, agentCerts, agentsDir); err != nil {
			log.Error("meshd failed to write agent certificates", "err", err)
			os.Exit(1)
		}
	} else if !xdsInsecure {
		log.Error("--mtls=false needs --xds-insecure: without the CA, ADS cannot be served over TLS")
		os.Exit(2)
	}

	if cfg.Security != nil {
		cfg.Security.PerAccountClusters = *perAccountClusters
	}
	cp, err := xds.StartControlPlane(cfg)
	if err != nil {
		log.Error("meshd failed to start", "err", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var wg sync.WaitGroup
	runCtx, cancelRun := context.WithCancel(ctx)
	if publisher != nil {
		wg.Go(func() { _ = publisher.Run(runCtx) })
	}
	select {
	case <-ctx.Done():
		log.Info("meshd stopping")
	case <-cp.Done():
	}
	cancelRun()
	wg.Wait()
	if err := cp.Stop(); err != nil {
		log.Error("meshd stopped with an error", "err", err)
		os.Exit(1)
	}
	log.Info("meshd stopped")
}

// defaultCADir is under the user cache directory, else the temp directory.
func defaultCADir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "nodemesh", "ca")
	}
	return filepath.Join(os.TempDir(), "nodemesh-ca")
}

func newCA(dir, trustDomain string, ttl time.Duration) (*identity.CA, error) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, fmt.Errorf("trust domain %q: %w", trustDomain, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return identity.NewCA(identity.CAConfig{TrustDomain: td, Dir: dir, SVIDTTL: ttl})
}

// bootstrapAgents writes an agent SVID per node (the test and demo path;
// see xds/secure_controlplane.go for production).
func bootstrapAgents(ca *identity.CA, nodes, dir string) error {
	if nodes == "" {
		return nil
	}
	if dir == "" {
		return fmt.Errorf("--bootstrap-agents needs --agent-certs-dir")
	}
	for _, node := range strings.Split(nodes, ",") {
		svid, err := ca.NewAgentSVID(strings.TrimSpace(node))
		if err != nil {
			return err
		}
		chain, key, err := svid.Marshal()
		if err != nil {
			return err
		}
		nd := filepath.Join(dir, strings.TrimSpace(node))
		if err := os.MkdirAll(nd, 0o700); err != nil {
			return err
		}
		for name, b := range map[string][]byte{
			"cert-chain.pem": chain, "key.pem": key, "root-cert.pem": identity.EncodeCertsPEM(ca.Bundle().X509Authorities()),
		} {
			if err := os.WriteFile(filepath.Join(nd, name), b, 0o600); err != nil {
				return err
			}
		}
	}
	return nil
}
