package spire

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/sys/unix"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/nodeagent"
	"github.com/nodemesh/nodemesh/xds"
)

// Environment of TestHelperImpostorAgent.
const (
	impostorEnv    = "NODEMESH_SPIRE_IMPOSTOR"
	impostorWLEnv  = "NODEMESH_SPIRE_IMPOSTOR_WL"
	impostorXDSEnv = "NODEMESH_SPIRE_IMPOSTOR_XDS"
)

// Users the processes of TestMeshOnSPIRE run as: SPIRE's unix workload
// attestor tells them apart by these.
const (
	meshdUID    = 4711 // meshd (uid and gid)
	impostorGID = 4343 // root with another gid: an agent whose entry names node-b
	webUID      = 4712 // the process of pod demo/web-0 (uid and gid)
	dbUID       = 4713 // the process of pod demo/db-0: no entry matches it
)

// shortTTL is the lifetime of the SVIDs of meshd, the agent of node-a and
// the pod: SPIRE renews them during the test.
const shortTTL = 20 * time.Second

// meshConfig is what meshd serves: a service with a pod on node-a.
const meshConfig = `apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: demo, labels: {app: web}}
spec: {nodeName: node-a, serviceAccountName: web, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.1.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: demo, labels: {app: db}}
spec: {nodeName: node-a, serviceAccountName: db, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.1.0.11}
`

// spireMesh is TestMeshOnSPIRE's world: SPIRE, meshd and mesh-agent
// processes, and what the checks need to reach them.
type spireMesh struct {
	bins                  meshBins
	agent                 *Agent // the SPIRE agent of the node
	base                  string // the test's directory (SPIRE's, meshd's config, the agent's files)
	meshdID, agentID, web spiffeid.ID
	db                    spiffeid.ID // a service account of node-a whose pod no entry matches
	cgroupRoot, pinRoot   string

	xdsAddr, debugAddr string
	meshdArgs          []string
	meshd              *process
	firstMeshd         *x509.Certificate // the certificate meshd presented first

	statusAddr, envoySocket, workloadCerts string
	agentArgs                              []string
	meshAgent                              *process
	reconnects                             int    // the agent's ADS reconnects once synced; -1 before
	podCgroups                             string // the agent's --cgroup: pods' cgroups are <ns>_<pod> below
	webPod, dbPod                          *podProcess

	// own is this test process's SPIRE client: root like the agent of
	// node-a, so it holds that SVID and is an authorized delegate.
	own *identity.SPIRE
}

