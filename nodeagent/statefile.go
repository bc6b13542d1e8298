package nodeagent

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"sigs.k8s.io/yaml"
)

// ParseState decodes a State from YAML (or JSON), refusing unknown fields,
// and validates it.
func ParseState(data []byte) (State, error) {
	var s State
	if err := yaml.UnmarshalStrict(data, &s); err != nil {
		return State{}, err
	}
	if err := s.Validate(); err != nil {
		return State{}, err
	}
	return s, nil
}

// LoadStateFile reads and parses a state file; errors name the file.
func LoadStateFile(path string) (State, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return State{}, fmt.Errorf("state file: %w", err)
	}
	s, err := ParseState(data)
	if err != nil {
		return State{}, fmt.Errorf("state file %s: %w", path, err)
	}
	return s, nil
}

// Applier is what WatchStateFile feeds (a *Dataplane).
type Applier interface {
	Apply(ctx context.Context, s State) (Stats, error)
}

// WatchConfig configures WatchStateFile.
type WatchConfig struct {
	Path     string
	Interval time.Duration // how often the file is checked; default 1s
	Logger   *slog.Logger  // default slog.Default()
}

// WatchStateFile applies the file now and again whenever its content
// changes, until ctx is done. Writers should replace the file atomically
// (write a temporary file, rename it over); an empty file is ignored. A file that does not parse or validate, or a
// failed apply, is logged (naming the file) and the last good state keeps
// serving; a failed apply is retried at the next check.
func WatchStateFile(ctx context.Context, cfg WatchConfig, a Applier) error {
	if cfg.Path == "" {
		return fmt.Errorf("watch state file: path: empty")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	var applied []byte
	check := func() {
		data, err := os.ReadFile(cfg.Path)
		if err != nil {
			log.Error("read state file", "file", cfg.Path, "err", err)
			return
		}
		if applied != nil && bytes.Equal(data, applied) {
			return
		}
		if len(bytes.TrimSpace(data)) == 0 {
			// Most likely caught mid-write; an empty state would remove
			// every service. To remove everything, write "{}".
			log.Warn("state file is empty; ignored", "file", cfg.Path)
			return
		}
		s, err := ParseState(data)
		if err != nil {
			log.Error("state file rejected; keeping the last good state", "file", cfg.Path, "err", err)
			applied = data // do not log the same bad content every interval
			return
		}
		if _, err := a.Apply(ctx, s); err != nil {
			log.Error("apply state file", "file", cfg.Path, "err", err)
			return
		}
		applied = data
	}
	check()
	t := time.NewTicker(cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			check()
		}
	}
}
