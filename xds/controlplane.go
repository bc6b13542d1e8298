package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/translate"
	"github.com/nodemesh/nodemesh/translate/dataplane"
)

// PrepareFunc readies a store snapshot for translation and returns the
// function that builds one proxy's configuration from it; the work shared
// by all proxies is done once per snapshot. The default is
// translate.PrepareNext(previous, snap).Translate.
type PrepareFunc func(*config.Snapshot) func(translate.Proxy) *translate.NodeConfig

// DataplanePrepareFunc readies a store snapshot for dataplane translation
// and returns the function that builds one node's dataplane resources.
type DataplanePrepareFunc func(*config.Snapshot) func(node string) ([]TypedResources, []config.Diagnostic)

// PreparedDataplane is the DataplanePrepareFunc of translate/dataplane.
func PreparedDataplane(opts dataplane.Options) DataplanePrepareFunc {
	return func(snap *config.Snapshot) func(string) ([]TypedResources, []config.Diagnostic) {
		m := dataplane.Prepare(snap, opts)
		return func(node string) ([]TypedResources, []config.Diagnostic) {
			r := m.Translate(node)
			return []TypedResources{
				typed(dataplanev1.NamespaceListenerType, r.Listeners),
				typed(dataplanev1.WorkloadType, r.Workloads),
				typed(dataplanev1.ServiceType, r.Services),
				typed(dataplanev1.PolicyType, r.Policies),
			}, r.Diagnostics
		}
	}
}

func typed[M proto.Message](typeURL string, items []M) TypedResources {
	t := TypedResources{TypeURL: typeURL, Names: make([]string, len(items)), Items: make([]types.Resource, len(items))}
	for i, m := range items {
		t.Names[i], t.Items[i] = dataplane.ResourceName(m), m
	}
	return t
}

// StoreSource adapts a config.Store and the translators to a Source.
// prepare defaults to translate.PrepareNext from the previous generation's
// Mesh (an endpoint-only change reuses listeners, routes and clusters), and
// its views then check NodeConfigs with that Mesh's Check (shared resources
// are validated once per Mesh); dp may be nil (no dataplane resources).
// Views are cached per store version, so all proxies translated from one
// version share one prepared model.
func StoreSource(store *config.Store, prepare PrepareFunc, dp DataplanePrepareFunc) Source {
	return &storeSource{store: store, prepare: prepare, dp: dp, changed: store.Watch()}
}

type storeSource struct {
	store   *config.Store
	prepare PrepareFunc // nil: translate.PrepareNext
	dp      DataplanePrepareFunc
	changed <-chan struct{}

	mu   sync.Mutex
	last *storeView
	mesh *translate.Mesh // newest prepared Mesh, for PrepareNext
	gen  uint64          // its store version
}

func (s *storeSource) Current() View {
	snap := s.store.Snapshot()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last == nil || s.last.snap.Version() != snap.Version() {
		s.last = &storeView{src: s, snap: snap}
	}
	return s.last
}

func (s *storeSource) Changed() <-chan struct{} { return s.changed }

// prepareMesh prepares snap from the newest Mesh prepared so far.
func (s *storeSource) prepareMesh(snap *config.Snapshot) *translate.Mesh {
	s.mu.Lock()
	prev := s.mesh
	s.mu.Unlock()
	m := translate.PrepareNext(prev, snap)
	s.mu.Lock()
	if s.mesh == nil || snap.Version() > s.gen {
		s.mesh, s.gen = m, snap.Version()
	}
	s.mu.Unlock()
	return m
}

// storeView prepares its snapshot on first use.
type storeView struct {
	src    *storeSource
	snap   *config.Snapshot
	once   sync.Once
	mesh   *translate.Mesh // with the default prepare
	fn     func(translate.Proxy) *translate.NodeConfig
	dpOnce sync.Once
	dpFn   func(string) ([]TypedResources, []config.Diagnostic)
}

func (v *storeView) Generation() uint64 { return v.snap.Version() }

