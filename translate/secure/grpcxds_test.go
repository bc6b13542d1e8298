package secure_test

// Proof with a real xDS client nobody here wrote: gRPC-Go with
// xDS-managed security. meshd (xds.StartControlPlane with Security: the
// built-in CA, translate/secure on every config, ADS over mTLS) serves a
// proxyless gRPC client whose cluster carries the UpstreamTlsContext that
// translate/secure builds for proxyless clients (certificate provider
// instances, SAN matching of the destination's service accounts). The
// gRPC server is gRPC-Go's xDS server, its inbound Listener built with
// secure.DownstreamProvider and an RBAC filter on the principal. All
// certificates come from gRPC's file_watcher certificate provider, from
// files written here as the node agent would write them. Bootstraps are
// passed per client/server (NewXDSResolverWithConfigForTesting,
// BootstrapContentsForTesting), so GRPC_XDS_BOOTSTRAP is not needed.
//
// The clients reach meshd's ADS over mTLS with their workload SVIDs
// ("tls" channel credentials, gRFC A65). meshd's certificate is an SVID
// (URI SAN only), so hostname verification cannot apply: the clients
// verify it against the SPIFFE trust bundle map (gRFC A87), which gRPC
// reads only with GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true at init. So the
// test runs its body in a child process with that variable set.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	grpcxds "google.golang.org/grpc/xds"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/internal/grpcxdstest"
	"github.com/nodemesh/nodemesh/xds"
)

const (
	gNS   = "grpcsec"
	gPort = 7070
)

var gTD = spiffeid.RequireTrustDomainFromString("cluster.local")

