package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Place is where a process runs: a network namespace and a cgroup directory.
type Place struct {
	Netns  string // named netns
	Cgroup string // absolute cgroup v2 directory
}

// Proc is a process started in a Place. Its output is captured; Wait may be
// called any number of times.
type Proc struct {
	Cmd  *exec.Cmd
	out  lockedBuffer
	done chan struct{}
	err  error
}

// command builds the nsenter command that runs argv in p, placed into the
// cgroup at clone time. The returned closer releases the cgroup fd once the
// process has started.
func (p Place) command(ctx context.Context, env []string, argv ...string) (*exec.Cmd, func(), error) {
	fd, err := syscall.Open(p.Cgroup, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open cgroup %s: %w", p.Cgroup, err)
	}
	args := append([]string{"--net=" + NetnsPath(p.Netns), "--"}, argv...)
	cmd := exec.CommandContext(ctx, "nsenter", args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		UseCgroupFD: true,
		CgroupFD:    fd,
		Pdeathsig:   syscall.SIGKILL, // a crashed test leaves no helper behind
	}
	return cmd, func() { syscall.Close(fd) }, nil
}

// start starts argv in p with extra environment variables.
func (p Place) start(env []string, argv ...string) (*Proc, error) {
	// Long-lived: stopped by Stop or the cluster's teardown, not a context.
	cmd, closeFD, err := p.command(context.Background(), env, argv...)
	if err != nil {
		return nil, err
	}
	defer closeFD()
	pr := &Proc{Cmd: cmd, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = &pr.out, &pr.out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %q in %s: %w", strings.Join(argv, " "), p.Netns, err)
	}
	go func() {
		pr.err = cmd.Wait()
		close(pr.done)
	}()
	return pr, nil
}

// run runs argv in p to completion and returns its combined output.
func (p Place) run(ctx context.Context, env []string, argv ...string) ([]byte, error) {
	cmd, closeFD, err := p.command(ctx, env, argv...)
	if err != nil {
		return nil, err
	}
	defer closeFD()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("run %q in %s: %w: %s", strings.Join(argv, " "), p.Netns, err, strings.TrimSpace(errb.String()))
	}
	return out.Bytes(), nil
}

// Pid returns the process ID (that of the program itself: nsenter execs it).
func (pr *Proc) Pid() int { return pr.Cmd.Process.Pid }

// Output returns what the process wrote to stdout and stderr so far.
func (pr *Proc) Output() string { return pr.out.String() }

// Done is closed when the process has exited.
func (pr *Proc) Done() <-chan struct{} { return pr.done }

// Wait waits for the process to exit and returns its exit error.
func (pr *Proc) Wait() error {
	<-pr.done
	return pr.err
}

// Stop sends SIGTERM, then SIGKILL after grace, and waits for the exit.
func (pr *Proc) Stop(grace time.Duration) {
	select {
	case <-pr.done:
		return
	default:
	}
	_ = pr.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-pr.done:
	case <-time.After(grace):
		_ = pr.Cmd.Process.Kill()
		<-pr.done
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent writes and reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
