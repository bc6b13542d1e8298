package xds

import (
	"context"
	"crypto/x509"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/translate/secure"
)

const bookinfoDir = "../../shared/testdata/istio/samples/bookinfo"

// onlyOnB is a pod whose service account has no pod on node-a.
const onlyOnB = `apiVersion: v1
kind: Pod
metadata: {name: batch-0, namespace: default, labels: {app: batch}}
spec: {nodeName: node-b, serviceAccountName: only-on-b, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.2.0.50}
`

var tdLocal = spiffeid.RequireTrustDomainFromString("cluster.local")

func sa(name string) string {
	id, err := identity.WorkloadID(tdLocal, "default", name)
	if err != nil {
		panic(err)
	}
	return id.String()
}

// secureMeshDir is bookinfo, its pods and onlyOnB in a config directory.
func secureMeshDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for dst, src := range map[string]string{
		"bookinfo.yaml": filepath.Join(bookinfoDir, "platform/kube/bookinfo.yaml"),
		"pods.yaml":     "../translate/testdata/pods.yaml",
	} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatalf("%v (is ../shared beside the repository?)", err)
		}
		if err := os.WriteFile(filepath.Join(dir, dst), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "batch.yaml"), []byte(onlyOnB), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func startSecureControlPlane(t *testing.T, ca *identity.CA, insecureXDS bool, rotation time.Duration) *ControlPlane {
	t.Helper()
	cp, err := StartControlPlane(ControlPlaneConfig{
		ConfigDir: secureMeshDir(t), XDSAddr: "127.0.0.1:0", DebugAddr: "127.0.0.1:0", PollInterval: 50 * time.Millisecond,
		Security: &ControlPlaneSecurity{CA: ca, InsecureXDS: insecureXDS, RotationCheck: rotation},
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Stop() })
	return cp
}

