package envoy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// ErrEnvoyNotFound is returned by Supervisor.Run when the Envoy binary is
// not on PATH; the agent then runs without L7 (the kernel half still works).
var ErrEnvoyNotFound = errors.New("envoy not on PATH")

// SupervisorConfig configures the Envoy process supervisor.
type SupervisorConfig struct {
	// Binary is the Envoy executable, a name looked up on PATH or a path;
	// default "envoy".
	Binary string
	// Bootstrap is the bootstrap file passed as -c (WriteBootstrap).
	Bootstrap string
	// Args are extra arguments after "-c <bootstrap>"; default
	// "--log-level info --disable-hot-restart" (one Envoy per node; restarts
	// are full restarts, and several nodes may share a test machine).
	Args []string
	// MinBackoff and MaxBackoff bound the delay between restarts; defaults
	// 1s and 30s. The delay doubles after each crash and resets after the
	// process stayed up for HealthyAfter (default 30s).
	MinBackoff, MaxBackoff, HealthyAfter time.Duration
	// StopTimeout is how long Envoy gets after SIGTERM before SIGKILL;
	// default 10s.
	StopTimeout time.Duration
	// Stdout and Stderr of the process; default the agent's own.
	Stdout, Stderr io.Writer
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Validate reports what is missing in c.
func (c SupervisorConfig) Validate() error {
	if c.Bootstrap == "" {
		return errors.New("envoy supervisor config: bootstrap is required")
	}
	if c.MinBackoff < 0 || c.MaxBackoff < 0 || c.StopTimeout < 0 || c.HealthyAfter < 0 {
		return errors.New("envoy supervisor config: durations must not be negative")
	}
	return nil
}

func (c SupervisorConfig) withDefaults() SupervisorConfig {
	if c.Binary == "" {
		c.Binary = "envoy"
	}
	if c.Args == nil {
		c.Args = []string{"--log-level", "info", "--disable-hot-restart"}
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = time.Second
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 30 * time.Second
	}
	c.MaxBackoff = max(c.MaxBackoff, c.MinBackoff)
	if c.HealthyAfter == 0 {
		c.HealthyAfter = 30 * time.Second
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = 10 * time.Second
	}
	if c.Stdout == nil {
		c.Stdout = os.Stdout
	}
	if c.Stderr == nil {
		c.Stderr = os.Stderr
	}
	return c
}

// SupervisorStatus is the state of the Envoy process.
type SupervisorStatus struct {
	Running  bool
	PID      int
	Starts   int
	LastExit string // how the last run ended
}

// Supervisor keeps one Envoy process running.
type Supervisor struct {
	cfg SupervisorConfig
	log *slog.Logger

	mu sync.Mutex
	st SupervisorStatus
}

// NewSupervisor checks cfg and builds a Supervisor.
func NewSupervisor(cfg SupervisorConfig) (*Supervisor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Supervisor{cfg: cfg, log: log.With("envoy", cfg.Binary)}, nil
}

// Status returns the process state. Safe for concurrent use.
func (s *Supervisor) Status() SupervisorStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st
}

// Run starts Envoy and restarts it whenever it exits, until ctx is done;
// then it sends SIGTERM, waits up to StopTimeout, kills it if needed and
// returns nil. It returns ErrEnvoyNotFound at once when there is no Envoy.
func (s *Supervisor) Run(ctx context.Context) error {
	bin, err := exec.LookPath(s.cfg.Binary)
	if err != nil {
		return fmt.Errorf("%w (%s): %w", ErrEnvoyNotFound, s.cfg.Binary, err)
	}
	delay := s.cfg.MinBackoff
	for {
		started := time.Now()
		err := s.runOnce(ctx, bin)
		if ctx.Err() != nil {
			return nil
		}
		up := time.Since(started)
		if up >= s.cfg.HealthyAfter {
			delay = s.cfg.MinBackoff
		}
		wait := jitter(delay)
		s.log.Warn("envoy exited; restarting", "error", err, "uptime", up, "backoff", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		delay = min(2*delay, s.cfg.MaxBackoff)
	}
}

// runOnce runs Envoy until it exits or ctx is done.
func (s *Supervisor) runOnce(ctx context.Context, bin string) error {
	args := append([]string{"-c", s.cfg.Bootstrap}, s.cfg.Args...)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = s.cfg.Stdout, s.cfg.Stderr
	// Envoy must not outlive an agent that died without stopping it: a new
	// agent starts a new Envoy on the same ports.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = s.cfg.StopTimeout
	if err := cmd.Start(); err != nil {
		s.setExit(fmt.Sprintf("start: %v", err))
		return fmt.Errorf("starting %s: %w", bin, err)
	}
	s.mu.Lock()
	s.st.Running, s.st.PID = true, cmd.Process.Pid
	s.st.Starts++
	s.mu.Unlock()
	s.log.Info("envoy started", "pid", cmd.Process.Pid, "args", args)
	err := cmd.Wait()
	exit := "exited 0"
	if err != nil {
		exit = err.Error()
	}
	s.setExit(exit)
	if err != nil {
		return fmt.Errorf("envoy pid %d: %w", cmd.Process.Pid, err)
	}
	return errors.New("envoy exited with status 0")
}

func (s *Supervisor) setExit(msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st.Running, s.st.PID, s.st.LastExit = false, 0, msg
}

// jitter spreads d by ±20%.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}