func (v *storeView) prepared() {
	v.once.Do(func() {
		if v.src.prepare != nil {
			v.fn = v.src.prepare(v.snap)
			return
		}
		v.mesh = v.src.prepareMesh(v.snap)
		v.fn = v.mesh.Translate
	})
}

func (v *storeView) Translate(p translate.Proxy) *translate.NodeConfig {
	v.prepared()
	return v.fn(p)
}

// Check implements CheckView: the prepared Mesh's Check with the default
// prepare, else translate.Check.
func (v *storeView) Check(nc *translate.NodeConfig) error {
	v.prepared()
	if v.mesh != nil {
		return v.mesh.Check(nc)
	}
	return translate.Check(nc)
}

// Dataplane implements DataplaneView.
func (v *storeView) Dataplane(node string) ([]TypedResources, []config.Diagnostic) {
	if v.src.dp == nil {
		return nil, nil
	}
	v.dpOnce.Do(func() { v.dpFn = v.src.dp(v.snap) })
	return v.dpFn(node)
}

// Feed keeps the store filled from a source other than a directory: the
// Kubernetes API (config/kube).
type Feed interface {
	Run(ctx context.Context) error
	// WaitForSync returns once a complete first load is in the store, so
	// that no client is ever served an empty mesh at start.
	WaitForSync(ctx context.Context) error
	Diagnostics() []config.Diagnostic
}

