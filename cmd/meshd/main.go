// Command meshd is the nodemesh control plane: it reads Kubernetes and
// Istio YAML from a directory, translates it per node and serves it over
// ADS (see package xds). This file only reads flags and wires the parts.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nodemesh/nodemesh/xds"
)

func main() {
	var (
		cfg      xds.ControlPlaneConfig
		logLevel slog.Level
	)
	flag.StringVar(&cfg.ConfigDir, "config", "", "directory of Kubernetes and Istio YAML to serve (required)")
	flag.StringVar(&cfg.XDSAddr, "xds-addr", "127.0.0.1:15010", "ADS gRPC listen address")
	flag.StringVar(&cfg.DebugAddr, "debug-addr", "127.0.0.1:15014", "debug HTTP listen address (/debug/syncz, /debug/config_dump, /metrics)")
	flag.DurationVar(&cfg.PollInterval, "poll-interval", 200*time.Millisecond, "how often the config directory is checked for changes")
	flag.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 5*time.Second, "graceful shutdown deadline")
	flag.StringVar(&cfg.TrustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of workload identities")
	flag.TextVar(&logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn, error")
	flag.Parse()
	if cfg.ConfigDir == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: meshd --config DIR [--xds-addr ADDR] [--debug-addr ADDR] [--log-level LEVEL]")
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel}))
	cfg.Logger = log

	cp, err := xds.StartControlPlane(cfg)
	if err != nil {
		log.Error("meshd failed to start", "err", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	select {
	case <-ctx.Done():
		log.Info("meshd stopping")
	case <-cp.Done():
	}
	if err := cp.Stop(); err != nil {
		log.Error("meshd stopped with an error", "err", err)
		os.Exit(1)
	}
	log.Info("meshd stopped")
}
