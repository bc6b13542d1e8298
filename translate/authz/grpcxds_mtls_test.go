package authz

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	_ "google.golang.org/grpc/credentials/tls/certprovider/pemfile" // file_watcher certificate provider
	xdscreds "google.golang.org/grpc/credentials/xds"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Principals and namespaces are checked against the peer's SPIFFE ID (the
// URI SAN of its client certificate): gRPC's xDS server terminates mTLS
// with the Listener's DownstreamTlsContext and evaluates our RBAC on the
// authenticated principal.
func TestGRPCXDSServerEnforcesPrincipals(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	filters, diags := build(t, decode(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: who, namespace: foo}
spec:
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/sleep"]}
    - source: {namespaces: ["test", "dev"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: not-dev, namespace: foo}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: ["dev"]}}]}]
`), httpbin, Options{})
	if len(diags) > 0 {
		t.Fatal(diags)
	}
	addr, pki, dir := serveMTLS(t, ctx, filters)

	for _, c := range []struct {
		ns, sa string
		want   codes.Code
	}{
		{"default", "sleep", codes.OK},
		{"default", "web", codes.PermissionDenied},
		{"test", "t", codes.OK},
		{"dev", "x", codes.PermissionDenied}, // allowed by namespace, denied by DENY
	} {
		id := spiffe(c.ns, c.sa)
		conn := dialAs(t, addr, pki, dir, c.ns, c.sa)
		_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		conn.Close()
		if got := status.Code(err); got != c.want {
			t.Errorf("%s: gRPC xDS server answered %v (%v), want %v", id, got, err, c.want)
		}
		v := evalHTTP(t, filters, request{principal: id, sourceIP: "127.0.0.1", method: "POST", path: "/grpc.health.v1.Health/Check"})
		if v.allowed != (c.want == codes.OK) {
			t.Errorf("%s: evaluator allowed=%v (%s), gRPC wants %v", id, v.allowed, v.by, c.want)
		}
	}
}

// serveMTLS serves the filters behind mTLS (certificates from the
// file_watcher provider).
func serveMTLS(t *testing.T, ctx context.Context, filters []*hcmv3.HttpFilter) (*net.TCPAddr, *testPKI, string) {
	pki := newTestPKI(t)
	dir := t.TempDir()
	serverCert, serverKey := pki.issue(t, dir, "server", nil)
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pki.caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	extra := map[string]any{"certificate_providers": map[string]any{"fp": map[string]any{
		"plugin_name": "file_watcher",
		"config": map[string]any{"certificate_file": serverCert, "private_key_file": serverKey,
			"ca_certificate_file": caFile, "refresh_interval": "600s"},
	}}}
	provider := &tlsv3.CommonTlsContext_CertificateProviderInstance{InstanceName: "fp"}
	downstream := &tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateCertificateProviderInstance: provider,
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextCertificateProviderInstance{
				ValidationContextCertificateProviderInstance: provider},
		},
	}
	transport := &corev3.TransportSocket{Name: "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(downstream)}}
	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	return serveWithXDS(t, ctx, filters, transport, extra, creds), pki, dir

}

// dialAs connects with a client certificate for ns/sa.
func dialAs(t *testing.T, addr *net.TCPAddr, pki *testPKI, dir, ns, sa string) *grpc.ClientConn {
	certFile, keyFile := pki.issue(t, dir, ns+"-"+sa, &url.URL{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/" + ns + "/sa/" + sa})
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr.String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert}, RootCAs: pki.pool, ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// An SMI TrafficTarget with an HTTPRouteGroup (pathRegex, methods, header
// regex), enforced by gRPC's xDS server.
func TestGRPCXDSServerEnforcesSMI(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	snap := snapshot(t, decode(t, `apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: grpc, namespace: foo}
spec:
  destination: {kind: ServiceAccount, name: httpbin, namespace: foo}
  rules: [{kind: HTTPRouteGroup, name: grpc-routes}]
  sources: [{kind: ServiceAccount, name: sleep, namespace: default}]
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: grpc-routes, namespace: foo}
spec:
  matches:
  - name: health
    pathRegex: "/grpc[.]health[.]v1[.]Health/"
    methods: ["POST"]
  - name: tests-for-insiders
    pathRegex: "/grpc.testing.TestService/Unary"
    headers: {x-group: "insider(s)?"}
`))
	f := Build(snap, httpbin, Options{})
	if len(f.Diagnostics) > 0 {
		t.Fatal(f.Diagnostics)
	}
	addr, pki, dir := serveMTLS(t, ctx, f.HTTP)
	for _, c := range []struct {
		name, sa, method, group string
		want                    codes.Code
	}{
		{"sleep Health/Check", "sleep", "health", "", codes.OK},
		{"sleep UnaryCall", "sleep", "unary", "", codes.PermissionDenied},
		{"sleep UnaryCall as insider", "sleep", "unary", "insider", codes.OK},
		{"sleep UnaryCall as outsider", "sleep", "unary", "outsider", codes.PermissionDenied},
		{"sleep EmptyCall as insider", "sleep", "empty", "insiders", codes.PermissionDenied},
		{"web Health/Check", "web", "health", "", codes.PermissionDenied},
	} {
		conn := dialAs(t, addr, pki, dir, "default", c.sa)
		cctx := ctx
		headers := map[string]string{}
		if c.group != "" {
			cctx = metadata.AppendToOutgoingContext(ctx, "x-group", c.group)
			headers["x-group"] = c.group
		}
		var err error
		var path string
		switch c.method {
		case "health":
			path = "/grpc.health.v1.Health/Check"
			_, err = healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		case "unary":
			path = "/grpc.testing.TestService/UnaryCall"
			_, err = testgrpc.NewTestServiceClient(conn).UnaryCall(cctx, &testgrpc.SimpleRequest{}, grpc.WaitForReady(true))
		case "empty":
			path = "/grpc.testing.TestService/EmptyCall"
			_, err = testgrpc.NewTestServiceClient(conn).EmptyCall(cctx, &testgrpc.Empty{}, grpc.WaitForReady(true))
		}
		conn.Close()
		if got := status.Code(err); got != c.want {
			t.Errorf("%s: gRPC xDS server answered %v (%v), want %v", c.name, got, err, c.want)
		}
		v := evalHTTP(t, f.HTTP, request{principal: spiffe("default", c.sa), method: "POST", path: path, headers: headers})
		if v.allowed != (c.want == codes.OK) {
			t.Errorf("%s: evaluator allowed=%v (%s), gRPC wants %v", c.name, v.allowed, v.by, c.want)
		}
	}
}

type testPKI struct {
	key   *ecdsa.PrivateKey
	cert  *x509.Certificate
	caPEM []byte
	pool  *x509.CertPool
}

func newTestPKI(t *testing.T) *testPKI {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "authz test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testPKI{key: key, cert: cert, caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pool: pool}
}

// issue writes a leaf certificate (server: DNS localhost and 127.0.0.1;
// client: the SPIFFE ID as URI SAN) and its key; it returns the file names.
func (p *testPKI) issue(t *testing.T, dir, name string, spiffeID *url.URL) (certFile, keyFile string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	if spiffeID != nil {
		tmpl.URIs = []*url.URL{spiffeID}
	} else {
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, key.Public(), p.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
