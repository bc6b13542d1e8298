package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/nodemesh/nodemesh/xds"
)

// startMeshd runs meshd (this test binary as main) with args and waits
// until it is ready; it returns a stop function.
func startMeshd(t *testing.T, args ...string) (xdsAddr string, stop func() string) {
	t.Helper()
	dir := t.TempDir()
	svc := "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  ports:\n  - name: http\n    port: 80\n"
	if err := os.WriteFile(filepath.Join(dir, "svc.yaml"), []byte(svc), 0o644); err != nil {
		t.Fatal(err)
	}
	xdsAddr, debugAddr := freeAddr(t), freeAddr(t)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "MESHD_TEST_RUN_MAIN=1",
		"MESHD_TEST_ARGS=--config "+dir+" --xds-addr "+xdsAddr+" --debug-addr "+debugAddr+" "+strings.Join(args, " "))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop = func() string {
		if !stopped {
			stopped = true
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		return stderr.String()
	}
	t.Cleanup(func() { stop() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + debugAddr + "/readyz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return xdsAddr, stop
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("meshd not ready: %v\n%s", err, stop())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func cdsOnce(ctx context.Context, conn *grpc.ClientConn, node string) error {
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resourcev3.ClusterType}); err != nil {
		return err
	}
	_, err = st.Recv()
	return err
}

// meshd serves ADS over mTLS by default, with a CA persisted in --ca-dir;
// an agent certificate written by --bootstrap-agents gets config, a
// plaintext client gets nothing.
func TestMeshdServesADSOverMTLS(t *testing.T) {
	caDir, certs := t.TempDir(), t.TempDir()
	addr, stop := startMeshd(t, "--ca-dir", caDir, "--bootstrap-agents", "node-a", "--agent-certs-dir", certs)

	svid, err := x509svid.Load(filepath.Join(certs, "node-a", "cert-chain.pem"), filepath.Join(certs, "node-a", "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	bundle, err := x509bundle.Load(td, filepath.Join(certs, "node-a", "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := xds.AgentClientTLS(svidSource{svid}, bundle, td)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cdsOnce(ctx, conn, "node-a"); err != nil {
		t.Fatalf("agent over mTLS: %v\n%s", err, stop())
	}

	plain, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel2()
	if err := cdsOnce(ctx2, plain, "node-a"); err == nil {
		t.Fatal("a plaintext client was served")
	}
	stop()

	// The CA survives a restart: the agent's certificate still verifies.
	addr, stop = startMeshd(t, "--ca-dir", caDir)
	defer stop()
	conn2, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	if err := cdsOnce(ctx, conn2, "node-a"); err != nil {
		t.Fatalf("after restart with the same --ca-dir: %v\n%s", err, stop())
	}
	if _, err := os.Stat(filepath.Join(caDir, "ca-key.pem")); err != nil {
		t.Fatalf("CA not persisted: %v", err)
	}
}

// --xds-insecure serves plaintext ADS (demos, tests).
func TestMeshdXDSInsecure(t *testing.T) {
	addr, stop := startMeshd(t, "--ca-dir", t.TempDir(), "--xds-insecure")
	defer stop()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cdsOnce(ctx, conn, "node-a"); err != nil {
		t.Fatalf("plaintext with --xds-insecure: %v\n%s", err, stop())
	}
}

type svidSource struct{ s *x509svid.SVID }

func (s svidSource) GetX509SVID() (*x509svid.SVID, error) { return s.s, nil }