func gID(t *testing.T, sa string) spiffeid.ID {
	t.Helper()
	id, err := identity.WorkloadID(gTD, gNS, sa)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// writeSVID writes what the node agent hands a proxyless workload: its
// chain, its key and the trust bundle, for gRPC's file_watcher plugin.
func writeSVID(t *testing.T, ca *identity.CA, id spiffeid.ID) map[string]any {
	t.Helper()
	svid, err := ca.NewSVID(id)
	if err != nil {
		t.Fatal(err)
	}
	return writeFiles(t, svid, ca)
}

func writeFiles(t *testing.T, svid *x509svid.SVID, ca *identity.CA) map[string]any {
	t.Helper()
	dir := t.TempDir()
	writeInto(t, dir, svid, ca)
	return map[string]any{
		"certificate_file":    filepath.Join(dir, "cert-chain.pem"),
		"private_key_file":    filepath.Join(dir, "key.pem"),
		"ca_certificate_file": filepath.Join(dir, "root-cert.pem"),
		"refresh_interval":    "1s",
	}
}

// adsCreds are the "tls" channel credentials of a proxyless client: its
// SVID, and meshd verified against the SPIFFE bundle map of the trust
// domain.
func adsCreds(t *testing.T, files map[string]any, ca *identity.CA) map[string]any {
	t.Helper()
	b, err := spiffebundle.FromX509Authorities(gTD, ca.Bundle().X509Authorities()).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	m, err := json.Marshal(map[string]any{"trust_domains": map[string]json.RawMessage{gTD.Name(): b}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "spiffe-bundle-map.json")
	if err := os.WriteFile(path, m, 0o600); err != nil {
		t.Fatal(err)
	}
	return map[string]any{
		"certificate_file":             files["certificate_file"],
		"private_key_file":             files["private_key_file"],
		"spiffe_trust_bundle_map_file": path,
	}
}

// writeInto writes an SVID's files into dir, each by rename (as the agent
// does, so that a watcher never reads half a file).
func writeInto(t *testing.T, dir string, svid *x509svid.SVID, ca *identity.CA) {
	t.Helper()
	chain, key, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"cert-chain.pem": chain, "key.pem": key, "root-cert.pem": identity.EncodeCertsPEM(ca.Bundle().X509Authorities())}
	for name, b := range files {
		tmp := filepath.Join(dir, "."+name+".tmp")
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

// listenPods listens on n loopback addresses 127.78.B.(11+i) on one port.
func listenPods(t *testing.T, n int) []net.Listener {
	t.Helper()
	for attempt := 0; attempt < 10; attempt++ {
		block := 1 + rand.IntN(254)
		port := 20000 + rand.IntN(20000)
		var out []net.Listener
		for i := range n {
			l, err := net.Listen("tcp", net.JoinHostPort(fmt.Sprintf("127.78.%d.%d", block, 11+i), strconv.Itoa(port)))
			if err != nil {
				break
			}
			out = append(out, l)
		}
		if len(out) == n {
			return out
		}
		for _, l := range out {
			l.Close()
		}
	}
	t.Fatal("no free loopback addresses")
	return nil
}

// meshYAML: two services in grpcsec, each with one pod of service account
// "echo-server": echo (a real echo-server pod) and impostor (whose pod
// claims echo-server but whose process holds another SA's SVID).
func meshYAML(echoAddr, impostorAddr *net.TCPAddr) string {
	var out string
	for _, s := range []struct {
		name string
		addr *net.TCPAddr
	}{{"echo", echoAddr}, {"impostor", impostorAddr}} {
		out += fmt.Sprintf(`---
apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  selector: {app: %[1]s}
  ports: [{name: grpc, port: %[3]d, targetPort: %[4]d}]
---
apiVersion: v1
kind: Pod
metadata: {name: %[1]s-0, namespace: %[2]s, labels: {app: %[1]s}}
spec: {nodeName: node-1, serviceAccountName: echo-server, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: %[5]s}
`, s.name, gNS, gPort, s.addr.Port, s.addr.IP.String())
	}
	return out
}

const childEnv = "NODEMESH_GRPCXDS_SECURE_CHILD"

func TestGRPCXDSMutualTLS(t *testing.T) {
	if os.Getenv(childEnv) != "1" {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestGRPCXDSMutualTLS$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), childEnv+"=1", "GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true")
		out, err := cmd.CombinedOutput()
		t.Logf("child process (GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true):\n%s", out)
		if err != nil {
			t.Fatalf("child: %v", err)
		}
		if !strings.Contains(string(out), "--- PASS: TestGRPCXDSMutualTLS") || strings.Contains(string(out), "--- SKIP") {
			t.Fatal("the child did not run the test")
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ca, err := identity.NewCA(identity.CAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	pods := listenPods(t, 2)
	echoAddr, impostorAddr := pods[0].Addr().(*net.TCPAddr), pods[1].Addr().(*net.TCPAddr)
	clientID, otherID := gID(t, "client"), gID(t, "other")

	// The servers: the real echo-server, and an impostor with another SVID.
	grpcxdstest.StartServer(t, ctx, pods[0], writeSVID(t, ca, gID(t, "echo-server")), clientID)
	grpcxdstest.StartServer(t, ctx, pods[1], writeSVID(t, ca, gID(t, "impostor")), clientID)

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mesh.yaml"), []byte(meshYAML(echoAddr, impostorAddr)), 0o644); err != nil {
		t.Fatal(err)
	}
	cp, err := xds.StartControlPlane(xds.ControlPlaneConfig{
		ConfigDir: dir, XDSAddr: "127.0.0.1:0", DebugAddr: "127.0.0.1:0", PollInterval: 50 * time.Millisecond,
		Security: &xds.ControlPlaneSecurity{CA: ca},
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Stop() })

	var clientWith func(t *testing.T, files map[string]any, nodeID, service string) testgrpc.TestServiceClient
	// A proxyless client: ADS over mTLS with its workload SVID, the same
	// files feeding the file_watcher provider for its calls.
	client := func(t *testing.T, id spiffeid.ID, nodeID, service string) testgrpc.TestServiceClient {
		t.Helper()
		return clientWith(t, writeSVID(t, ca, id), nodeID, service)
	}
	clientWith = func(t *testing.T, files map[string]any, nodeID, service string) testgrpc.TestServiceClient {
		t.Helper()
		node := map[string]any{"id": nodeID, "metadata": map[string]string{xds.MetaProxy: xds.ProxyValueGRPC, xds.MetaNamespace: gNS}}
		res, err := grpcxds.NewXDSResolverWithConfigForTesting(grpcxdstest.Bootstrap(t, cp.XDSAddr(), adsCreds(t, files, ca), node, files))
		if err != nil {
			t.Fatal(err)
		}
		creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(fmt.Sprintf("xds:///%s.%s.svc.cluster.local:%d", service, gNS, gPort), grpc.WithTransportCredentials(creds), grpc.WithResolvers(res))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return testgrpc.NewTestServiceClient(conn)
	}
	t.Run("mTLS call with the right identities", func(t *testing.T) {
		files := writeSVID(t, ca, clientID)
		c := clientWith(t, files, "grpcsec-client", "echo")
		cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
		defer ccancel()
		r, err := c.UnaryCall(cctx, &testgrpc.SimpleRequest{}, grpc.WaitForReady(true))
		if err != nil {
			t.Fatalf("call: %v", err)
		}
		if r.GetHostname() != clientID.String() {
			t.Fatalf("server saw caller %q, want %s", r.GetHostname(), clientID)
		}
		t.Logf("call over mTLS: server authenticated %s (certificate serial %s)", r.GetHostname(), r.GetUsername())

		// Rotation as the agent does it: new files under the same names.
		// The established connection keeps working (with the certificate
		// of its handshake); a client started from the same files now
		// presents the new certificate. (That one ClientConn's own new
		// connections pick the new files up is gRPC's file_watcher
		// contract; this test does not force a reconnect.)
		fresh, err := ca.NewSVID(clientID)
		if err != nil {
			t.Fatal(err)
		}
		writeInto(t, filepath.Dir(files["certificate_file"].(string)), fresh, ca)
		time.Sleep(1500 * time.Millisecond) // file_watcher refresh_interval is 1s
		again, err := c.UnaryCall(cctx, &testgrpc.SimpleRequest{})
		if err != nil || again.GetUsername() != r.GetUsername() {
			t.Fatalf("established connection after rotation: %v, serial %s (was %s)", err, again.GetUsername(), r.GetUsername())
		}
		c2 := clientWith(t, files, "grpcsec-client-rotated", "echo")
		r2, err := c2.UnaryCall(cctx, &testgrpc.SimpleRequest{}, grpc.WaitForReady(true))
		if err != nil {
			t.Fatalf("new connection after rotation: %v", err)
		}
		if r2.GetUsername() != fresh.Certificates[0].SerialNumber.String() || r2.GetHostname() != clientID.String() {
			t.Fatalf("new connection presented serial %s as %s, want the rotated %s", r2.GetUsername(), r2.GetHostname(), fresh.Certificates[0].SerialNumber)
		}
		t.Logf("after rotation: old connection still serial %s, new connection serial %s", again.GetUsername(), r2.GetUsername())
	})

	t.Run("a client with another identity is refused by RBAC", func(t *testing.T) {
		c := client(t, otherID, "grpcsec-other", "echo")
		cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
		defer ccancel()
		_, err := c.UnaryCall(cctx, &testgrpc.SimpleRequest{}, grpc.WaitForReady(true))
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("call as %s: %v; want PermissionDenied", otherID, err)
		}
	})

	t.Run("a server with another identity is refused by SAN matching", func(t *testing.T) {
		// Service impostor's pod runs as echo-server, so the client expects
		// that identity; the process there holds impostor's SVID.
		c := client(t, clientID, "grpcsec-client-2", "impostor")
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		defer ccancel()
		_, err := c.UnaryCall(cctx, &testgrpc.SimpleRequest{}, grpc.WaitForReady(true))
		if err == nil {
			t.Fatal("the client accepted a server with the wrong SPIFFE ID")
		}
		if !strings.Contains(err.Error(), "do not match any of the accepted SANs") {
			t.Fatalf("refused, but not by SAN matching: %v", err)
		}
		t.Logf("refused: %v", err)
	})
}
