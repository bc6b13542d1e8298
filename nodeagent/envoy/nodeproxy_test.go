package envoy

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
)

// startNodeProxy runs RunNodeProxy against u until the returned stop.
func startNodeProxy(t *testing.T, u *upstreamCP, dir string) (stop func() error) {
	t.Helper()
	up, err := grpc.NewClient(u.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- RunNodeProxy(ctx, NodeProxyConfig{Node: "node-a", Dir: dir, Upstream: up, Logger: slog.New(slog.DiscardHandler),
			Supervisor: SupervisorConfig{MinBackoff: 50 * time.Millisecond, StopTimeout: 2 * time.Second}})
	}()
	var err2 error
	stopped := false
	stop = func() error {
		if !stopped {
			cancel()
			err2, stopped = <-done, true
		}
		return err2
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// clusterThroughSocket asks for clusters over the node's xDS socket, as
// Envoy would, and returns how many came back.
func clusterThroughSocket(t *testing.T, sock string) int {
	t.Helper()
	waitFor(t, "xds socket", func() bool { _, err := os.Stat(sock); return err == nil })
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: resource.ClusterType, ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.GetResources())
}

func TestRunNodeProxy(t *testing.T) {
	out := fakeEnvoy(t, `trap 'echo term >> $OUT/log; exit 0' TERM
echo "$@" > $OUT/args
while :; do sleep 0.05; done`)
	u := newUpstreamCP(t)
	u.setClusters("v1", "shop/web", "shop/db")
	dir := filepath.Join(t.TempDir(), "run")
	stop := startNodeProxy(t, u, dir)

	waitFor(t, "envoy started", func() bool { return len(readLines(t, filepath.Join(out, "args"))) == 1 })
	bootstrap := filepath.Join(dir, "envoy-bootstrap.json")
	if got, want := readLines(t, filepath.Join(out, "args"))[0], "-c "+bootstrap+" --log-level info --disable-hot-restart"; got != want {
		t.Errorf("envoy args %q, want %q", got, want)
	}
	data, err := os.ReadFile(bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(data, &b); err != nil {
		t.Fatal(err)
	}
	sock := b.GetStaticResources().GetClusters()[0].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe().GetPath()
	if sock != filepath.Join(dir, "xds.sock") {
		t.Errorf("bootstrap points Envoy at %q, want %s", sock, filepath.Join(dir, "xds.sock"))
	}
	// The socket the bootstrap names serves the control plane's resources.
	if n := clusterThroughSocket(t, sock); n != 2 {
		t.Errorf("got %d clusters through the socket, want 2", n)
	}

	if err := stop(); err != nil {
		t.Errorf("RunNodeProxy() = %v, want nil on shutdown", err)
	}
	if got := readLines(t, filepath.Join(out, "log")); len(got) != 1 || got[0] != "term" {
		t.Errorf("envoy log %q, want it stopped with SIGTERM", got)
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("xds socket left behind after shutdown (%v)", err)
	}
}

func TestRunNodeProxyWithoutEnvoy(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	u := newUpstreamCP(t)
	u.setClusters("v1", "shop/web")
	dir := t.TempDir()
	stop := startNodeProxy(t, u, dir)
	// No Envoy, but the socket serves (and RunNodeProxy did not return).
	if n := clusterThroughSocket(t, filepath.Join(dir, "xds.sock")); n != 1 {
		t.Errorf("got %d clusters through the socket, want 1", n)
	}
	if err := stop(); err != nil {
		t.Errorf("RunNodeProxy() = %v, want nil", err)
	}
}

func TestNodeProxyConfigValidate(t *testing.T) {
	err := NodeProxyConfig{Dir: "run"}.Validate()
	for _, want := range []string{"node is required", `dir "run" must be an absolute path`, "upstream connection is required"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to mention %q", err, want)
		}
	}
}
