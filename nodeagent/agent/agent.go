package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/nodemesh/nodemesh/nodeagent"
	"github.com/nodemesh/nodemesh/nodeagent/ads"
	"github.com/nodemesh/nodemesh/nodeagent/envoy"
)

// Agent is one node's agent: kernel data plane, ADS client, Envoy side and
// status, built by New and driven by Run.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	dp      *nodeagent.Dataplane
	conn    *grpc.ClientConn
	client  *ads.Client
	applier *Applier
	svids   *svidManager      // nil without Config.WorkloadSVIDs
	proxy   *envoy.Proxy      // nil without Config.EnvoySocket
	sup     *envoy.Supervisor // nil when there is no Envoy binary
	status  net.Listener      // nil without Config.StatusAddr

	closeOnce sync.Once
	closeErr  error
}

// New checks cfg, opens the node's data plane (adopting the pins of a
// previous run: traffic keeps flowing), dials the control plane lazily,
// writes the Envoy bootstrap and binds the status listener. Run starts the
// work; Close releases what New opened if Run is never called.
func New(cfg Config) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	a := &Agent{cfg: cfg, log: cfg.Logger.With("node", cfg.Node)}
	if err := a.open(); err != nil {
		_ = a.Close()
		return nil, err
	}
	return a, nil
}

func (a *Agent) open() error {
	cfg := a.cfg
	dp, err := nodeagent.Open(nodeagent.Config{Node: cfg.Node, CgroupPath: cfg.CgroupPath, PinDir: cfg.PinDir, Logger: cfg.Logger})
	if err != nil {
		return err
	}
	a.dp = dp
	if a.conn, err = ads.Dial(cfg.ControlPlane, cfg.Backoff, cfg.DialOptions...); err != nil {
		return err
	}
	a.applier = NewApplier(dp, ads.StateConfig{Node: cfg.Node, ProxyIP: cfg.NodeIP, PodCgroup: cfg.PodCgroup}, cfg.NodeIP, a.log)
	var applier ads.Applier = a.applier
	if cfg.WorkloadSVIDs != nil {
		a.svids = newSVIDManager(svidManagerConfig{Node: cfg.Node, Source: cfg.WorkloadSVIDs, By: cfg.WorkloadSVIDsBy, PodCgroup: cfg.PodCgroup, Dir: cfg.WorkloadCertsDir,
			Retry: cfg.WorkloadSVIDRetry, BundleRefresh: cfg.WorkloadBundleRefresh, Logger: a.log})
		applier = ads.ApplierFunc(func(ctx context.Context, res *ads.Resources) error {
			if err := a.applier.Apply(ctx, res); err != nil {
				return err
			}
			a.svids.SetWorkloads(res.Workloads)
			return nil
		})
	}
	a.client, err = ads.New(ads.Config{Node: cfg.Node, Conn: a.conn, Applier: applier, Logger: cfg.Logger, Backoff: cfg.Backoff})
	if err != nil {
		return err
	}
	if err := a.openEnvoy(); err != nil {
		return err
	}
	if cfg.StatusAddr != "" {
		if a.status, err = net.Listen("tcp", cfg.StatusAddr); err != nil {
			return fmt.Errorf("status listener: %w", err)
		}
	}
	return nil
}

// openEnvoy writes the bootstrap and builds the xDS proxy and, when the
// binary exists, the supervisor.
func (a *Agent) openEnvoy() error {
	cfg := a.cfg
	if cfg.EnvoySocket == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(cfg.EnvoySocket), 0o700); err != nil {
		return fmt.Errorf("creating envoy socket dir: %w", err)
	}
	bc := cfg.EnvoyBootstrap
	bc.Node, bc.XDSSocket = cfg.Node, cfg.EnvoySocket
	if err := envoy.WriteBootstrap(cfg.EnvoyBootstrapPath, bc); err != nil {
		return err
	}
	pc := envoy.ProxyConfig{Socket: cfg.EnvoySocket, Node: cfg.Node, Upstream: a.conn, Logger: cfg.Logger}
	if cfg.LocalSDS {
		pc.Secrets = a.svids
	}
	proxy, err := envoy.NewProxy(pc)
	if err != nil {
		return err
	}
	a.proxy = proxy
	if _, err := exec.LookPath(cfg.EnvoyBinary); err != nil {
		a.log.Warn("envoy not found: not starting it; L7 traffic management is off on this node, the xds socket stays up for an envoy started by other means",
			"binary", cfg.EnvoyBinary, "socket", cfg.EnvoySocket, "error", err)
		return nil
	}
	a.sup, err = envoy.NewSupervisor(envoy.SupervisorConfig{Binary: cfg.EnvoyBinary, Bootstrap: cfg.EnvoyBootstrapPath, Logger: cfg.Logger})
	return err
}

// Run serves until ctx is done, then stops every part and closes the data
// plane without uninstalling it: pinned programs and maps keep forwarding
// with the last applied state. It returns an error only when a part could
// not run at all.
func (a *Agent) Run(ctx context.Context) error {
	defer a.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 5)
	part := func(name string, run func(context.Context) error) {
		wg.Go(func() {
			if err := run(ctx); err != nil && ctx.Err() == nil {
				errs <- fmt.Errorf("%s: %w", name, err)
			}
		})
	}
	part("ads client", a.client.Run)
	if a.svids != nil {
		part("workload svids", a.svids.Run)
	}
	if a.proxy != nil {
		part("envoy xds proxy", a.proxy.Run)
	}
	if a.sup != nil {
		part("envoy supervisor", func(ctx context.Context) error {
			err := a.sup.Run(ctx)
			if errors.Is(err, envoy.ErrEnvoyNotFound) {
				// Removed since New looked: the kernel half carries on.
				a.log.Warn("envoy not found: not starting it", "error", err)
				return nil
			}
			return err
		})
	}
	if a.status != nil {
		srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 5 * time.Second}
		part("status server", func(ctx context.Context) error {
			go func() {
				<-ctx.Done()
				sctx, c := context.WithTimeout(context.Background(), time.Second)
				defer c()
				_ = srv.Shutdown(sctx)
			}()
			if err := srv.Serve(a.status); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	a.log.Info("node agent running", "control_plane", a.cfg.ControlPlane, "cgroup", a.cfg.CgroupPath,
		"envoy_socket", a.cfg.EnvoySocket, "status", a.StatusAddr())
	var err error
	select {
	case <-ctx.Done():
	case err = <-errs:
		a.log.Error("node agent part failed; stopping", "error", err)
	}
	cancel()
	wg.Wait()
	a.log.Info("node agent stopped; pinned programs and maps stay attached")
	return err
}

// Close releases what New opened: the control plane connection and the
// data plane handle (pins stay). Run calls it on return.
func (a *Agent) Close() error {
	a.closeOnce.Do(func() {
		var errs []error
		if a.status != nil {
			_ = a.status.Close()
		}
		if a.conn != nil {
			errs = append(errs, a.conn.Close())
		}
		if a.dp != nil {
			errs = append(errs, a.dp.Close())
		}
		a.closeErr = errors.Join(errs...)
	})
	return a.closeErr
}

// StatusAddr is the bound status address ("" without one).
func (a *Agent) StatusAddr() string {
	if a.status == nil {
		return ""
	}
	return a.status.Addr().String()
}

// Ready is nil once the first full resource set is in the kernel.
func (a *Agent) Ready() error { return a.client.Ready() }

// Dump reads the kernel maps back into a State.
func (a *Agent) Dump() (nodeagent.State, error) { return a.dp.Dump() }
