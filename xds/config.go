package xds

import (
	"errors"
	"log/slog"
	"runtime"
	"time"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
)

// Source is where the server gets configuration: the config store and the
// translator behind one narrow interface (meshd wires config.Store and
// translate.Translate into it; tests use a fake).
type Source interface {
	// Current returns a consistent, immutable view of the configuration.
	Current() View
	// Changed signals after the configuration changed (coalesced: one
	// signal may stand for many changes).
	Changed() <-chan struct{}
}

// View is one immutable generation of the configuration.
type View interface {
	// Generation increases with every change; the server never replaces a
	// node's snapshot with one from an older generation.
	Generation() uint64
	// Translate builds everything proxy gets. It must be safe to call
	// concurrently.
	Translate(proxy translate.Proxy) *translate.NodeConfig
}

// DataplaneView is implemented by a View that also builds the dataplane
// resources (api/dataplane/v1) a node agent programs into its kernel. They
// are served to SharedEnvoy nodes: a node's Envoy and its agent use the
// same node id, and each subscribes to its own types.
type DataplaneView interface {
	Dataplane(node string) ([]TypedResources, []config.Diagnostic)
}

// CheckView is implemented by a View that checks the NodeConfigs it
// translated, cheaper than a check that knows nothing of how they were
// built (translate.Mesh.Check validates shared resources once).
type CheckView interface {
	Check(nc *translate.NodeConfig) error
}

// Config configures a Server. The zero value of every field but Source is
// useful.
type Config struct {
	Source Source
	// Check validates a NodeConfig before it is served (translate.Check in
	// meshd); a failing config is not served and the node keeps its last
	// good snapshot. Nil means the View's own check if it is a CheckView
	// (StoreSource's views check with their prepared translate.Mesh), else
	// CheckNodeConfig.
	Check func(*translate.NodeConfig) error
	// Debounce is how long the server waits after a change signal for more
	// changes before it rebuilds every node (default 20ms).
	Debounce time.Duration
	// Workers bounds concurrent translations (default GOMAXPROCS, at most 8).
	Workers int
	// SourceDiagnostics returns problems found while loading the
	// configuration (bad files, bad objects), for /debug/diagnostics.
	SourceDiagnostics func() []config.Diagnostic
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now defaults to time.Now.
	Now func() time.Time
}

// Validate reports a configuration the server cannot run with.
func (c *Config) Validate() error {
	var errs []error
	if c.Source == nil {
		errs = append(errs, errors.New("xds config: Source is required"))
	}
	if c.Debounce < 0 {
		errs = append(errs, errors.New("xds config: Debounce must not be negative"))
	}
	if c.Workers < 0 {
		errs = append(errs, errors.New("xds config: Workers must not be negative"))
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	if c.Debounce == 0 {
		c.Debounce = 20 * time.Millisecond
	}
	if c.Workers == 0 {
		c.Workers = min(runtime.GOMAXPROCS(0), 8)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}
