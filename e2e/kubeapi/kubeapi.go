package kubeapi

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Versions built by build.sh.
const (
	EtcdVersion      = "v3.7.3"
	APIServerVersion = "v1.37.2"
)

// BinDir is where build.sh puts etcd and kube-apiserver: $NODEMESH_KUBE_BIN,
// else ${NODEMESH_CACHE:-$HOME/.cache/nodemesh}/kube-1.37.2/bin.
func BinDir() string {
	if d := os.Getenv("NODEMESH_KUBE_BIN"); d != "" {
		return d
	}
	cache := os.Getenv("NODEMESH_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "nodemesh")
	}
	return filepath.Join(cache, "kube-"+strings.TrimPrefix(APIServerVersion, "v"), "bin")
}

// Server is a running etcd + kube-apiserver pair.
type Server struct {
	// Config authenticates as a cluster admin (group system:masters).
	Config *rest.Config
	// Kubeconfig is the path of a kubeconfig file for Config (for kubectl).
	Kubeconfig string
	// URL of the API server (https://127.0.0.1:port).
	URL string
	// Dir holds data, certificates and logs; removed by the test cleanup.
	Dir string
}

// Start runs etcd and kube-apiserver for the test and stops them in
// t.Cleanup. It skips the test when the binaries are missing, unless
// NODEMESH_REQUIRE_KUBE is set.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := BinDir()
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			msg := fmt.Sprintf("kubeapi: %s not found in %s (build with `make kube-binaries`)", b, bin)
			if os.Getenv("NODEMESH_REQUIRE_KUBE") != "" {
				t.Fatal(msg + "; NODEMESH_REQUIRE_KUBE is set")
			}
			t.Skip(msg)
		}
	}
	dir := t.TempDir()
	etcdURL := startEtcd(t, bin, dir)
	s, err := startAPIServer(t, bin, dir, etcdURL)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// freePort returns a port nothing listens on right now on 127.0.0.1.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("kubeapi: find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// run starts a process whose output goes to dir/name.log; it is killed in
// t.Cleanup, and by the kernel if the test binary dies first.
func run(t testing.TB, dir, name, path string, args ...string) *exec.Cmd {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("kubeapi: %v", err)
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("kubeapi: start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		logf.Close()
		if t.Failed() {
			t.Logf("kubeapi: last lines of %s:\n%s", name, tail(logPath, 30))
		}
	})
	return cmd
}

func tail(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func startEtcd(t testing.TB, bin, dir string) string {
	t.Helper()
	client := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	peer := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	run(t, dir, "etcd", filepath.Join(bin, "etcd"),
		"--name=default", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+client, "--advertise-client-urls="+client,
		"--listen-peer-urls="+peer, "--initial-advertise-peer-urls="+peer,
		"--initial-cluster=default="+peer,
		"--unsafe-no-fsync", "--log-level=warn")
	err := poll(30*time.Second, func() error {
		resp, err := http.Get(client + "/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("etcd /health: %s", resp.Status)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("kubeapi: etcd not healthy: %v\n%s", err, tail(filepath.Join(dir, "etcd.log"), 20))
	}
	return client
}

func startAPIServer(t testing.TB, bin, dir, etcdURL string) (*Server, error) {
	t.Helper()
	keyFile := filepath.Join(dir, "sa.key")
	if err := writeRSAKey(keyFile); err != nil {
		return nil, err
	}
	tok := make([]byte, 16)
	_, _ = rand.Read(tok)
	token := hex.EncodeToString(tok)
	tokenFile := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(token+`,admin,admin,"system:masters"`+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("kubeapi: write token file: %w", err)
	}
	certDir := filepath.Join(dir, "certs")
	port := freePort(t)
	run(t, dir, "kube-apiserver", filepath.Join(bin, "kube-apiserver"),
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port), "--cert-dir="+certDir,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+keyFile, "--service-account-signing-key-file="+keyFile,
		"--token-auth-file="+tokenFile,
		"--authorization-mode=RBAC",
		"--endpoint-reconciler-type=none",
		"--service-cluster-ip-range=10.96.0.0/16",
		// No controller-manager creates the "default" ServiceAccounts that
		// this admission plugin would require of every pod.
		"--disable-admission-plugins=ServiceAccount",
		"--v=1")
	url := fmt.Sprintf("https://127.0.0.1:%d", port)
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	err := poll(60*time.Second, func() error {
		req, _ := http.NewRequest(http.MethodGet, url+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := insecure.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz: %s", resp.Status)
		}
		return nil
	})
	insecure.CloseIdleConnections()
	if err != nil {
		return nil, fmt.Errorf("kubeapi: kube-apiserver not ready: %w\n%s", err, tail(filepath.Join(dir, "kube-apiserver.log"), 30))
	}
	// The API server wrote a self-signed serving certificate for 127.0.0.1.
	ca, err := os.ReadFile(filepath.Join(certDir, "apiserver.crt"))
	if err != nil {
		return nil, fmt.Errorf("kubeapi: read serving certificate: %w", err)
	}
	cfg := &rest.Config{Host: url, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAData: ca},
		QPS: 100, Burst: 200}
	kc := filepath.Join(dir, "kubeconfig")
	if err := writeKubeconfig(kc, cfg); err != nil {
		return nil, err
	}
	return &Server{Config: cfg, Kubeconfig: kc, URL: url, Dir: dir}, nil
}

func writeRSAKey(path string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("kubeapi: generate service-account key: %w", err)
	}
	der := x509.MarshalPKCS1PrivateKey(key)
	data := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der})
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("kubeapi: write service-account key: %w", err)
	}
	return nil
}

func writeKubeconfig(path string, cfg *rest.Config) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: cfg.BearerToken}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "admin"}
	kc.CurrentContext = "test"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return fmt.Errorf("kubeapi: write kubeconfig: %w", err)
	}
	return nil
}

// poll calls fn every 100ms until it returns nil or timeout passes.
func poll(timeout time.Duration, fn func() error) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		err := fn()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
