package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/nodeagent"
	"github.com/nodemesh/nodemesh/xds"
)

// kernelDirs gives a test a cgroup and a bpffs pin directory of its own,
// removed at the end, or skips saying what is missing.
func kernelDirs(t *testing.T) (cgroup, pins string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping kernel test: needs root")
	}
	mount, err := nodeagent.CgroupV2Mount()
	if err != nil {
		t.Skipf("skipping kernel test: %v", err)
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs("/sys/fs/bpf", &fs); err != nil || fs.Type != 0xcafe4a11 {
		t.Skip("skipping kernel test: /sys/fs/bpf is not a bpffs (mount -t bpf bpf /sys/fs/bpf)")
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "nodemesh-agenttest-" + hex.EncodeToString(b)
	cgroup, pins = filepath.Join(mount, name), filepath.Join("/sys/fs/bpf", name)
	if err := os.Mkdir(cgroup, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = os.RemoveAll(pins)
		if err := removeCgroupDirs(cgroup); err != nil {
			t.Errorf("remove test cgroup: %v", err)
		}
	})
	return cgroup, pins
}

// removeCgroupDirs removes a cgroup and the cgroups below it, deepest
// first (a cgroup directory goes only with rmdir, once it has no children).
func removeCgroupDirs(root string) error {
	var dirs []string
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	slices.SortFunc(dirs, func(a, b string) int { return len(b) - len(a) })
	var errs []error
	for _, d := range dirs {
		if err := os.Remove(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// testPodUID is web-0's metadata.uid in testMesh; its cgroup is where a
// kubelet with the systemd cgroup driver puts a Burstable pod.
const (
	testPodUID    = "6b8f3c2a-1e4d-4a7b-9c5e-0f1a2b3c4d5e"
	testPodCgroup = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6b8f3c2a_1e4d_4a7b_9c5e_0f1a2b3c4d5e.slice"
)

const testMesh = `apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, uid: ` + testPodUID + `, labels: {app: web}}
spec: {nodeName: node-a, serviceAccountName: web, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.1.0.5, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: tcp-web, port: 80, targetPort: 8080}]
`

// TestAgent runs the agent against a real meshd on a cgroup of its own:
// resources reach the maps (the pod found by its UID in a kubelet cgroup
// tree, made in the real cgroup v2 file system), status HTTP
// reports the sync, the Envoy side is set up without an Envoy binary, and
// a stopped agent leaves the maps pinned for the next one, which adopts
// them.
func TestAgent(t *testing.T) {
	cgroup, pins := kernelDirs(t)
	if err := os.MkdirAll(filepath.Join(cgroup, testPodCgroup), 0o755); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mesh.yaml"), []byte(testMesh), 0o644); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cp, err := xds.StartControlPlane(xds.ControlPlaneConfig{ConfigDir: dir, XDSAddr: "127.0.0.1:0", DebugAddr: "127.0.0.1:0",
		PollInterval: 50 * time.Millisecond, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cp.Stop() }()
	run := filepath.Join(t.TempDir(), "run")
	cfg := Config{Node: "node-a", ControlPlane: cp.XDSAddr(), CgroupPath: cgroup, PinDir: pins,
		NodeIP: netip.MustParseAddr("10.0.0.1"), EnvoySocket: filepath.Join(run, "xds.sock"),
		EnvoyBinary: "nodemesh-no-such-envoy", StatusAddr: "127.0.0.1:0", Logger: log}

	a := start(t, cfg)
	waitReady(t, a)
	st, err := a.Dump()
	if err != nil {
		t.Fatal(err)
	}
	checkDump(t, st, cgroup)

	status := getJSON[Status](t, a, "/status")
	ts := status.ADS.Types[dataplanev1.ServiceType]
	if !status.ADS.Connected || !status.ADS.Synced || ts.Acks == 0 || ts.Version == "" || ts.Resources != 1 {
		t.Errorf("/status ads: %+v", status.ADS)
	}
	if status.Apply.Applies == 0 || status.Apply.Stats.Services != 1 || status.Counters == nil {
		t.Errorf("/status apply %+v counters %+v (%s)", status.Apply, status.Counters, status.CountersError)
	}
	if e := status.Envoy; e == nil || e.Socket != cfg.EnvoySocket || !strings.Contains(e.Absent, "nodemesh-no-such-envoy") || e.Process != nil {
		t.Errorf("/status envoy: %+v", e)
	}
	if dump := getJSON[nodeagent.State](t, a, "/debug/dataplane"); len(dump.Services) != 1 {
		t.Errorf("/debug/dataplane: %+v", dump)
	}
	if code := get(t, a, "/readyz"); code != http.StatusOK {
		t.Errorf("/readyz: %d", code)
	}
	checkBootstrap(t, filepath.Join(run, "envoy-bootstrap.json"), cfg.EnvoySocket)
	if _, err := os.Stat(cfg.EnvoySocket); err != nil {
		t.Errorf("xds socket: %v", err)
	}
	checkSyncz(t, cp)
	checkOneUpstream(t, cp, cfg.EnvoySocket)

	// Stop: the maps stay pinned and keep their entries. The next agent
	// finds an "envoy" and supervises it.
	a.stop(t)
	fake := filepath.Join(t.TempDir(), "envoy")
	args := filepath.Join(t.TempDir(), "args")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho \"$@\" > "+args+"\nexec sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg.EnvoyBinary = fake
	a2 := start(t, cfg)
	defer func() {
		a2.stop(t)
		dp, err := nodeagent.Open(nodeagent.Config{Node: cfg.Node, CgroupPath: cgroup, PinDir: pins})
		if err == nil {
			err = dp.Uninstall()
		}
		if err != nil {
			t.Errorf("uninstall: %v", err)
		}
	}()
	before, err := a2.Dump() // before the new agent synced: the pinned maps
	if err != nil {
		t.Fatal(err)
	}
	checkDump(t, before, cgroup)
	waitReady(t, a2)
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, _ := os.ReadFile(args)
		e := a2.Status().Envoy
		if e != nil && e.Process != nil && e.Process.Running && strings.Contains(string(data), "-c "+filepath.Join(run, "envoy-bootstrap.json")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("envoy not started with the bootstrap: status %+v, args %q", e, data)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type started struct {
	*Agent
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, cfg Config) *started {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &started{Agent: a, cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- a.Run(ctx) }()
	return s
}

func (s *started) stop(t *testing.T) {
	s.cancel()
	if err := <-s.done; err != nil {
		t.Errorf("run: %v", err)
	}
}

func waitReady(t *testing.T, a *started) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for a.Ready() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("not ready: %v %+v", a.Ready(), a.Status().ADS)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkDump: the service with its backend, the pod by IP and by cgroup,
// the host workload.
func checkDump(t *testing.T, st nodeagent.State, cgroup string) {
	t.Helper()
	if len(st.Services) != 1 || st.Services[0].VIP != netip.MustParseAddr("10.96.0.10") ||
		len(st.Services[0].Backends) != 1 || st.Services[0].Backends[0].IP != netip.MustParseAddr("10.1.0.5") {
		t.Errorf("services: %+v", st.Services)
	}
	podCgroup, err := nodeagent.CgroupID(filepath.Join(cgroup, testPodCgroup))
	if err != nil {
		t.Fatal(err)
	}
	var host, pod, byCgroup bool
	for _, w := range st.Workloads {
		host = host || w.IP == netip.MustParseAddr("10.0.0.1") && w.Identity == nodeagent.IdentityHost
		pod = pod || w.IP == netip.MustParseAddr("10.1.0.5") && w.Namespace == "shop"
		byCgroup = byCgroup || w.CgroupID == podCgroup
	}
	if !host || !pod || !byCgroup {
		t.Errorf("workloads (host %v, pod %v, pod by cgroup %v): %+v", host, pod, byCgroup, st.Workloads)
	}
}

func get(t *testing.T, a *started, path string) int {
	t.Helper()
	resp, err := http.Get("http://" + a.StatusAddr() + path)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

func getJSON[T any](t *testing.T, a *started, path string) T {
	t.Helper()
	var v T
	resp, err := http.Get("http://" + a.StatusAddr() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %s %v", path, resp.Status, err)
	}
	return v
}

func checkBootstrap(t *testing.T, path, socket string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var b map[string]any
	if err := json.Unmarshal(data, &b); err != nil {
		t.Fatalf("bootstrap %s: %v", path, err)
	}
	if node, _ := b["node"].(map[string]any); node["id"] != "node-a" || !strings.Contains(string(data), socket) {
		t.Errorf("bootstrap node %v, or no socket %s in it", b["node"], socket)
	}
}

// checkSyncz: meshd lists the node with its dataplane types ACKed.
func checkSyncz(t *testing.T, cp *xds.ControlPlane) {
	t.Helper()
	for _, n := range cp.Server().Status() {
		if n.ID != "node-a" {
			continue
		}
		synced := 0
		for _, ts := range n.Types {
			if strings.HasPrefix(ts.TypeURL, dataplanev1.TypeURLPrefix+"nodemesh.dataplane.") && ts.State == "SYNCED" {
				synced++
			}
		}
		if synced != len(dataplanev1.Types) {
			t.Errorf("meshd: %d of %d dataplane types synced: %+v", synced, len(dataplanev1.Types), n.Types)
		}
		return
	}
	t.Errorf("meshd does not list node-a: %+v", cp.Server().Status())
}

// checkOneUpstream opens an Envoy's ADS stream through the agent's xDS
// socket and checks that it is served while the agent still holds exactly
// one TCP connection to meshd.
func checkOneUpstream(t *testing.T, cp *xds.ControlPlane, socket string) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
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
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: resourcev3.ClusterType,
		ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("envoy stream through the agent: %v", err)
	}
	if len(resp.GetResources()) == 0 {
		t.Errorf("no clusters for the envoy of node-a")
	}
	_, port, _ := strings.Cut(cp.XDSAddr(), ":")
	if n := establishedTo(t, port); n != 1 {
		t.Errorf("%d TCP connections to meshd with the agent's and the envoy's streams open, want 1", n)
	}
}

// establishedTo counts established TCP connections (in this netns) whose
// remote port is port.
func establishedTo(t *testing.T, port string) int {
	t.Helper()
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile("/proc/self/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 3 && f[3] == "01" && strings.HasSuffix(f[2], fmt.Sprintf(":%04X", p)) {
			n++
		}
	}
	return n
}