func newTestCA(t *testing.T, ttl time.Duration) *identity.CA {
	t.Helper()
	ca, err := identity.NewCA(identity.CAConfig{Dir: t.TempDir(), SVIDTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// agentConn dials the control plane with the agent SVID of node.
func agentConn(t *testing.T, ca *identity.CA, addr, node string) *grpc.ClientConn {
	t.Helper()
	svid, err := ca.NewAgentSVID(node)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := AgentClientTLS(staticSVID{svid}, ca, tdLocal)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

type staticSVID struct{ s *x509svid.SVID }

func (s staticSVID) GetX509SVID() (*x509svid.SVID, error) { return s.s, nil }

func sotwOn(t *testing.T, conn *grpc.ClientConn) discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func secretsOf(t *testing.T, r *discoveryv3.DiscoveryResponse) map[string]*tlsv3.Secret {
	t.Helper()
	out := map[string]*tlsv3.Secret{}
	for _, a := range r.GetResources() {
		s := &tlsv3.Secret{}
		if err := a.UnmarshalTo(s); err != nil {
			t.Fatal(err)
		}
		out[s.Name] = s
	}
	return out
}

// recvWithin receives one response or fails after d.
func recvWithin[T any](t *testing.T, d time.Duration, recv func() (T, error)) (T, error) {
	t.Helper()
	type res struct {
		v   T
		err error
	}
	ch := make(chan res, 1)
	go func() { v, err := recv(); ch <- res{v, err} }()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-time.After(d):
		t.Fatalf("no response within %v", d)
	}
	var zero T
	return zero, nil
}

func TestSecureControlPlaneSDS(t *testing.T) {
	ca := newTestCA(t, 0)
	cp := startSecureControlPlane(t, ca, false, 0)
	bundle := secure.BundleSecretName(tdLocal)

	t.Run("node gets the SVIDs of its own service accounts, verifiable against the bundle", func(t *testing.T) {
		st := sotwOn(t, agentConn(t, ca, cp.XDSAddr(), "node-a"))
		want := []string{bundle, sa("bookinfo-productpage"), sa("bookinfo-reviews")}
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: resourcev3.SecretType, ResourceNames: want}); err != nil {
			t.Fatal(err)
		}
		r, err := recvWithin(t, 10*time.Second, st.Recv)
		if err != nil {
			t.Fatal(err)
		}
		got := secretsOf(t, r)
		if len(got) != len(want) {
			t.Fatalf("got secrets %v, want %v", keys(got), want)
		}
		bundleCerts, err := identity.ParseCertsPEM(got[bundle].GetValidationContext().GetTrustedCa().GetInlineBytes())
		if err != nil || len(bundleCerts) == 0 {
			t.Fatalf("bundle secret: %v", err)
		}
		for _, name := range want[1:] {
			tc := got[name].GetTlsCertificate()
			svid, err := x509svid.Parse(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if svid.ID.String() != name {
				t.Errorf("secret %s holds SVID %s", name, svid.ID)
			}
			if _, _, err := x509svid.Verify(svid.Certificates, ca.Bundle()); err != nil {
				t.Errorf("%s does not verify against the bundle: %v", name, err)
			}
		}
	})

	t.Run("CDS uses the secrets", func(t *testing.T) {
		st := sotwOn(t, agentConn(t, ca, cp.XDSAddr(), "node-a"))
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: resourcev3.ClusterType}); err != nil {
			t.Fatal(err)
		}
		r, err := recvWithin(t, 10*time.Second, st.Recv)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, a := range r.GetResources() {
			c := &clusterv3.Cluster{}
			if err := a.UnmarshalTo(c); err != nil {
				t.Fatal(err)
			}
			if c.Name != "outbound|9080||details.default.svc.cluster.local" {
				continue
			}
			for _, tm := range c.GetTransportSocketMatches() {
				found = found || (tm.GetName() == "default/bookinfo-productpage" && tm.GetTransportSocket() != nil)
			}
		}
		if !found {
			t.Fatal("node-a's details cluster has no TLS socket for productpage's service account")
		}
	})

	for _, delta := range []bool{false, true} {
		name := "SotW"
		if delta {
			name = "Delta"
		}
		t.Run(name+": a node asking for another node's workload secret gets no such resource", func(t *testing.T) {
			before := cp.Guard().RefusedSecretRequests()
			conn := agentConn(t, ca, cp.XDSAddr(), "node-a")
			names := []string{bundle, sa("only-on-b")}
			var got []string
			if delta {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: resourcev3.SecretType, ResourceNamesSubscribe: names}); err != nil {
					t.Fatal(err)
				}
				r, err := recvWithin(t, 10*time.Second, st.Recv)
				if err != nil {
					t.Fatal(err)
				}
				for _, res := range r.GetResources() {
					got = append(got, res.GetName())
				}
			} else {
				st := sotwOn(t, conn)
				if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: resourcev3.SecretType, ResourceNames: names}); err != nil {
					t.Fatal(err)
				}
				r, err := recvWithin(t, 10*time.Second, st.Recv)
				if err != nil {
					t.Fatal(err)
				}
				got = keys(secretsOf(t, r))
			}
			if len(got) != 1 || got[0] != bundle {
				t.Fatalf("node-a received %v; want only the bundle", got)
			}
			if n := cp.Guard().RefusedSecretRequests() - before; n != 1 {
				t.Fatalf("refused secret requests counted %d, want 1", n)
			}
		})
	}

	t.Run("node-b does get it", func(t *testing.T) {
		st := sotwOn(t, agentConn(t, ca, cp.XDSAddr(), "node-b"))
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "node-b"}, TypeUrl: resourcev3.SecretType, ResourceNames: []string{sa("only-on-b")}}); err != nil {
			t.Fatal(err)
		}
		r, err := recvWithin(t, 10*time.Second, st.Recv)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := secretsOf(t, r)[sa("only-on-b")]; !ok {
			t.Fatal("node-b did not get the SVID of its own pod")
		}
	})

	t.Run("an agent claiming another node id is refused", func(t *testing.T) {
		before := cp.Guard().RefusedStreams()
		st := sotwOn(t, agentConn(t, ca, cp.XDSAddr(), "node-a"))
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "node-b"}, TypeUrl: resourcev3.SecretType, ResourceNames: []string{sa("only-on-b")}}); err != nil {
			t.Fatal(err)
		}
		r, err := recvWithin(t, 10*time.Second, st.Recv)
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("got %v, %v; want PermissionDenied", r, err)
		}
		if cp.Guard().RefusedStreams() == before {
			t.Fatal("refusal not counted")
		}
		if got := httpGet(t, "http://"+cp.DebugAddr()+"/debug/security"); !strings.Contains(got, "nodemesh_xds_refused_streams_total ") ||
			strings.Contains(got, "nodemesh_xds_refused_streams_total 0\n") || strings.Contains(got, "nodemesh_xds_refused_secret_requests_total 0\n") {
			t.Fatalf("/debug/security:\n%s", got)
		}
	})

	t.Run("a workload certificate may not act as a node agent", func(t *testing.T) {
		svid, err := ca.NewSVID(spiffeid.RequireFromString(sa("bookinfo-productpage")))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := AgentClientTLS(staticSVID{svid}, ca, tdLocal)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(cp.XDSAddr(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		st := sotwOn(t, conn)
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: resourcev3.SecretType}); err != nil {
			t.Fatal(err)
		}
		if _, err := recvWithin(t, 10*time.Second, st.Recv); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("got %v; want PermissionDenied", err)
		}
	})

	// A workload may connect as a proxyless gRPC client of its namespace,
	// but not under the id of a connected node: it would be served that
	// node's snapshot, secrets included.
	t.Run("a workload may not take a connected node's id", func(t *testing.T) {
		agent := sotwOn(t, agentConn(t, ca, cp.XDSAddr(), "node-a"))
		if err := agent.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: resourcev3.ClusterType}); err != nil {
			t.Fatal(err)
		}
		if _, err := recvWithin(t, 10*time.Second, agent.Recv); err != nil {
			t.Fatal(err)
		}
		st, md := workloadStream(t, ca, cp.XDSAddr(), "bookinfo-productpage", "default")
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "node-a", Metadata: md}, TypeUrl: resourcev3.SecretType}); err != nil {
			t.Fatal(err)
		}
		if r, err := recvWithin(t, 10*time.Second, st.Recv); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("got %d resources, err %v; want PermissionDenied", len(r.GetResources()), err)
		}
	})

	// Nor may it take a node's name before the agent connects.
	t.Run("a workload may not use a node's name as its id", func(t *testing.T) {
		st, md := workloadStream(t, ca, cp.XDSAddr(), "bookinfo-productpage", "default")
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "node-b", Metadata: md}, TypeUrl: resourcev3.ClusterType}); err != nil {
			t.Fatal(err)
		}
		if _, err := recvWithin(t, 10*time.Second, st.Recv); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("got %v; want PermissionDenied", err)
		}
	})

	t.Run("a client without a certificate cannot connect", func(t *testing.T) {
		cfg, err := AgentClientTLS(staticSVID{}, ca, tdLocal)
		if err != nil {
			t.Fatal(err)
		}
		cfg.GetClientCertificate = nil
		conn, err := grpc.NewClient(cp.XDSAddr(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
		if err == nil {
			_ = st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: resourcev3.SecretType})
			_, err = st.Recv()
		}
		if err == nil || status.Code(err) == codes.OK {
			t.Fatal("a client without a certificate was served")
		}
	})
}

