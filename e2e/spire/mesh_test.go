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

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/nodeagent"
	"github.com/nodemesh/nodemesh/translate/secure"
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
)

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
`

// The mesh with SVIDs only from SPIRE: the real meshd binary (--spire-socket,
// no CA) and the real mesh-agent binary (--spire-socket,
// --spire-admin-socket) get their own SVIDs from a real spire-agent through
// the Workload API; the agent's ADS stream is accepted as node-a because
// its entry has -dns node-a. An agent SVID whose entry names node-b is
// refused when it claims node-a (by mesh-agent itself at start, and by
// meshd when a client tries anyway), and meshd refuses to start with an
// SVID that is not its own ID.
func TestMeshOnSPIRE(t *testing.T) {
	Binaries(t)
	if os.Getuid() != 0 {
		t.Skip("needs root: meshd runs under another uid (unix:uid selectors) and mesh-agent loads eBPF programs")
	}
	cgroupRoot, pinRoot := requireKernel(t)
	bins := buildMesh(t)
	srv := StartServer(t, td)
	meshdID, err := xds.ControlPlaneID(td)
	if err != nil {
		t.Fatal(err)
	}
	agentID := identity.AgentID(td)
	webID := mustID(t, "demo", "web")
	const webTTL, shortTTL = 20 * time.Second, 20 * time.Second
	agent := StartAgent(t, srv, AgentConfig{AuthorizedDelegates: []spiffeid.ID{agentID}}, func(parent spiffeid.ID) {
		// meshd and the agent of node-a get short-lived SVIDs: SPIRE
		// renews them during the test.
		srv.CreateEntry(t, Entry{Parent: parent, ID: meshdID, Selectors: []string{"unix:uid:" + strconv.Itoa(meshdUID)}, X509SVIDTTL: shortTTL})
		srv.CreateEntry(t, Entry{Parent: parent, ID: agentID, Selectors: []string{"unix:uid:0", "unix:gid:0"}, DNSNames: []string{"node-a"}, X509SVIDTTL: shortTTL})
		srv.CreateEntry(t, Entry{Parent: parent, ID: agentID, Selectors: []string{"unix:uid:0", "unix:gid:" + strconv.Itoa(impostorGID)}, DNSNames: []string{"node-b"}})
		// The pod's service account, with the selectors SPIRE's k8s
		// workload attestor gives its pods; short-lived, so that SPIRE
		// renews it during the test.
		srv.CreateEntry(t, Entry{Parent: parent, ID: webID, Selectors: []string{"k8s:ns:demo", "k8s:sa:web"}, X509SVIDTTL: webTTL})
	})
	// meshd, as uid 4711, must reach the sockets and its config.
	base := filepath.Dir(srv.Dir)
	if err := os.Chmod(base, 0o711); err != nil {
		t.Fatal(err)
	}
	confDir := filepath.Join(base, "mesh")
	if err := os.Mkdir(confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(confDir, "mesh.yaml"), []byte(meshConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	xdsAddr, debugAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	meshdArgs := []string{"--config", confDir, "--spire-socket", agent.WorkloadAPIAddr, "--trust-domain", td.Name(),
		"--xds-addr", xdsAddr, "--debug-addr", debugAddr}

	t.Run("meshd refuses another SPIFFE ID", func(t *testing.T) {
		// As root (gid 0), SPIRE issues the agent's ID.
		ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, bins.meshd, meshdArgs...).CombinedOutput()
		if err == nil || ctx.Err() != nil {
			t.Fatalf("meshd as root: %v (want a refusal at start)\n%s", err, out)
		}
		if want := "SPIRE issued meshd the SVID " + agentID.String(); !strings.Contains(string(out), want) {
			t.Fatalf("meshd's error does not say %q:\n%s", want, out)
		}
	})

	t0 := time.Now()
	meshd := startAs(t, &syscall.Credential{Uid: meshdUID, Gid: meshdUID, Groups: []uint32{}}, "meshd", bins.meshd,
		filepath.Join(base, "meshd.log"), meshdArgs...)
	waitFor(t, "meshd", 45*time.Second, func() error {
		if err := meshd.checkRunning(); err != nil {
			t.Fatal(err)
		}
		_, err := httpGet("http://" + debugAddr + "/readyz")
		return err
	})
	t.Logf("meshd (uid %d) serving with its SVID from SPIRE after %s", meshdUID, time.Since(t0).Round(time.Millisecond))
	if log, _ := os.ReadFile(meshd.log); strings.Contains(string(log), "ca-dir") {
		t.Errorf("meshd in SPIRE mode mentions a CA directory:\n%s", log)
	}
	// This test process is root too: it holds node-a's agent SVID.
	own, err := identity.NewSPIRE(identity.SPIREConfig{WorkloadAPIAddr: agent.WorkloadAPIAddr, AdminSocketAddr: agent.AdminAddr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { own.Close() })
	firstMeshd := meshdCert(t, own, xdsAddr)
	if id, err := x509svidID(firstMeshd); err != nil || id != meshdID {
		t.Fatalf("meshd presents %s (%v), want %s", id, err, meshdID)
	}

	// The node agent, as root: eBPF programs on a test cgroup.
	tag := fmt.Sprintf("nmspire-%d", os.Getpid())
	cgroup, pinDir := filepath.Join(cgroupRoot, tag), filepath.Join(pinRoot, tag)
	if err := os.Mkdir(cgroup, 0o755); err != nil {
		t.Fatal(err)
	}
	statusAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	envoySocket := filepath.Join(base, "envoy", "xds.sock")
	workloadCerts := filepath.Join(base, "workload-certs")
	agentArgs := []string{"--node", "node-a", "--control-plane", xdsAddr, "--trust-domain", td.Name(),
		"--spire-socket", agent.WorkloadAPIAddr, "--spire-admin-socket", agent.AdminAddr,
		"--cgroup", cgroup, "--pin-dir", pinDir, "--status-addr", statusAddr, "--node-ip", "10.1.0.1",
		"--envoy-socket", envoySocket, "--envoy", filepath.Join(base, "no-envoy"), "--workload-certs-dir", workloadCerts}
	t0 = time.Now()
	meshAgent := start(t, "mesh-agent", bins.agent, filepath.Join(base, "mesh-agent.log"), agentArgs...)
	t.Cleanup(func() {
		// Cleanups run last-in first-out: start's own kill comes after
		// this one, so kill here before removing the pins and cgroup.
		meshAgent.cmd.Process.Kill()
		<-meshAgent.exited
		os.RemoveAll(pinDir)
		if err := os.Remove(cgroup); err != nil {
			t.Logf("remove test cgroup %s: %v", cgroup, err)
		}
	})

	reconnects := -1
	t.Run("agent of node-a is accepted", func(t *testing.T) {
		waitFor(t, "mesh-agent synced", 45*time.Second, func() error {
			if err := meshAgent.checkRunning(); err != nil {
				t.Fatal(err)
			}
			st, err := agentADS(statusAddr)
			if err != nil {
				return err
			}
			if !st.Synced {
				return fmt.Errorf("not synced: %+v", st)
			}
			reconnects = st.Reconnects
			return nil
		})
		t.Logf("mesh-agent synced with meshd over mTLS after %s", time.Since(t0).Round(time.Millisecond))
		body, err := httpGet("http://" + debugAddr + "/debug/syncz?format=json")
		if err != nil {
			t.Fatal(err)
		}
		var nodes []xds.NodeStatus
		if err := json.Unmarshal([]byte(body), &nodes); err != nil {
			t.Fatal(err)
		}
		if len(nodes) != 1 || nodes[0].ID != "node-a" || nodes[0].Streams < 1 {
			t.Fatalf("meshd's syncz: want node-a connected:\n%s", body)
		}
		acked := 0
		for _, ty := range nodes[0].Types {
			if ty.Acked != "" && ty.Acked == ty.Sent {
				acked++
			}
		}
		if acked == 0 {
			t.Fatalf("node-a ACKed nothing:\n%s", body)
		}
		t.Logf("meshd: node-a connected, %d types ACKed", acked)

		// meshd names the pod's SDS secret in node-a's config but serves
		// no secret: the agent does, from SPIRE.
		body, err = httpGet("http://" + debugAddr + "/debug/config_dump?node=node-a")
		if err != nil {
			t.Fatal(err)
		}
		var dump struct {
			Dataplane map[string]json.RawMessage `json:"dataplane"`
		}
		if err := json.Unmarshal([]byte(body), &dump); err != nil {
			t.Fatal(err)
		}
		for typ := range dump.Dataplane {
			if typ == "SDS" || strings.Contains(typ, "Secret") {
				t.Errorf("meshd serves node-a %s in SPIRE mode", typ)
			}
		}
		if !strings.Contains(body, `"`+webID.String()+`"`) {
			t.Errorf("node-a's config does not name the SDS secret %s:\n%s", webID, body)
		}
	})

	t.Run("the agent serves its workload's SVID from SPIRE over local SDS", func(t *testing.T) {
		testWorkloadSVID(t, own, envoySocket, webID, webTTL)
	})

	t.Run("SPIRE's renewals keep the mesh connected", func(t *testing.T) {
		if reconnects < 0 {
			t.Skip("the agent never synced")
		}
		var renewed *x509.Certificate
		waitFor(t, "meshd's renewed SVID", 2*shortTTL, func() error {
			renewed = meshdCert(t, own, xdsAddr)
			if renewed.Equal(firstMeshd) {
				return fmt.Errorf("meshd still presents serial %s", firstMeshd.SerialNumber)
			}
			return nil
		})
		if err := meshd.checkRunning(); err != nil {
			t.Fatal(err)
		}
		t.Logf("meshd presents SPIRE's renewed SVID (serial %s -> %s) %s after the first one's NotBefore, without a restart",
			firstMeshd.SerialNumber, renewed.SerialNumber, renewed.NotBefore.Sub(firstMeshd.NotBefore).Round(time.Second))
		st, err := agentADS(statusAddr)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Connected || st.Reconnects != reconnects {
			t.Fatalf("the agent's stream did not survive the renewals: connected %v, reconnects %d -> %d (%s)", st.Connected, reconnects, st.Reconnects, st.LastError)
		}
	})

	t.Run("the agent writes its workload's SVID from SPIRE for proxyless gRPC", func(t *testing.T) {
		dir := filepath.Join(workloadCerts, "demo", "web")
		var svid *x509svid.SVID
		waitFor(t, "workload cert files", 20*time.Second, func() error {
			var err error
			svid, err = x509svid.Load(filepath.Join(dir, "cert-chain.pem"), filepath.Join(dir, "key.pem"))
			return err
		})
		roots, err := x509bundle.Load(td, filepath.Join(dir, "root-cert.pem"))
		if err != nil {
			t.Fatal(err)
		}
		if id, _, err := x509svid.Verify(svid.Certificates, roots); err != nil || id != webID {
			t.Fatalf("%s holds %s (%v); want an SVID of %s verified by root-cert.pem", dir, id, err, webID)
		}
		t.Logf("%s: SVID %s (serial %s) from SPIRE", dir, svid.ID, svid.Certificates[0].SerialNumber)
	})

	t.Run("an agent whose entry names node-b", func(t *testing.T) {
		impostor := &syscall.Credential{Uid: 0, Gid: impostorGID, Groups: []uint32{}}
		ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
		defer cancel()
		// mesh-agent itself says what is wrong with the registration.
		cmd := exec.CommandContext(ctx, bins.agent, agentArgs...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: impostor}
		out, err := cmd.CombinedOutput()
		if err == nil || ctx.Err() != nil {
			t.Fatalf("mesh-agent with node-b's SVID: %v (want a refusal at start)\n%s", err, out)
		}
		if !strings.Contains(string(out), `names node "node-b"`) || !strings.Contains(string(out), "-dns node-a") {
			t.Fatalf("mesh-agent's error does not name node-b and the fix:\n%s", out)
		}
		t.Logf("mesh-agent: %s", strings.TrimSpace(string(out)))

		// A client that tries anyway is refused by meshd for node-a and
		// served as node-b.
		helper := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperImpostorAgent$", "-test.v")
		helper.Env = append(os.Environ(), impostorEnv+"=1", impostorWLEnv+"="+agent.WorkloadAPIAddr, impostorXDSEnv+"="+xdsAddr)
		helper.SysProcAttr = &syscall.SysProcAttr{Credential: impostor}
		out, err = helper.CombinedOutput()
		if err != nil {
			t.Fatalf("helper process: %v\n%s", err, out)
		}
		for _, want := range []string{"RESULT node-a code=PermissionDenied", "RESULT node-b code=OK", "cn=node-b"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("helper output lacks %q:\n%s", want, out)
			}
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "RESULT ") || strings.HasPrefix(line, "SVID ") {
				t.Log("impostor: " + line)
			}
		}
	})
}

// TestHelperImpostorAgent is the client of TestMeshOnSPIRE that holds an
// agent SVID for node-b (run as a subprocess with gid 4343). It does
// nothing in a normal test run.
func TestHelperImpostorAgent(t *testing.T) {
	if os.Getenv(impostorEnv) == "" {
		t.Skip("helper process of TestMeshOnSPIRE; runs only as its subprocess")
	}
	sp, err := identity.NewSPIRE(identity.SPIREConfig{WorkloadAPIAddr: os.Getenv(impostorWLEnv)})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 40*time.Second)
	defer cancel()
	src, err := sp.X509Source(ctx)
	if err != nil {
		t.Fatal(err)
	}
	own, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("SVID id=%s cn=%s dns=%v\n", own.ID, own.Certificates[0].Subject.CommonName, own.Certificates[0].DNSNames)
	cfg, err := xds.AgentClientTLS(src, src, td)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(os.Getenv(impostorXDSEnv), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, node := range []string{"node-a", "node-b"} {
		err := adsOnce(ctx, conn, node)
		fmt.Printf("RESULT %s code=%s err=%v\n", node, status.Code(err), err)
	}
}

// adsOnce opens an ADS stream as node and waits for one response.
func adsOnce(ctx context.Context, conn *grpc.ClientConn, node string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
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

// testWorkloadSVID plays the node's Envoy: it asks mesh-agent's local SDS
// for the SVID of web (a pod of node-a in meshd's config) and the bundle,
// checks them against what SPIRE hands out (this test process holds the
// agent's identity, an authorized delegate), and waits for SPIRE's renewal
// to reach it.
func testWorkloadSVID(t *testing.T, sp *identity.SPIRE, envoySocket string, web spiffeid.ID, ttl time.Duration) {
	ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
	defer cancel()
	bundle, err := sp.TrustBundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+envoySocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{secure.SecretName(web), secure.BundleSecretName(td)}
	req := &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: resourcev3.SecretType, ResourceNames: names}
	// recvSVID waits for a response holding web's SVID and ACKs it.
	recvSVID := func() *x509svid.SVID {
		t.Helper()
		for {
			if err := st.Send(req); err != nil {
				t.Fatal(err)
			}
			resp, err := st.Recv()
			if err != nil {
				t.Fatalf("local SDS: %v", err)
			}
			req.VersionInfo, req.ResponseNonce = resp.GetVersionInfo(), resp.GetNonce()
			for _, a := range resp.GetResources() {
				sec := &tlsv3.Secret{}
				if err := a.UnmarshalTo(sec); err != nil {
					t.Fatal(err)
				}
				if sec.GetName() != secure.SecretName(web) {
					continue
				}
				tc := sec.GetTlsCertificate()
				svid, err := x509svid.Parse(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
				if err != nil {
					t.Fatalf("secret %s: %v", sec.GetName(), err)
				}
				return svid
			}
		}
	}
	t0 := time.Now()
	first := recvSVID()
	if id, _, err := x509svid.Verify(first.Certificates, bundle); err != nil || id != web {
		t.Fatalf("local SDS served %s (%v); want an SVID of %s from SPIRE's CA", id, err, web)
	}
	leaf := first.Certificates[0]
	t.Logf("local SDS served %s (serial %s, lifetime %s) %s after asking", web, leaf.SerialNumber, leaf.NotAfter.Sub(leaf.NotBefore), time.Since(t0).Round(time.Millisecond))
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got > ttl+time.Minute {
		t.Errorf("SVID lifetime %s: not the entry's %s (not issued by SPIRE for this entry?)", got, ttl)
	}
	// The SVID SPIRE's Delegated Identity API hands this process is the
	// same one (or its renewal).
	direct, err := sp.SVIDFor(ctx, identity.Workload{ID: web, Selectors: []identity.Selector{{Type: "k8s", Value: "ns:demo"}, {Type: "k8s", Value: "sa:web"}}})
	if err != nil {
		t.Fatal(err)
	}
	if !direct.Certificates[0].Equal(leaf) && direct.Certificates[0].NotBefore.Before(leaf.NotBefore) {
		t.Errorf("SPIRE's SVID for %s (serial %s) is not the agent's (serial %s)", web, direct.Certificates[0].SerialNumber, leaf.SerialNumber)
	}
	for {
		next := recvSVID()
		if next.Certificates[0].Equal(leaf) {
			continue // same SVID (a bundle update)
		}
		if time.Now().After(leaf.NotAfter) {
			t.Errorf("renewed SVID arrived after the previous one expired")
		}
		t.Logf("renewed SVID (serial %s) pushed over local SDS %s after the first one's NotBefore", next.Certificates[0].SerialNumber, time.Since(leaf.NotBefore).Round(time.Second))
		return
	}
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
// handshake authenticates this process with its own SVID from sp).
func meshdCert(t *testing.T, sp *identity.SPIRE, xdsAddr string) *x509.Certificate {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	src, err := sp.X509Source(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := xds.AgentClientTLS(src, src, td)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", xdsAddr, cfg)
	if err != nil {
		t.Fatalf("TLS to meshd: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

func x509svidID(cert *x509.Certificate) (spiffeid.ID, error) { return x509svid.IDFromCert(cert) }
