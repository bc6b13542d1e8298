package agent

// Proof with real parts that the agent feeds proxyless gRPC workloads and
// the node's Envoy their SVIDs: a real meshd (xds.StartControlPlane with
// the built-in CA, ADS and CreateCertificate over mTLS), a real agent for
// node-1 (kernel data plane, ADS, Envoy proxy) whose workload SVID manager
// gets the SVIDs through identity.CertClient with the agent's own TLS
// credentials, and gRPC-Go's xDS client and server with xDS credentials
// whose file_watcher certificate providers read the files the agent
// wrote. gRPC verifies meshd against the SPIFFE bundle map only with
// GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true at init, so the body runs in a
// child process with that variable set.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	sotwclient "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	grpcxds "google.golang.org/grpc/xds"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/internal/grpcxdstest"
	"github.com/nodemesh/nodemesh/nodeagent"
	"github.com/nodemesh/nodemesh/translate/secure"
	"github.com/nodemesh/nodemesh/xds"
)

const (
	gNS      = "grpcsvid"
	gPort    = 7070
	childEnv = "NODEMESH_AGENT_WORKLOAD_SVIDS_CHILD"
)

// gMesh: on node-1 the echo server (service account echo-server, behind
// Service echo) and a client pod (client); on node-2 a pod of "other".
func gMesh(echo *net.TCPAddr) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata: {name: %[1]s}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: %[1]s}
spec:
  selector: {app: echo}
  ports: [{name: grpc, port: %[2]d, targetPort: %[3]d}]