// ControlPlaneConfig configures meshd: a directory of YAML (or a Feed)
// served over ADS.
type ControlPlaneConfig struct {
	// ConfigDir holds the Kubernetes and Istio YAML to serve. Required
	// unless NewFeed is set.
	ConfigDir string
	// NewFeed, when set, replaces the file source: it returns the feed
	// that fills the store. meshd serves once the feed has synced.
	NewFeed func(*config.Store) (Feed, error)
	// SyncTimeout bounds the wait for the feed's first sync (default 2m).
	SyncTimeout time.Duration
	// XDSAddr is the ADS gRPC listen address (default 127.0.0.1:15010;
	// port 0 picks a free port, see ControlPlane.XDSAddr).
	XDSAddr string
	// DebugAddr is the debug HTTP listen address (default 127.0.0.1:15014).
	DebugAddr string
	// PollInterval is how often the directory is checked (default 200ms).
	PollInterval time.Duration
	// Prepare defaults to translate.PrepareNext (from the previous
	// generation); Check to that Mesh's Check (translate.Check with a
	// custom Prepare); Dataplane to translate/dataplane with TrustDomain.
	// Tests set them to fakes.
	Prepare   PrepareFunc
	Check     func(*translate.NodeConfig) error
	Dataplane DataplanePrepareFunc
	// TrustDomain of workload SPIFFE IDs (default cluster.local).
	TrustDomain string
	// ShutdownTimeout bounds the graceful stop (default 5s).
	ShutdownTimeout time.Duration
	// Security turns on workload identity, SDS and ADS over mTLS (see
	// secure_controlplane.go); nil serves plaintext ADS without secrets.
	Security *ControlPlaneSecurity
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Validate reports a configuration meshd cannot start with.
func (c *ControlPlaneConfig) Validate() error {
	var errs []error
	if (c.ConfigDir == "") == (c.NewFeed == nil) {
		errs = append(errs, errors.New("control plane: exactly one of ConfigDir and NewFeed is required"))
	}
	if c.PollInterval < 0 || c.ShutdownTimeout < 0 {
		errs = append(errs, errors.New("control plane: negative PollInterval or ShutdownTimeout"))
	}
	return errors.Join(errs...)
}

// ControlPlane is a running meshd: file source -> store -> xds Server, on
// a gRPC listener and a debug HTTP listener.
type ControlPlane struct {
	cfg     ControlPlaneConfig
	log     *slog.Logger
	files   *config.FileSource // nil with a Feed
	feed    Feed               // nil with ConfigDir
	ctx     context.Context
	xds     *Server
	grpc    *grpc.Server
	http    *http.Server
	xdsLis  net.Listener
	httpLis net.Listener
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	errOnce sync.Once
	err     error
	done    chan struct{}

	secureSrc *SecureSource         // nil without Security
	certs     *identity.CertService // Istio's certificate API; nil without TLS
	// CreateCertificate answers: issued, refused (secure_controlplane.go).
	certsIssued, certsRefused atomic.Uint64
	guard                     *ADSGuard
}

// StartControlPlane loads ConfigDir once (a load with errors is logged and
// served from an empty store until fixed), opens the listeners and starts
// serving. Stop it with Stop.
func StartControlPlane(cfg ControlPlaneConfig) (_ *ControlPlane, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.XDSAddr == "" {
		cfg.XDSAddr = "127.0.0.1:15010"
	}
	if cfg.DebugAddr == "" {
		cfg.DebugAddr = "127.0.0.1:15014"
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Dataplane == nil {
		cfg.Dataplane = PreparedDataplane(dataplane.Options{TrustDomain: cfg.TrustDomain})
	}
	cp := &ControlPlane{cfg: cfg, log: cfg.Logger, done: make(chan struct{})}
	cp.ctx, cp.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil { // stop a feed started before the failure
			cp.cancel()
			cp.wg.Wait()
		}
	}()
	store := config.NewStore()
	diagnostics, err := cp.startFeed(store)
	if err != nil {
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	src, grpcOpts, err := cp.secure(StoreSource(store, cfg.Prepare, cfg.Dataplane))
	if err != nil {
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	src = NewAuthzSource(src, cp.authzOptions()) // after secure: policies on the mTLS chains (authz.go)
	cp.xds, err = NewServer(Config{
		Source:            src,
		Check:             cfg.Check,
		SourceDiagnostics: diagnostics,
		Logger:            cfg.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	if cp.xdsLis, err = net.Listen("tcp", cfg.XDSAddr); err != nil {
		return nil, fmt.Errorf("start control plane: listen xds: %w", err)
	}
	if cp.httpLis, err = net.Listen("tcp", cfg.DebugAddr); err != nil {
		cp.xdsLis.Close()
		return nil, fmt.Errorf("start control plane: listen debug: %w", err)
	}
	cp.grpc = grpc.NewServer(append([]grpc.ServerOption{
		// Clients may ping every 10s; the server pings idle connections so
		// that a vanished node's streams (and status) go within a minute.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	}, grpcOpts...)...)
	cp.xds.Register(cp.grpc)
	if cp.certs != nil {
		cp.certs.Register(cp.grpc)
	}
	cp.http = &http.Server{Handler: cp.debugMux(), ReadHeaderTimeout: 5 * time.Second}
	cp.run()
	cp.log.Info("meshd serving", "xds", cp.XDSAddr(), "debug", cp.DebugAddr(), "config", cfg.ConfigDir)
	return cp, nil
}

// startFeed fills the store before anything is served: the first load of
// ConfigDir (a load with errors is served from an empty store until fixed),
// or a Feed run until its first sync.
func (cp *ControlPlane) startFeed(store *config.Store) (func() []config.Diagnostic, error) {
	if cp.cfg.NewFeed == nil {
		files, err := config.NewFileSource(config.FileSourceConfig{
			Dir: cp.cfg.ConfigDir, Store: store, Interval: cp.cfg.PollInterval, OnStatus: cp.logFileStatus,
		})
		if err != nil {
			return nil, err
		}
		cp.files = files
		_ = files.Sync() // errors are in Status
		return func() []config.Diagnostic { return files.Status().Diagnostics }, nil
	}
	feed, err := cp.cfg.NewFeed(store)
	if err != nil {
		return nil, err
	}
	cp.feed = feed
	failed := make(chan error, 1)
	cp.wg.Go(func() {
		if err := feed.Run(cp.ctx); err != nil && cp.ctx.Err() == nil {
			failed <- err
			cp.fail(err)
		}
	})
	timeout := cp.cfg.SyncTimeout
	if timeout == 0 {
		timeout = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(cp.ctx, timeout)
	defer cancel()
	synced := make(chan error, 1)
	go func() { synced <- feed.WaitForSync(ctx) }()
	select {
	case err := <-failed:
		return nil, fmt.Errorf("config feed: %w", err)
	case err := <-synced:
		if err != nil {
			return nil, fmt.Errorf("config feed did not sync: %w", err)
		}
	}
	return feed.Diagnostics, nil
}

func (cp *ControlPlane) run() {
	ctx := cp.ctx
	for _, f := range []func() error{
		func() error {
			if cp.files == nil {
				return nil // the feed runs since startFeed
			}
			return cp.files.Run(ctx)
		},
		func() error { return cp.xds.Run(ctx) },
		func() error { return cp.runSecure(ctx) },
		func() error { return cp.grpc.Serve(cp.xdsLis) },
		func() error {
			if err := cp.http.Serve(cp.httpLis); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	} {
		cp.wg.Go(func() {
			if err := f(); err != nil {
				cp.fail(err)
			}
		})
	}
}

// fail records the first error of a part and closes Done; the owner then
// calls Stop.
func (cp *ControlPlane) fail(err error) {
	cp.errOnce.Do(func() {
		cp.err = err
		cp.log.Error("meshd part failed; stopping", "err", err)
		close(cp.done)
	})
}

// Done is closed when a part of the control plane failed; Stop it then.
func (cp *ControlPlane) Done() <-chan struct{} { return cp.done }

// XDSAddr is the address the ADS server listens on.
func (cp *ControlPlane) XDSAddr() string { return cp.xdsLis.Addr().String() }

// DebugAddr is the address the debug HTTP server listens on.
func (cp *ControlPlane) DebugAddr() string { return cp.httpLis.Addr().String() }

// Server is the xDS server, for status.
func (cp *ControlPlane) Server() *Server { return cp.xds }

// Files is the file source, for status.
func (cp *ControlPlane) Files() *config.FileSource { return cp.files }

// Stop stops gracefully: no new streams, open streams ended, debug server
// shut down, all within ShutdownTimeout (then forcibly). It returns the
// error that made a part fail, if any.
func (cp *ControlPlane) Stop() error {
	stopped := make(chan struct{})
	go func() { cp.grpc.GracefulStop(); close(stopped) }()
	cp.xds.Shutdown() // ADS streams never end by themselves
	timer := time.NewTimer(cp.cfg.ShutdownTimeout)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		cp.log.Warn("graceful stop timed out; closing connections")
		cp.grpc.Stop()
		<-stopped
	}
	ctx, cancel := context.WithTimeout(context.Background(), cp.cfg.ShutdownTimeout)
	defer cancel()
	herr := cp.http.Shutdown(ctx)
	cp.cancel()
	cp.wg.Wait()
	if cp.err != nil {
		return cp.err
	}
	if herr != nil {
		return fmt.Errorf("stop debug server: %w", herr)
	}
	return nil
}

func (cp *ControlPlane) debugMux() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", cp.xds.DebugHandler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /debug/security", cp.securityMetrics)
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		cp.xds.metrics.write(w)
		cp.securityMetrics(w, nil) // refusals and certificates, one scrape
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if cp.files == nil { // a Feed: serving started only after it synced
			fmt.Fprintln(w, "ok: config feed synced")
			return
		}
		st := cp.files.Status()
		if st.LastApplied.IsZero() {
			msg := "no configuration loaded yet"
			if st.Err != nil {
				msg += ": " + st.Err.Error()
			}
			http.Error(w, msg, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "ok: config version %d, %d objects from %d files\n", st.Version, st.Objects, st.Files)
	})
	return mux
}

func (cp *ControlPlane) logFileStatus(st config.FileStatus) {
	if st.Err != nil {
		cp.log.Error("config load refused; serving the last good config", "dir", cp.cfg.ConfigDir, "err", st.Err)
		return
	}
	cp.log.Info("config loaded", "dir", cp.cfg.ConfigDir, "files", st.Files, "objects", st.Objects, "version", st.Version)
	for _, d := range st.Diagnostics {
		level := slog.LevelInfo
		switch d.Severity {
		case config.SeverityWarning:
			level = slog.LevelWarn
		case config.SeverityError:
			level = slog.LevelError
		}
		cp.log.Log(context.Background(), level, "config diagnostic", "diagnostic", d.String())
	}
}