// SVIDs are re-issued once half their lifetime has passed, not before,
// and pushed; a root rotation pushes a bundle with both roots.
func TestSecureSourceRotatesSVIDs(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	ca, err := identity.NewCA(identity.CAConfig{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	store := config.NewStore()
	objs, diags := config.Load(secureMeshDir(t))
	for _, d := range diags {
		if d.Severity >= config.SeverityWarning {
			t.Fatal(d)
		}
	}
	if err := store.Replace("test", objs); err != nil {
		t.Fatal(err)
	}
	ss, err := NewSecureSource(StoreSource(store, nil, nil), SecurityConfig{
		Issuer: ca, Options: secure.Options{TrustDomain: tdLocal}, RotationCheck: time.Hour, Now: clock,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); _ = ss.Run(ctx) }()
	defer func() { cancel(); <-ran }()
	srv := startServer(t, ss)
	c := newSotwClient(t, srv.addr, envoyNode("node-a"))
	name, bundle := sa("bookinfo-productpage"), secure.BundleSecretName(tdLocal)
	c.send(resourcev3.SecretType, "", "", nil, name, bundle)
	first := c.recv(wait)
	c.send(resourcev3.SecretType, first.VersionInfo, first.Nonce, nil, name, bundle)
	leaf := func(r *discoveryv3.DiscoveryResponse) *x509.Certificate {
		tc := secretsOf(t, r)[name].GetTlsCertificate()
		s, err := x509svid.Parse(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
		if err != nil {
			t.Fatal(err)
		}
		return s.Certificates[0]
	}
	old := leaf(first)
	half := old.NotBefore.Add(old.NotAfter.Sub(old.NotBefore) / 2)

	advance(half.Sub(clock()) - time.Minute)
	if ss.Rotate() {
		t.Fatal("rotated before half of the lifetime")
	}
	c.expectNothing(200 * time.Millisecond)

	advance(2 * time.Minute)
	if !ss.Rotate() {
		t.Fatal("did not rotate after half of the lifetime")
	}
	second := c.recv(wait)
	if fresh := leaf(second); fresh.SerialNumber.Cmp(old.SerialNumber) == 0 || !fresh.NotBefore.After(old.NotBefore) {
		t.Fatalf("pushed SVID is not a new one: serial %v, not before %v", fresh.SerialNumber, fresh.NotBefore)
	}
	if !clock().Before(old.NotAfter) {
		t.Fatal("the old SVID expired before the new one came")
	}
	c.send(resourcev3.SecretType, second.VersionInfo, second.Nonce, nil, name, bundle)

	if _, err := ca.RotateRoot(); err != nil {
		t.Fatal(err)
	}
	if !ss.Rotate() {
		t.Fatal("a root rotation changed nothing")
	}
	third := c.recv(wait)
	roots, err := identity.ParseCertsPEM(secretsOf(t, third)[bundle].GetValidationContext().GetTrustedCa().GetInlineBytes())
	if err != nil || len(roots) != 2 {
		t.Fatalf("bundle after root rotation: %d roots, %v; want old and new", len(roots), err)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// workloadStream opens an ADS stream with the SVID of service account account
// and the node metadata of a proxyless gRPC client of namespace ns.
func workloadStream(t *testing.T, ca *identity.CA, addr, account, ns string) (discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, *structpb.Struct) {
	t.Helper()
	svid, err := ca.NewSVID(spiffeid.RequireFromString(sa(account)))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := AgentClientTLS(staticSVID{svid}, ca, tdLocal)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	md, err := structpb.NewStruct(map[string]any{MetaProxy: ProxyValueGRPC, MetaNamespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	return sotwOn(t, conn), md
}
