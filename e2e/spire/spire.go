package spire

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Version is the SPIRE release build.sh builds.
const Version = "1.13.3"

// BinDir is where build.sh puts the binaries: $NODEMESH_SPIRE_BIN if set,
// else ${NODEMESH_CACHE:-$HOME/.cache/nodemesh}/spire-1.13.3/bin.
func BinDir() string {
	if d := os.Getenv("NODEMESH_SPIRE_BIN"); d != "" {
		return d
	}
	cache := os.Getenv("NODEMESH_CACHE")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = os.TempDir()
		}
		cache = filepath.Join(home, ".cache", "nodemesh")
	}
	return filepath.Join(cache, "spire-"+Version, "bin")
}

// Binaries returns the paths of spire-server and spire-agent. When they are
// missing the test is skipped with the reason, or fails if
// NODEMESH_REQUIRE_SPIRE is set (as CI does after make spire).
func Binaries(t testing.TB) (server, agent string) {
	t.Helper()
	dir := BinDir()
	server, agent = filepath.Join(dir, "spire-server"), filepath.Join(dir, "spire-agent")
	for _, p := range []string{server, agent} {
		if _, err := os.Stat(p); err != nil {
			msg := fmt.Sprintf("SPIRE %s binaries not found (%v): run `make spire` (builds into %s)", Version, err, dir)
			if os.Getenv("NODEMESH_REQUIRE_SPIRE") != "" {
				t.Fatal(msg + "; NODEMESH_REQUIRE_SPIRE is set")
			}
			t.Skip(msg)
		}
	}
	return server, agent
}

// tempDir is a short temporary directory: unix socket paths must stay
// under 108 bytes, and t.TempDir embeds the test name.
func tempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nmspire-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// process is a started SPIRE binary whose output goes to a log file.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	// exited is closed when the process has ended; err is then its Wait
	// result.
	exited chan struct{}
	err    error
}

// checkRunning fails when the process has already exited.
func (p *process) checkRunning() error {
	select {
	case <-p.exited:
		return fmt.Errorf("%s exited: %v (log %s)", p.name, p.err, p.log)
	default:
		return nil
	}
}

func start(t testing.TB, name, bin, logPath string, args ...string) *process {
	t.Helper()
	return startAs(t, nil, name, bin, logPath, args...)
}

// startAs starts a process as cred (nil: as this process).
func startAs(t testing.TB, cred *syscall.Credential, name, bin, logPath string, args ...string) *process {
	t.Helper()
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Die with the test binary, whatever happens to it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Credential: cred}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			p.dumpLog(t)
		}
	})
	return p
}

func (p *process) dumpLog(t testing.TB) {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return
	}
	if len(b) > 8000 {
		b = b[len(b)-8000:]
	}
	t.Logf("--- %s log (tail) ---\n%s", p.name, b)
}

