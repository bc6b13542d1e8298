package envoy

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeEnvoy puts an executable "envoy" script with body on PATH (ahead of
// everything else) and returns the directory it writes to.
func fakeEnvoy(t *testing.T, body string) string {
	t.Helper()
	dir := t.TempDir()
	script := "#!/bin/sh\nOUT=" + dir + "\n" + body + "\n"
	if err := os.WriteFile(filepath.Join(dir, "envoy"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return dir
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	text := strings.TrimSpace(string(data))
	if text == "" {
		return nil // not written yet
	}
	return strings.Split(text, "\n")
}

// runSupervisor runs a Supervisor until stop (or the end of the test); stop
// cancels it and returns what Run returned.
func runSupervisor(t *testing.T, cfg SupervisorConfig) (s *Supervisor, stop func() error) {
	t.Helper()
	cfg.Logger = slog.New(slog.DiscardHandler)
	s, err := NewSupervisor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stop = sync.OnceValue(func() error { cancel(); return <-done })
	t.Cleanup(func() { _ = stop() })
	return s, stop
}

func TestSupervisorRestartsWithBackoff(t *testing.T) {
	dir := fakeEnvoy(t, `echo "$@" >> $OUT/args; date +%s%N >> $OUT/starts; exit 1`)
	s, _ := runSupervisor(t, SupervisorConfig{
		Bootstrap:  "/etc/nodemesh/bootstrap.json",
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, HealthyAfter: time.Minute,
	})
	waitFor(t, "five starts", func() bool {
		return len(readLines(t, filepath.Join(dir, "starts"))) >= 5 && s.Status().Starts >= 5
	})

	args := readLines(t, filepath.Join(dir, "args"))
	if want := "-c /etc/nodemesh/bootstrap.json --log-level info --disable-hot-restart"; args[0] != want {
		t.Errorf("envoy args = %q, want %q", args[0], want)
	}
	var starts []time.Duration
	for _, l := range readLines(t, filepath.Join(dir, "starts"))[:5] {
		ns, err := strconv.ParseInt(l, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		starts = append(starts, time.Duration(ns))
	}
	// Backoff 50ms, 100ms, 200ms, 200ms (±20% jitter) plus the script's own run time.
	for i, min := range []time.Duration{40, 80, 160, 160} {
		if gap := starts[i+1] - starts[i]; gap < min*time.Millisecond {
			t.Errorf("restart %d came %v after the previous start, want >= %vms", i+1, gap, min)
		}
	}
	if gap := starts[4] - starts[3]; gap > 2*time.Second {
		t.Errorf("restart gap %v exceeds the 200ms max backoff by far", gap)
	}
	waitFor(t, "an exit recorded", func() bool { return strings.Contains(s.Status().LastExit, "exit status 1") })
}

func TestSupervisorStopsEnvoyOnShutdown(t *testing.T) {
	dir := fakeEnvoy(t, `trap 'echo term >> $OUT/log; exit 0' TERM
echo $$ > $OUT/pid
while :; do sleep 0.05; done`)
	s, stop := runSupervisor(t, SupervisorConfig{Bootstrap: "/b.json", StopTimeout: 5 * time.Second})
	waitFor(t, "envoy running", func() bool { return len(readLines(t, filepath.Join(dir, "pid"))) == 1 && s.Status().Running })
	pid, _ := strconv.Atoi(readLines(t, filepath.Join(dir, "pid"))[0])
	if s.Status().PID != pid {
		t.Errorf("status pid %d, script pid %d", s.Status().PID, pid)
	}

	start := time.Now()
	if err := stop(); err != nil {
		t.Errorf("Run() = %v, want nil on shutdown", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("shutdown took %v; SIGTERM should stop it at once", took)
	}
	if got := readLines(t, filepath.Join(dir, "log")); len(got) != 1 || got[0] != "term" {
		t.Errorf("envoy log = %q, want it to have received SIGTERM", got)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("envoy pid %d still exists after shutdown (kill -0: %v)", pid, err)
	}
	if st := s.Status(); st.Running || st.Starts != 1 {
		t.Errorf("status = %+v, want stopped after exactly one start", st)
	}
}

func TestSupervisorKillsEnvoyIgnoringTERM(t *testing.T) {
	dir := fakeEnvoy(t, `trap '' TERM
echo $$ > $OUT/pid
while :; do sleep 0.05; done`)
	s, stop := runSupervisor(t, SupervisorConfig{Bootstrap: "/b.json", StopTimeout: 300 * time.Millisecond})
	waitFor(t, "envoy running", func() bool { return len(readLines(t, filepath.Join(dir, "pid"))) == 1 && s.Status().Running })
	pid, _ := strconv.Atoi(readLines(t, filepath.Join(dir, "pid"))[0])
	start := time.Now()
	_ = stop()
	took := time.Since(start)
	if took < 250*time.Millisecond || took > 3*time.Second {
		t.Errorf("shutdown of a TERM-ignoring envoy took %v, want about the 300ms stop timeout", took)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("envoy pid %d survived SIGKILL (kill -0: %v)", pid, err)
	}
}

func TestSupervisorWithoutEnvoy(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	s, err := NewSupervisor(SupervisorConfig{Bootstrap: "/b.json", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(context.Background()); !errors.Is(err, ErrEnvoyNotFound) {
		t.Errorf("Run() = %v, want ErrEnvoyNotFound", err)
	}
	if _, err := NewSupervisor(SupervisorConfig{}); err == nil || !strings.Contains(err.Error(), "bootstrap is required") {
		t.Errorf("NewSupervisor(no bootstrap) = %v, want an error about the bootstrap", err)
	}
}