---
apiVersion: v1
kind: Pod
metadata: {name: echo-0, namespace: %[1]s, labels: {app: echo}}
spec: {nodeName: node-1, serviceAccountName: echo-server, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: %[4]s, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: %[1]s, labels: {app: client}}
spec: {nodeName: node-1, serviceAccountName: client, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.1.0.7, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other-0, namespace: %[1]s, labels: {app: other}}
spec: {nodeName: node-2, serviceAccountName: other, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.1.0.8, conditions: [{type: Ready, status: "True"}]}
`, gNS, gPort, echo.Port, echo.IP)
}

func TestWorkloadSVIDsGRPCXDS(t *testing.T) {
	if os.Getenv(childEnv) != "1" {
		kernelDirs(t) // skips here, with the reason, where the child would
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestWorkloadSVIDsGRPCXDS$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), childEnv+"=1", "GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true")
		out, err := cmd.CombinedOutput()
		t.Logf("child process (GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true):\n%s", out)
		if err != nil {
			t.Fatalf("child: %v", err)
		}
		if !strings.Contains(string(out), "--- PASS: TestWorkloadSVIDsGRPCXDS") || strings.Contains(string(out), "--- SKIP") {
			t.Fatal("the child did not run the test")
		}
		return
	}
	cgroup, pins := kernelDirs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ca, err := identity.NewCA(identity.CAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	td := ca.TrustDomain()
	clientID, echoID, otherID := wid(t, gNS, "client"), wid(t, gNS, "echo-server"), wid(t, gNS, "other")
	echoLis := listenLoopback(t)

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mesh.yaml"), []byte(gMesh(echoLis.Addr().(*net.TCPAddr))), 0o644); err != nil {
		t.Fatal(err)
	}
	cp, err := xds.StartControlPlane(xds.ControlPlaneConfig{ConfigDir: dir, XDSAddr: "127.0.0.1:0", DebugAddr: "127.0.0.1:0",
		PollInterval: 50 * time.Millisecond, Security: &xds.ControlPlaneSecurity{CA: ca}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cp.Stop() }()

	// The agent of node-1: its SVID as meshd --bootstrap-agents issues it;
	// one set of TLS credentials for ADS and for the CertClient.
	agentSVID, err := ca.NewAgentSVID("node-1")
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := xds.AgentClientTLS(agentSVID, ca, td)
	if err != nil {
		t.Fatal(err)
	}
	creds := grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg))
	var refused atomic.Int64 // CreateCertificate calls meshd refused
	certConn, err := grpc.NewClient(cp.XDSAddr(), creds, grpc.WithChainUnaryInterceptor(
		func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			err := invoker(ctx, method, req, reply, cc, opts...)
			if strings.HasSuffix(method, "/CreateCertificate") && status.Code(err) == codes.PermissionDenied {
				refused.Add(1)
			}
			return err
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer certConn.Close()
	certs, err := identity.NewCertClient(identity.CertClientConfig{Conn: certConn, TrustDomain: td, Bundle: ca, TTL: svidTTL})
	if err != nil {
		t.Fatal(err)
	}
	certsDir := filepath.Join(t.TempDir(), "certs")
	socket := filepath.Join(t.TempDir(), "run", "xds.sock")
	a := start(t, Config{Node: "node-1", ControlPlane: cp.XDSAddr(), DialOptions: []grpc.DialOption{creds}, CgroupPath: cgroup, PinDir: pins,
		NodeIP: netip.MustParseAddr("10.0.0.1"), EnvoySocket: socket, EnvoyBinary: "nodemesh-no-such-envoy", StatusAddr: "127.0.0.1:0",
		WorkloadSVIDs: certs, WorkloadCertsDir: certsDir, LocalSDS: true, WorkloadSVIDRetry: 200 * time.Millisecond, Logger: log})
	defer func() {
		a.stop(t)
		if dp, err := openForUninstall(cgroup, pins); err == nil {
			_ = dp.Uninstall()
		}
	}()
	waitReady(t, a)

	clientDir, echoDir := WorkloadCertsPath(certsDir, gNS, "client"), WorkloadCertsPath(certsDir, gNS, "echo-server")
	var firstClient *x509svid.SVID
	waitUntil(t, "the agent's files for client and echo-server", 20*time.Second, func() bool {
		c, _, err1 := readFiles(clientDir, clientID)
		_, _, err2 := readFiles(echoDir, echoID)
		firstClient = c
		return err1 == nil && err2 == nil
	})

	t.Run("no files for a service account without pods on the node, and meshd refuses it", func(t *testing.T) {
		if _, err := os.Stat(WorkloadCertsPath(certsDir, gNS, "other")); !os.IsNotExist(err) {
			t.Errorf("other's files: %v", err)
		}
		if _, err := certs.SVIDFor(ctx, identity.Workload{ID: otherID}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("SVID for %s through node-1's agent: %v, want PermissionDenied", otherID, err)
		}
		if n := refused.Load(); n != 1 {
			t.Errorf("meshd refused %d certificate requests, want 1", n)
		}
	})

	grpcxdstest.StartServer(t, ctx, echoLis, filesFor(echoDir), clientID)
	call := func(t *testing.T, nodeID string) (caller, serial string, server spiffeid.ID) {
		t.Helper()
		c := grpcClient(t, cp, ca, filesFor(clientDir), nodeID)
		cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
		defer ccancel()
		var p peer.Peer
		r, err := c.UnaryCall(cctx, &testgrpc.SimpleRequest{}, grpc.WaitForReady(true), grpc.Peer(&p))
		if err != nil {
			t.Fatalf("call: %v", err)
		}
		ti, ok := p.AuthInfo.(credentials.TLSInfo)
		if !ok || len(ti.State.PeerCertificates) == 0 {
			t.Fatalf("no server certificate (auth info %T)", p.AuthInfo)
		}
		server, err = x509svid.IDFromCert(ti.State.PeerCertificates[0])
		if err != nil {
			t.Fatal(err)
		}
		return r.GetHostname(), r.GetUsername(), server
	}

	t.Run("mTLS call with the SVIDs the agent wrote", func(t *testing.T) {
		caller, serial, server := call(t, "grpcsvid-client-1")
		if caller != clientID.String() || server != echoID {
			t.Fatalf("server saw %s, client saw %s; want %s and %s", caller, server, clientID, echoID)
		}
		t.Logf("call over mTLS: server authenticated %s (serial %s), client authenticated %s; first client serial %s",
			caller, serial, server, serialOf(firstClient))
	})

	t.Run("renewal rewrites the files and new connections present the new serial", func(t *testing.T) {
		var renewed *x509svid.SVID
		waitUntil(t, "a renewed client SVID in the files", 20*time.Second, func() bool {
			c, _, err := readFiles(clientDir, clientID)
			renewed = c
			return err == nil && serialOf(c) != serialOf(firstClient)
		})
		time.Sleep(1500 * time.Millisecond) // file_watcher refresh_interval is 1s
		caller, serial, _ := call(t, "grpcsvid-client-2")
		after, _, err := readFiles(clientDir, clientID)
		if err != nil {
			t.Fatal(err)
		}
		if caller != clientID.String() || serial == serialOf(firstClient) || (serial != serialOf(renewed) && serial != serialOf(after)) {
			t.Fatalf("new connection presented %s serial %s; first %s, renewed %s, now %s", caller, serial, serialOf(firstClient), serialOf(renewed), serialOf(after))
		}
		st := a.Status().WorkloadSVIDs
		if st == nil || len(st.Accounts) != 2 || st.Accounts[0].Renewals < 2 {
			t.Errorf("status: %+v", st)
		}
		t.Logf("renewed: first serial %s, new connection serial %s", serialOf(firstClient), serial)
	})

	t.Run("local SDS: the node's Envoy gets the SVIDs from the agent", func(t *testing.T) {
		checkLocalSDS(t, ctx, socket, ca, clientDir, clientID, echoID, otherID)
		if st := a.Status().Envoy; st == nil || !st.LocalSDS || st.Streams.LocalSecretPushes < 3 {
			t.Errorf("envoy status %+v: want local SDS with at least 3 pushes", st)
		}
	})
}

// checkLocalSDS connects go-control-plane's ADS client to the agent's
// socket as the node's Envoy: a wildcard SotW Secret stream gets the
// local service accounts' SVIDs and the bundle, then a renewal pushed; on
// a Delta stream a secret of a service account not on the node is never
// served while clusters still come from meshd. meshd could serve these
// secrets too, but with keys of its own: the served key must be the one
// in the agent's files (it never leaves the agent).
func checkLocalSDS(t *testing.T, ctx context.Context, socket string, ca *identity.CA, clientDir string, clientID, echoID, otherID spiffeid.ID) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	defer scancel()
	sds := sotwclient.NewADSClient(sctx, &corev3.Node{Id: "node-1"}, resourcev3.SecretType)
	if err := sds.InitConnect(conn, grpc.WaitForReady(true)); err != nil {
		t.Fatal(err)
	}
	bundleName := secure.BundleSecretName(ca.TrustDomain())
	fileKey := func() string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(clientDir, KeyFile))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	// fetchOnce returns the next SotW response's secrets and whether the
	// served key of client is the one in the agent's files just before or
	// after it (renewals run every few seconds: a response queued before
	// the latest renewal is followed by a newer one).
	fetchOnce := func() (map[string]*tlsv3.Secret, bool) {
		t.Helper()
		before := fileKey()
		r, err := sds.Fetch()
		if err != nil {
			t.Fatal(err)
		}
		if err := sds.Ack(); err != nil {
			t.Fatal(err)
		}
		out := map[string]*tlsv3.Secret{}
		for _, res := range r.Resources {
			var s tlsv3.Secret
			if err := res.UnmarshalTo(&s); err != nil {
				t.Fatal(err)
			}
			out[s.GetName()] = &s
		}
		if len(out) != 3 || out[clientID.String()] == nil || out[echoID.String()] == nil || out[bundleName] == nil {
			t.Fatalf("secrets %v, want %s, %s and %s", keys(out), clientID, echoID, bundleName)
		}
		key := string(out[clientID.String()].GetTlsCertificate().GetPrivateKey().GetInlineBytes())
		return out, key == before || key == fileKey()
	}
	fetch := func() map[string]*tlsv3.Secret {
		t.Helper()
		for range 3 {
			if out, agents := fetchOnce(); agents {
				return out
			}
		}
		t.Fatal("the served key of client is not the agent's (3 responses): the secret did not come from the agent")
		return nil
	}
	first := fetch()
	firstSerial := secretSVID(t, first[clientID.String()], ca).Certificates[0].SerialNumber
	roots, err := identity.ParseCertsPEM(first[bundleName].GetValidationContext().GetTrustedCa().GetInlineBytes())
	if err != nil || len(roots) != 1 || !roots[0].Equal(ca.Root()) {
		t.Fatalf("bundle secret: %d roots (%v)", len(roots), err)
	}
	for {
		next := fetch() // renewals are pushed
		if secretSVID(t, next[clientID.String()], ca).Certificates[0].SerialNumber.Cmp(firstSerial) != 0 {
			break
		}
	}

	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(sctx, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	for _, req := range []*discovery.DeltaDiscoveryRequest{
		{Node: &corev3.Node{Id: "node-1"}, TypeUrl: resourcev3.SecretType, ResourceNamesSubscribe: []string{otherID.String(), echoID.String()}},
		{TypeUrl: resourcev3.ClusterType, ResourceNamesSubscribe: []string{"*"}},
	} {
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	var gotSecret, gotClusters bool
	for !gotSecret || !gotClusters {
		r, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		switch r.GetTypeUrl() {
		case resourcev3.SecretType:
			for _, res := range r.GetResources() {
				if res.GetName() != echoID.String() {
					t.Fatalf("served secret %s on node-1", res.GetName())
				}
				gotSecret = true
			}
		case resourcev3.ClusterType:
			gotClusters = len(r.GetResources()) > 0
		}
	}
}

// secretSVID parses an SDS certificate secret and verifies it against the CA.
func secretSVID(t *testing.T, s *tlsv3.Secret, ca *identity.CA) *x509svid.SVID {
	t.Helper()
	tc := s.GetTlsCertificate()
	svid, err := x509svid.Parse(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
	if err != nil {
		t.Fatalf("secret %s: %v", s.GetName(), err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, ca); err != nil {
		t.Fatalf("secret %s: %v", s.GetName(), err)
	}
	return svid
}

// filesFor is the file_watcher configuration of a service account's files.
func filesFor(dir string) map[string]any {
	return map[string]any{
		"certificate_file":    filepath.Join(dir, CertChainFile),
		"private_key_file":    filepath.Join(dir, KeyFile),
		"ca_certificate_file": filepath.Join(dir, RootCertFile),
		"refresh_interval":    "1s",
	}
}

// grpcClient is a proxyless client of Service echo: ADS to meshd over
// mTLS with its SVID ("tls" channel credentials, meshd verified against
// the SPIFFE bundle map), the same files feeding its calls' file_watcher.
func grpcClient(t *testing.T, cp *xds.ControlPlane, ca *identity.CA, files map[string]any, nodeID string) testgrpc.TestServiceClient {
	t.Helper()
	td := ca.TrustDomain()
	b, err := spiffebundle.FromX509Authorities(td, ca.Bundle().X509Authorities()).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	m, err := json.Marshal(map[string]any{"trust_domains": map[string]json.RawMessage{td.Name(): b}})
	if err != nil {
		t.Fatal(err)
	}
	bundleMap := filepath.Join(t.TempDir(), "spiffe-bundle-map.json")
	if err := os.WriteFile(bundleMap, m, 0o600); err != nil {
		t.Fatal(err)
	}
	ads := map[string]any{"certificate_file": files["certificate_file"], "private_key_file": files["private_key_file"], "spiffe_trust_bundle_map_file": bundleMap}
	node := map[string]any{"id": nodeID, "metadata": map[string]string{xds.MetaProxy: xds.ProxyValueGRPC, xds.MetaNamespace: gNS}}
	res, err := grpcxds.NewXDSResolverWithConfigForTesting(grpcxdstest.Bootstrap(t, cp.XDSAddr(), ads, node, files))
	if err != nil {
		t.Fatal(err)
	}
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(fmt.Sprintf("xds:///echo.%s.svc.cluster.local:%d", gNS, gPort), grpc.WithTransportCredentials(creds), grpc.WithResolvers(res))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return testgrpc.NewTestServiceClient(conn)
}

// listenLoopback listens on a random 127.79.x.y address.
func listenLoopback(t *testing.T) net.Listener {
	t.Helper()
	for range 10 {
		addr := net.JoinHostPort(fmt.Sprintf("127.79.%d.%d", 1+rand.IntN(254), 1+rand.IntN(254)), strconv.Itoa(20000+rand.IntN(20000)))
		if l, err := net.Listen("tcp", addr); err == nil {
			return l
		}
	}
	t.Fatal("no free loopback address")
	return nil
}

func openForUninstall(cgroup, pins string) (*nodeagent.Dataplane, error) {
	return nodeagent.Open(nodeagent.Config{Node: "node-1", CgroupPath: cgroup, PinDir: pins})
}
