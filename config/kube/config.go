package kube

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"k8s.io/client-go/rest"

	"github.com/nodemesh/nodemesh/config"
)

// DefaultSource is the name the Source writes under in the store.
const DefaultSource = "k8s"

// Config configures a Source. Zero values of the optional fields give
// useful defaults.
type Config struct {
	// RESTConfig reaches the API server. Required.
	RESTConfig *rest.Config
	// Store receives the objects. Required.
	Store *config.Store
	// Source names this source in the store; default "k8s".
	Source string
	// Namespace limits namespaced objects to one namespace (and the
	// Namespace kind to that namespace's object); "" reads every namespace.
	Namespace string
	// Resync is the informers' periodic resync; 0 disables it (watches and
	// relists after watch errors keep the caches current anyway).
	Resync time.Duration
	// Debounce is how long a change waits for more before the store is
	// rewritten; default 30ms.
	Debounce time.Duration
	// LeaderElection, if set, enables status write-back (Events) by the
	// elected replica. Without it the Source never writes to the API server.
	LeaderElection *LeaderElection
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// LeaderElection configures the Lease that elects the replica that writes.
type LeaderElection struct {
	// Namespace and Name of the coordination.k8s.io Lease. Namespace is
	// required; Name defaults to "nodemesh-meshd".
	Namespace, Name string
	// Identity of this replica (e.g. the pod name). Required.
	Identity string
	// Timings; defaults 15s, 10s and 2s (client-go's usual values).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	switch {
	case c.RESTConfig == nil:
		return errors.New("kube source: RESTConfig is required")
	case c.Store == nil:
		return errors.New("kube source: Store is required")
	case c.Resync < 0 || c.Debounce < 0:
		return fmt.Errorf("kube source: negative Resync (%v) or Debounce (%v)", c.Resync, c.Debounce)
	}
	if le := c.LeaderElection; le != nil {
		switch {
		case le.Namespace == "":
			return errors.New("kube source: LeaderElection.Namespace is required")
		case le.Identity == "":
			return errors.New("kube source: LeaderElection.Identity is required")
		case le.LeaseDuration < 0 || le.RenewDeadline < 0 || le.RetryPeriod < 0:
			return errors.New("kube source: negative leader election timing")
		}
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.Source == "" {
		c.Source = DefaultSource
	}
	if c.Debounce == 0 {
		c.Debounce = 30 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if le := c.LeaderElection; le != nil {
		cp := *le
		if cp.Name == "" {
			cp.Name = "nodemesh-meshd"
		}
		if cp.LeaseDuration == 0 {
			cp.LeaseDuration = 15 * time.Second
		}
		if cp.RenewDeadline == 0 {
			cp.RenewDeadline = 10 * time.Second
		}
		if cp.RetryPeriod == 0 {
			cp.RetryPeriod = 2 * time.Second
		}
		c.LeaderElection = &cp
	}
}