// startSPIREMesh starts spire-server and spire-agent with the entries of
// the test and builds meshd and mesh-agent.
func startSPIREMesh(t *testing.T) *spireMesh {
	Binaries(t)
	if os.Getuid() != 0 {
		t.Skip("needs root: meshd runs under another uid (unix:uid selectors) and mesh-agent loads eBPF programs")
	}
	m := &spireMesh{agentID: identity.AgentID(td), web: mustID(t, "demo", "web"), db: mustID(t, "demo", "db"), reconnects: -1}
	m.cgroupRoot, m.pinRoot = requireKernel(t)
	m.bins = buildMesh(t)
	srv := StartServer(t, td)
	var err error
	if m.meshdID, err = xds.ControlPlaneID(td); err != nil {
		t.Fatal(err)
	}
	m.agent = StartAgent(t, srv, AgentConfig{AuthorizedDelegates: []spiffeid.ID{m.agentID}}, func(parent spiffeid.ID) {
		srv.CreateEntry(t, Entry{Parent: parent, ID: m.meshdID, Selectors: []string{"unix:uid:" + strconv.Itoa(meshdUID)}, X509SVIDTTL: shortTTL})
		srv.CreateEntry(t, Entry{Parent: parent, ID: m.agentID, Selectors: []string{"unix:uid:0", "unix:gid:0"}, DNSNames: []string{"node-a"}, X509SVIDTTL: shortTTL})
		srv.CreateEntry(t, Entry{Parent: parent, ID: m.agentID, Selectors: []string{"unix:uid:0", "unix:gid:" + strconv.Itoa(impostorGID)}, DNSNames: []string{"node-b"}})
		// The pod's service account, matching the process of its pod on
		// this node only (as spire-controller-manager's per-pod entries
		// match k8s:pod-uid, parented to the node's SPIRE agent).
		srv.CreateEntry(t, Entry{Parent: parent, ID: m.web, Selectors: []string{"unix:uid:" + strconv.Itoa(webUID)}, X509SVIDTTL: shortTTL})
		// db: an entry as for a service account on every node (the k8s
		// selectors alone, no process of this node matches them): asking
		// by selectors would get it anywhere.
		srv.CreateEntry(t, Entry{Parent: parent, ID: m.db, Selectors: []string{"k8s:ns:demo", "k8s:sa:db"}})
	})
	if m.own, err = identity.NewSPIRE(identity.SPIREConfig{WorkloadAPIAddr: m.agent.WorkloadAPIAddr, AdminSocketAddr: m.agent.AdminAddr}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.own.Close() })

	// meshd, as uid 4711, must reach the sockets and its config.
	m.base = filepath.Dir(srv.Dir)
	if err := os.Chmod(m.base, 0o711); err != nil {
		t.Fatal(err)
	}
	confDir := filepath.Join(m.base, "mesh")
	if err := os.Mkdir(confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(confDir, "mesh.yaml"), []byte(meshConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	m.xdsAddr, m.debugAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	m.meshdArgs = []string{"--config", confDir, "--spire-socket", m.agent.WorkloadAPIAddr, "--trust-domain", td.Name(),
		"--xds-addr", m.xdsAddr, "--debug-addr", m.debugAddr}
	return m
}

// startMeshd runs meshd as uid 4711 in SPIRE mode and waits until it
// serves.
func (m *spireMesh) startMeshd(t *testing.T) {
	t0 := time.Now()
	m.meshd = startAs(t, &syscall.Credential{Uid: meshdUID, Gid: meshdUID, Groups: []uint32{}}, "meshd", m.bins.meshd,
		filepath.Join(m.base, "meshd.log"), m.meshdArgs...)
	waitFor(t, "meshd", 45*time.Second, func() error {
		if err := m.meshd.checkRunning(); err != nil {
			t.Fatal(err)
		}
		_, err := httpGet("http://" + m.debugAddr + "/readyz")
		return err
	})
	t.Logf("meshd (uid %d) serving with its SVID from SPIRE after %s", meshdUID, time.Since(t0).Round(time.Millisecond))
	if log, _ := os.ReadFile(m.meshd.log); strings.Contains(string(log), "ca-dir") {
		t.Errorf("meshd in SPIRE mode mentions a CA directory:\n%s", log)
	}
	m.firstMeshd = m.meshdCert(t)
	if id, err := x509svid.IDFromCert(m.firstMeshd); err != nil || id != m.meshdID {
		t.Fatalf("meshd presents %s (%v), want %s", id, err, m.meshdID)
	}
}

// startMeshAgent runs mesh-agent for node-a as root, its eBPF programs on
// a test cgroup and pin directory, removed at the end.
func (m *spireMesh) startMeshAgent(t *testing.T) {
	tag := fmt.Sprintf("nmspire-%d", os.Getpid())
	cgroup, pinDir := filepath.Join(m.cgroupRoot, tag), filepath.Join(m.pinRoot, tag)
	if err := os.Mkdir(cgroup, 0o755); err != nil {
		t.Fatal(err)
	}
	m.podCgroups = cgroup
	// The pods run before the agent starts, as on a node.
	m.webPod = startPod(t, cgroup, "demo_web-0", webUID)
	m.dbPod = startPod(t, cgroup, "demo_db-0", dbUID)
	m.statusAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	m.envoySocket = filepath.Join(m.base, "envoy", "xds.sock")
	m.workloadCerts = filepath.Join(m.base, "workload-certs")
	m.agentArgs = []string{"--node", "node-a", "--control-plane", m.xdsAddr, "--trust-domain", td.Name(),
		"--spire-socket", m.agent.WorkloadAPIAddr, "--spire-admin-socket", m.agent.AdminAddr,
		"--cgroup", cgroup, "--pin-dir", pinDir, "--status-addr", m.statusAddr, "--node-ip", "10.1.0.1",
		"--envoy-socket", m.envoySocket, "--envoy", filepath.Join(m.base, "no-envoy"), "--workload-certs-dir", m.workloadCerts}
	m.meshAgent = start(t, "mesh-agent", m.bins.agent, filepath.Join(m.base, "mesh-agent.log"), m.agentArgs...)
	t.Cleanup(func() {
		// Cleanups run last-in first-out: start's own kill comes after
		// this one, so kill here before removing the pins and cgroup.
		m.meshAgent.cmd.Process.Kill()
		<-m.meshAgent.exited
		for _, pod := range []*podProcess{m.webPod, m.dbPod} {
			pod.remove(t)
		}
		os.RemoveAll(pinDir)
		if err := os.Remove(cgroup); err != nil {
			t.Logf("remove test cgroup %s: %v", cgroup, err)
		}
	})
}

// requireKernel returns the cgroup v2 mount and the bpffs mount the agent
// needs, skipping when the machine has none.
func requireKernel(t *testing.T) (cgroupRoot, pinRoot string) {
	t.Helper()
	cgroupRoot, err := nodeagent.CgroupV2Mount()
	if err != nil {
		t.Skipf("no cgroup v2: %v", err)
	}
	pinRoot = "/sys/fs/bpf"
	var st unix.Statfs_t
	if err := unix.Statfs(pinRoot, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		t.Skipf("no bpffs at %s (%v)", pinRoot, err)
	}
	return cgroupRoot, pinRoot
}

type meshBins struct{ meshd, agent string }

// buildMesh builds cmd/meshd and cmd/mesh-agent into a directory every
// user may read (meshd runs as another uid).
func buildMesh(t *testing.T) meshBins {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	dir := tempDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, err := exec.Command(goTool, "build", "-o", dir+"/",
		"github.com/nodemesh/nodemesh/cmd/meshd", "github.com/nodemesh/nodemesh/cmd/mesh-agent").CombinedOutput()
	if err != nil {
		t.Fatalf("build meshd and mesh-agent: %v\n%s", err, out)
	}
	t.Logf("built meshd and mesh-agent in %s", time.Since(start).Round(time.Millisecond))
	return meshBins{meshd: filepath.Join(dir, "meshd"), agent: filepath.Join(dir, "mesh-agent")}
}

func httpGet(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s: %s", url, resp.Status, b)
	}
	return string(b), nil
}

// adsStatus is the part of mesh-agent's /status this test reads.
type adsStatus struct {
	Connected, Synced bool
	Reconnects        int
	LastError         string
}

func agentADS(statusAddr string) (adsStatus, error) {
	var st struct {
		ADS adsStatus `json:"ads"`
	}
	body, err := httpGet("http://" + statusAddr + "/status")
	if err != nil {
		return st.ADS, err
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		return st.ADS, fmt.Errorf("status %s: %w", body, err)
	}
	return st.ADS, nil
}

// meshdCert is the certificate meshd presents to a new connection (the
// handshake authenticates this process with its own SVID).
func (m *spireMesh) meshdCert(t *testing.T) *x509.Certificate {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	src, err := m.own.X509Source(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := xds.AgentClientTLS(src, src, td)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", m.xdsAddr, cfg)
	if err != nil {
		t.Fatalf("TLS to meshd: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}
