package e2e

// Proof that a real xDS client nobody here wrote (gRPC-Go's, proxyless)
// consumes nodemesh's output: meshd (the same StartControlPlane as
// cmd/meshd) serves a config directory holding Istio's grpc-echo sample
// (Service echo in echo-grpc, grpc port 7070 -> targetPort 17070) plus
// hand-written Pods, a DestinationRule and a VirtualService; gRPC backends
// listen on distinct loopback addresses as if they were the pods; a gRPC
// client dials xds:///echo.echo-grpc.svc.cluster.local:7070 through meshd
// and its calls follow the subsets, the weights and the header match,
// including live edits of the files.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	grpcxds "google.golang.org/grpc/xds" // registers the xds:/// resolver and balancers

	"github.com/nodemesh/nodemesh/xds"
)

const (
	grpcxdsSample     = "../../shared/testdata/istio/samples/grpc-echo/grpc-echo.yaml"
	grpcxdsNamespace  = "echo-grpc" // the sample's
	grpcxdsPort       = 7070        // the sample's grpc port
	grpcxdsTargetPort = 17070       // and its targetPort, where the pods listen
	grpcxdsNodeID     = "grpcxds-client-1"
)

// grpcxdsBackend is one "pod": a gRPC TestService on its own loopback IP
// that answers with its name.
type grpcxdsBackend struct {
	name, ip, version string
	srv               *grpc.Server
}

type grpcxdsEcho struct {
	testgrpc.UnimplementedTestServiceServer
	name string
}

func (e grpcxdsEcho) UnaryCall(context.Context, *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	return &testgrpc.SimpleResponse{Hostname: e.name}, nil
}

// startGRPCXDSBackends gives the backends the addresses 127.77.N.11,
// .12, ... (all of 127/8 is loopback on Linux) and listens on the sample's
// targetPort on each. N is random, and another is tried when a port is
// taken, so that two runs of this test at once do not collide.
func startGRPCXDSBackends(t *testing.T, backends []*grpcxdsBackend) {
	t.Helper()
	var lis []net.Listener
	for attempt := 0; len(lis) < len(backends); attempt++ {
		for _, l := range lis {
			l.Close()
		}
		lis = lis[:0]
		block := 1 + rand.IntN(254)
		for i, b := range backends {
			b.ip = fmt.Sprintf("127.77.%d.%d", block, 11+i)
			l, err := net.Listen("tcp", net.JoinHostPort(b.ip, strconv.Itoa(grpcxdsTargetPort)))
			if err != nil {
				if attempt == 9 {
					t.Fatalf("listen on %s:%d: %v", b.ip, grpcxdsTargetPort, err)
				}
				break
			}
			lis = append(lis, l)
		}
	}
	for i, b := range backends {
		lis := lis[i]
		b.srv = grpc.NewServer()
		testgrpc.RegisterTestServiceServer(b.srv, grpcxdsEcho{name: b.name})
		go b.srv.Serve(lis)
		t.Cleanup(b.srv.Stop)
	}
}

// grpcxdsMeshYAML holds what the sample lacks: the pods (with IPs and a
// node, as the API server would report them) and the subsets.
func grpcxdsMeshYAML(backends []*grpcxdsBackend) string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: echo
  namespace: %s
spec:
  host: echo
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
`, grpcxdsNamespace)
	for _, be := range backends {
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: %s
  labels: {app: echo, version: %s}
spec:
  nodeName: node-1
  containers: [{name: echo, image: echo}]
status:
  phase: Running
  podIP: %s
`, be.name, grpcxdsNamespace, be.version, be.ip)
	}
	return b.String()
}

