package envoy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"google.golang.org/grpc"
)

// NodeProxyConfig configures the whole of the node's Envoy side: bootstrap
// file, local xDS proxy and process supervisor.
type NodeProxyConfig struct {
	// Node is the node name (Envoy's node.id).
	Node string
	// Dir holds the xDS socket (xds.sock) and the bootstrap
	// (envoy-bootstrap.json); created 0700 if missing.
	Dir string
	// Upstream is the agent's connection to the control plane (ads.Dial).
	Upstream grpc.ClientConnInterface
	// Bootstrap overrides; Node and XDSSocket are filled in.
	Bootstrap BootstrapConfig
	// Supervisor overrides; Bootstrap is filled in.
	Supervisor SupervisorConfig
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// SocketPath is the xDS socket Envoy connects to: Dir/xds.sock.
func (c NodeProxyConfig) SocketPath() string { return filepath.Join(c.Dir, "xds.sock") }

// BootstrapPath is the bootstrap file passed to Envoy: Dir/envoy-bootstrap.json.
func (c NodeProxyConfig) BootstrapPath() string { return filepath.Join(c.Dir, "envoy-bootstrap.json") }

// Validate reports what is missing in c.
func (c NodeProxyConfig) Validate() error {
	var errs []error
	if c.Node == "" {
		errs = append(errs, errors.New("node is required"))
	}
	if c.Dir == "" || !filepath.IsAbs(c.Dir) {
		errs = append(errs, fmt.Errorf("dir %q must be an absolute path", c.Dir))
	}
	if c.Upstream == nil {
		errs = append(errs, errors.New("upstream connection is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("node proxy config: %w", err)
	}
	return nil
}

// RunNodeProxy writes the bootstrap, serves the xDS socket and keeps Envoy
// running until ctx is done. Without an Envoy binary it logs so and keeps
// only the xDS socket (an Envoy started later by other means can use it);
// the kernel half is unaffected either way.
func RunNodeProxy(ctx context.Context, cfg NodeProxyConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return fmt.Errorf("creating node proxy dir %s: %w", cfg.Dir, err)
	}
	bc := cfg.Bootstrap
	bc.Node, bc.XDSSocket = cfg.Node, cfg.SocketPath()
	if err := WriteBootstrap(cfg.BootstrapPath(), bc); err != nil {
		return err
	}
	proxy, err := NewProxy(ProxyConfig{Socket: cfg.SocketPath(), Node: cfg.Node, Upstream: cfg.Upstream, Logger: log})
	if err != nil {
		return err
	}
	sc := cfg.Supervisor
	sc.Bootstrap = cfg.BootstrapPath()
	if sc.Logger == nil {
		sc.Logger = log
	}
	sup, err := NewSupervisor(sc)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var proxyErr error
	wg.Go(func() {
		if proxyErr = proxy.Run(ctx); proxyErr != nil {
			cancel()
		}
	})
	supErr := sup.Run(ctx)
	if errors.Is(supErr, ErrEnvoyNotFound) {
		log.Warn("envoy not on PATH: L7 traffic management is off on this node; the xds socket stays up", "error", supErr)
		supErr = nil
		<-ctx.Done()
	}
	cancel()
	wg.Wait()
	return errors.Join(proxyErr, supErr)
}