// waitFor runs check until it succeeds or timeout passes.
func waitFor(t testing.TB, what string, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not ready after %s: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Server is a running spire-server.
type Server struct {
	TrustDomain spiffeid.TrustDomain
	// SocketPath is the server API's unix socket (for the CLI).
	SocketPath string
	Port       int
	Dir        string
	bin        string
	proc       *process
}

// StartServer starts spire-server for trust domain td and waits until it is
// healthy.
func StartServer(t testing.TB, td spiffeid.TrustDomain) *Server {
	t.Helper()
	serverBin, _ := Binaries(t)
	dir := filepath.Join(tempDir(t), "server")
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	s := &Server{
		TrustDomain: td,
		SocketPath:  filepath.Join(dir, "api.sock"),
		Port:        freePort(t),
		Dir:         dir,
		bin:         serverBin,
	}
	conf := fmt.Sprintf(`server {
    bind_address = "127.0.0.1"
    bind_port = "%d"
    socket_path = %q
    trust_domain = %q
    data_dir = %q
    log_level = "DEBUG"
    default_x509_svid_ttl = "1h"
}

plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = %q
        }
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
}
`, s.Port, s.SocketPath, td.Name(), filepath.Join(dir, "data"), filepath.Join(dir, "data", "datastore.sqlite3"))
	confPath := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	s.proc = start(t, "spire-server", serverBin, filepath.Join(dir, "server.log"), "run", "-config", confPath)
	waitFor(t, "spire-server", 60*time.Second, func() error {
		if err := s.proc.checkRunning(); err != nil {
			t.Fatal(err)
		}
		_, err := s.cli("healthcheck", "-socketPath", s.SocketPath)
		return err
	})
	return s
}

// cli runs a spire-server subcommand.
func (s *Server) cli(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, s.bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("spire-server %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

var tokenRE = regexp.MustCompile(`Token: ([0-9a-f-]+)`)

// JoinToken generates a join token for one agent and returns it with the
// SPIFFE ID the agent will have (spiffe://<td>/spire/agent/join_token/<token>).
func (s *Server) JoinToken(t testing.TB) (string, spiffeid.ID) {
	t.Helper()
	out, err := s.cli("token", "generate", "-socketPath", s.SocketPath, "-ttl", "600")
	if err != nil {
		t.Fatal(err)
	}
	m := tokenRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("token generate: no token in output %q", out)
	}
	id, err := spiffeid.FromSegments(s.TrustDomain, "spire", "agent", "join_token", m[1])
	if err != nil {
		t.Fatal(err)
	}
	return m[1], id
}

// Entry is a registration entry.
type Entry struct {
	Parent, ID spiffeid.ID
	// Selectors such as "unix:uid:0"; an entry matches a workload that
	// has all of them.
	Selectors []string
	// X509SVIDTTL, if set, overrides the server's SVID lifetime.
	X509SVIDTTL time.Duration
	// DNSNames become the SVID's DNS SANs; SPIRE also sets the Subject
	// CN to the first one (how a node agent's SVID names its node).
	DNSNames []string
}

// CreateEntry registers e with spire-server entry create.
func (s *Server) CreateEntry(t testing.TB, e Entry) {
	t.Helper()
	args := []string{"entry", "create", "-socketPath", s.SocketPath, "-parentID", e.Parent.String(), "-spiffeID", e.ID.String()}
	for _, sel := range e.Selectors {
		args = append(args, "-selector", sel)
	}
	for _, dns := range e.DNSNames {
		args = append(args, "-dns", dns)
	}
	if e.X509SVIDTTL > 0 {
		args = append(args, "-x509SVIDTTL", strconv.Itoa(int(e.X509SVIDTTL/time.Second)))
	}
	if _, err := s.cli(args...); err != nil {
		t.Fatal(err)
	}
}

// AgentConfig configures StartAgent.
type AgentConfig struct {
	// AuthorizedDelegates may use the Delegated Identity API.
	AuthorizedDelegates []spiffeid.ID
}

// Agent is a running spire-agent.
type Agent struct {
	ID spiffeid.ID
	// WorkloadAPIAddr and AdminAddr are unix:// addresses, in separate
	// directories (SPIRE refuses an admin socket under the Workload API's).
	WorkloadAPIAddr string
	AdminAddr       string
	Dir             string
	proc            *process
}

// StartAgent attests a new agent to s with a fresh join token and waits
// until its Workload API is healthy. register, if not nil, is called with
// the agent's SPIFFE ID before the agent starts, to create the entries it
// parents (so that its first sync brings them).
func StartAgent(t testing.TB, s *Server, cfg AgentConfig, register func(agentID spiffeid.ID)) *Agent {
	t.Helper()
	_, agentBin := Binaries(t)
	token, id := s.JoinToken(t)
	if register != nil {
		register(id)
	}
	dir := filepath.Join(filepath.Dir(s.Dir), "agent-"+token[:8])
	for _, d := range []string{"data", "public", "admin"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	wl := filepath.Join(dir, "public", "api.sock")
	admin := filepath.Join(dir, "admin", "admin.sock")
	var delegates []string
	for _, d := range cfg.AuthorizedDelegates {
		delegates = append(delegates, strconv.Quote(d.String()))
	}
	conf := fmt.Sprintf(`agent {
    data_dir = %q
    log_level = "DEBUG"
    server_address = "127.0.0.1"
    server_port = "%d"
    socket_path = %q
    admin_socket_path = %q
    trust_domain = %q
    insecure_bootstrap = true
    join_token = %q
    authorized_delegates = [%s]
}

plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
    WorkloadAttestor "unix" {
        plugin_data {}
    }
}
`, filepath.Join(dir, "data"), s.Port, wl, admin, s.TrustDomain.Name(), token, strings.Join(delegates, ", "))
	confPath := filepath.Join(dir, "agent.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	a := &Agent{ID: id, WorkloadAPIAddr: "unix://" + wl, AdminAddr: "unix://" + admin, Dir: dir}
	a.proc = start(t, "spire-agent", agentBin, filepath.Join(dir, "agent.log"), "run", "-config", confPath)
	waitFor(t, "spire-agent", 60*time.Second, func() error {
		if err := a.proc.checkRunning(); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(agentBin, "healthcheck", "-socketPath", wl)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%w: %s", err, bytes.TrimSpace(out))
		}
		return nil
	})
	return a
}