// grpcxdsVirtualService routes x-canary: "true" to v2 and splits the rest
// v1/v2 by weight.
func grpcxdsVirtualService(v1, v2 int) string {
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: echo
  namespace: %s
spec:
  hosts: [echo]
  http:
  - match:
    - headers:
        x-canary:
          exact: "true"
    route:
    - destination: {host: echo, subset: v2}
  - route:
    - destination: {host: echo, subset: v1}
      weight: %d
    - destination: {host: echo, subset: v2}
      weight: %d
`, grpcxdsNamespace, v1, v2)
}

func grpcxdsBootstrap(xdsAddr string) []byte {
	b, _ := json.Marshal(map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri":      xdsAddr,
			"channel_creds":   []any{map[string]any{"type": "insecure"}},
			"server_features": []string{"xds_v3"},
		}},
		"node": map[string]any{
			"id":       grpcxdsNodeID,
			"metadata": map[string]string{xds.MetaProxy: xds.ProxyValueGRPC, xds.MetaNamespace: grpcxdsNamespace},
		},
	})
	return b
}

// grpcxdsCall makes n calls and counts answers by backend name.
func grpcxdsCall(ctx context.Context, c testgrpc.TestServiceClient, n int, md metadata.MD) (map[string]int, error) {
	if md != nil {
		ctx = metadata.NewOutgoingContext(ctx, md)
	}
	counts := map[string]int{}
	for range n {
		r, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{})
		if err != nil {
			return counts, err
		}
		counts[r.GetHostname()]++
	}
	return counts, nil
}

func TestGRPCXDS(t *testing.T) {
	backends := []*grpcxdsBackend{
		{name: "echo-v1-a", version: "v1"},
		{name: "echo-v1-b", version: "v1"},
		{name: "echo-v2", version: "v2"},
		{name: "echo-v2-late", version: "v2"}, // a pod that appears later
	}
	sample, err := os.ReadFile(grpcxdsSample)
	if err != nil {
		t.Fatalf("Istio's grpc-echo sample (shared/testdata beside the repo): %v", err)
	}
	startGRPCXDSBackends(t, backends)
	late := backends[3]
	backends = backends[:3]
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		// Write then rename, as a ConfigMap update does, so that a poll
		// never sees half a file.
		tmp := filepath.Join(dir, "."+name+".tmp")
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	write("grpc-echo.yaml", string(sample))
	write("mesh.yaml", grpcxdsMeshYAML(backends))
	write("virtualservice.yaml", grpcxdsVirtualService(80, 20))

	cpConfig := xds.ControlPlaneConfig{
		ConfigDir: dir, XDSAddr: "127.0.0.1:0", DebugAddr: "127.0.0.1:0",
		PollInterval: 50 * time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(grpcxdsLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	cp, err := xds.StartControlPlane(cpConfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cp == nil {
			return
		}
		if err := cp.Stop(); err != nil {
			t.Errorf("meshd stop: %v", err)
		}
	})
	if d := cp.Server().Diagnostics(); len(d) > 0 {
		t.Logf("diagnostics: %v", d)
	}

	bootstrap := grpcxdsBootstrap(cp.XDSAddr())
	resolver, err := grpcxds.NewXDSResolverWithConfigForTesting(bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	target := fmt.Sprintf("xds:///echo.%s.svc.cluster.local:%d", grpcxdsNamespace, grpcxdsPort)
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(resolver))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := testgrpc.NewTestServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The first call waits for LDS -> RDS -> CDS -> EDS from meshd.
	first, cancelFirst := context.WithTimeout(ctx, 20*time.Second)
	_, err = client.UnaryCall(first, &testgrpc.SimpleRequest{}, grpc.WaitForReady(true))
	cancelFirst()
	if err != nil {
		t.Fatalf("first call through xds: %v\nsyncz:\n%s", err, grpcxdsGet(t, cp, "/debug/syncz"))
	}

	t.Run("weights 80/20", func(t *testing.T) {
		counts, err := grpcxdsCall(ctx, client, 1000, nil)
		if err != nil {
			t.Fatal(err)
		}
		v1 := counts["echo-v1-a"] + counts["echo-v1-b"]
		v2 := counts["echo-v2"]
		t.Logf("1000 calls: v1 %d (a %d, b %d), v2 %d", v1, counts["echo-v1-a"], counts["echo-v1-b"], v2)
		if v1+v2 != 1000 || v1 < 750 || v1 > 850 {
			t.Fatalf("split %d/%d, want 800/200 within 5 points", v1, v2)
		}
		// Within a subset, calls are balanced over its endpoints.
		if counts["echo-v1-a"] < 200 || counts["echo-v1-b"] < 200 {
			t.Fatalf("v1 endpoints unbalanced: %v", counts)
		}
	})

	t.Run("header match", func(t *testing.T) {
		counts, err := grpcxdsCall(ctx, client, 100, metadata.Pairs("x-canary", "true"))
		if err != nil {
			t.Fatal(err)
		}
		if counts["echo-v2"] != 100 {
			t.Fatalf("x-canary: true went to %v, want all to echo-v2", counts)
		}
		counts, err = grpcxdsCall(ctx, client, 100, metadata.Pairs("x-canary", "false"))
		if err != nil {
			t.Fatal(err)
		}
		if counts["echo-v1-a"]+counts["echo-v1-b"] == 0 {
			t.Fatalf("x-canary: false matched the header route: %v", counts)
		}
	})

	t.Run("sync status", func(t *testing.T) {
		// The client ACKs each type right after applying it; give the last
		// ACK a moment to arrive.
		var problems []string
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			var st []xds.NodeStatus
			if err := json.Unmarshal([]byte(grpcxdsGet(t, cp, "/debug/syncz?format=json")), &st); err != nil {
				t.Fatal(err)
			}
			if len(st) != 1 || st[0].ID != grpcxdsNodeID || st[0].Kind != "grpc" || st[0].Namespace != grpcxdsNamespace {
				t.Fatalf("syncz = %+v", st)
			}
			problems = problems[:0]
			for _, ts := range st[0].Types {
				if ts.State != "SYNCED" || ts.NACK != nil {
					problems = append(problems, fmt.Sprintf("%s: state %s, nack %v (sent %s, acked %s)", ts.Type, ts.State, ts.NACK, ts.Sent, ts.Acked))
				}
			}
			if len(problems) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("not synced: %v", problems)
			}
		}
		t.Logf("syncz:\n%s", grpcxdsGet(t, cp, "/debug/syncz"))
	})

	t.Run("live edit to 0/100", func(t *testing.T) {
		start := time.Now()
		write("virtualservice.yaml", grpcxdsVirtualService(0, 100))
		deadline := start.Add(10 * time.Second)
		for streak := 0; streak < 20; {
			if time.Now().After(deadline) {
				t.Fatalf("the edit did not reach the client within 10s\nsyncz:\n%s", grpcxdsGet(t, cp, "/debug/syncz"))
			}
			counts, err := grpcxdsCall(ctx, client, 1, nil)
			if err != nil {
				t.Fatal(err)
			}
			if counts["echo-v2"] == 1 {
				streak++
			} else {
				streak = 0
			}
		}
		t.Logf("0/100 took effect on the live client after %v", time.Since(start).Round(time.Millisecond))
		counts, err := grpcxdsCall(ctx, client, 300, nil)
		if err != nil {
			t.Fatal(err)
		}
		if counts["echo-v2"] != 300 {
			t.Fatalf("after 0/100: %v", counts)
		}
	})

	t.Run("new pod joins its subset", func(t *testing.T) {
		write("mesh.yaml", grpcxdsMeshYAML(append(backends, late)))
		deadline := time.Now().Add(10 * time.Second)
		for {
			counts, err := grpcxdsCall(ctx, client, 20, nil)
			if err != nil {
				t.Fatal(err)
			}
			if counts[late.name] > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("calls never reached the new pod: %v", counts)
			}
		}
		counts, err := grpcxdsCall(ctx, client, 200, nil)
		if err != nil {
			t.Fatal(err)
		}
		if counts["echo-v2"] < 80 || counts[late.name] < 80 {
			t.Fatalf("v2 endpoints after the new pod: %v, want about 100 each", counts)
		}
	})

	t.Run("meshd restart", func(t *testing.T) {
		// The client keeps its last config while meshd is away, then
		// reconnects to the new meshd on the same address and follows it.
		cpConfig.XDSAddr, cpConfig.DebugAddr = cp.XDSAddr(), cp.DebugAddr()
		if err := cp.Stop(); err != nil {
			t.Fatal(err)
		}
		cp = nil
		counts, err := grpcxdsCall(ctx, client, 50, nil)
		if err != nil || counts["echo-v2"]+counts[late.name] != 50 {
			t.Fatalf("with meshd down: %v, %v", counts, err)
		}
		write("virtualservice.yaml", grpcxdsVirtualService(100, 0))
		start := time.Now()
		if cp, err = xds.StartControlPlane(cpConfig); err != nil {
			t.Fatal(err)
		}
		deadline := start.Add(30 * time.Second) // gRPC's reconnect backoff
		for {
			counts, err := grpcxdsCall(ctx, client, 10, nil)
			if err != nil {
				t.Fatal(err)
			}
			if counts["echo-v1-a"]+counts["echo-v1-b"] == 10 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the client did not follow the restarted meshd: %v\nsyncz:\n%s", counts, grpcxdsGet(t, cp, "/debug/syncz"))
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("client resynced with the restarted meshd and took 100/0 after %v", time.Since(start).Round(time.Millisecond))
		write("virtualservice.yaml", grpcxdsVirtualService(0, 100)) // what the next case expects
		until := time.Now().Add(10 * time.Second)
		for {
			counts, err := grpcxdsCall(ctx, client, 10, nil)
			if err != nil {
				t.Fatal(err)
			}
			if counts["echo-v2"]+counts[late.name] == 10 {
				break
			}
			if time.Now().After(until) {
				t.Fatalf("0/100 not back: %v", counts)
			}
		}
	})

	t.Run("bootstrap file through GRPC_XDS_BOOTSTRAP", func(t *testing.T) {
		// gRPC reads GRPC_XDS_BOOTSTRAP once per process, at init: run a
		// fresh copy of this test binary as the client, as a user would.
		file := filepath.Join(t.TempDir(), "bootstrap.json")
		if err := os.WriteFile(file, bootstrap, 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestGRPCXDSBootstrapClient$", "-test.v")
		cmd.Env = append(os.Environ(), "GRPC_XDS_BOOTSTRAP="+file, "GRPCXDS_TARGET="+target)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "grpcxds-client: 50 calls to v2") {
			t.Fatalf("client with GRPC_XDS_BOOTSTRAP: %v\n%s", err, out)
		}
		t.Logf("child process with GRPC_XDS_BOOTSTRAP=%s:\n%s", file, out)
	})
}

// TestGRPCXDSBootstrapClient is the child process of the GRPC_XDS_BOOTSTRAP
// case: it dials with gRPC's default xds resolver, configured only by the
// bootstrap file, and prints where 50 calls went (the 0/100 route: all to v2).
func TestGRPCXDSBootstrapClient(t *testing.T) {
	target := os.Getenv("GRPCXDS_TARGET")
	if target == "" || os.Getenv("GRPC_XDS_BOOTSTRAP") == "" {
		t.Skip("run by TestGRPCXDS as a child process")
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := testgrpc.NewTestServiceClient(conn)
	if _, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatal(err)
	}
	counts, err := grpcxdsCall(ctx, client, 50, nil)
	if err != nil {
		t.Fatal(err)
	}
	v2 := 0
	for name, n := range counts {
		if strings.HasPrefix(name, "echo-v2") {
			v2 += n
		}
	}
	fmt.Printf("grpcxds-client: %d calls to v2 %v\n", v2, counts)
}

func grpcxdsGet(t *testing.T, cp *xds.ControlPlane, path string) string {
	t.Helper()
	resp, err := http.Get("http://" + cp.DebugAddr() + path)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// grpcxdsLogWriter sends meshd's log lines to the test log.
type grpcxdsLogWriter struct{ t *testing.T }

func (w grpcxdsLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
