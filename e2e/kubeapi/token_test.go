package kubeapi_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nodemesh/nodemesh/e2e/kubeapi"
	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/identity/kubetoken"
	"github.com/nodemesh/nodemesh/xds"
)

const agentNS = "nodemesh-system"

var tdLocal = spiffeid.RequireTrustDomainFromString("cluster.local")

// A node agent's first certificate in a real cluster: the meshd binary
// with --kube publishes its bundle in a ConfigMap and exchanges a pod-bound
// service account token (TokenRequest, audience nodemesh) for an agent
// certificate of the pod's node, which then opens ADS as that node only.
// Tokens of the wrong audience or ServiceAccount, unbound tokens and tokens
// of deleted pods are refused by TokenReview and kubetoken's rules.
func TestAgentTokenBootstrap(t *testing.T) {
	srv := kubeapi.Start(t)
	ctx := t.Context()
	kc, err := kubernetes.NewForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"node-a", "node-b"} {
		if _, err := kc.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: agentNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createSA(t, kc, agentNS, "mesh-agent")
	createSA(t, kc, "default", "web")
	agentA := createBoundPod(t, kc, agentNS, "mesh-agent-a", "mesh-agent", "node-a")
	agentB := createBoundPod(t, kc, agentNS, "mesh-agent-b", "mesh-agent", "node-b")
	gone := createBoundPod(t, kc, agentNS, "mesh-agent-gone", "mesh-agent", "node-a")
	web := createBoundPod(t, kc, "default", "web-a", "web", "node-a")

	tokens := map[string]string{
		"node-a":          kubeapi.RequestToken(t, kc, agentA, "mesh-agent", kubetoken.DefaultAudience),
		"node-b":          kubeapi.RequestToken(t, kc, agentB, "mesh-agent", kubetoken.DefaultAudience),
		"wrong audience":  kubeapi.RequestToken(t, kc, agentA, "mesh-agent", "https://kubernetes.default.svc.cluster.local"),
		"other account":   kubeapi.RequestToken(t, kc, web, "web", kubetoken.DefaultAudience),
		"unbound":         kubeapi.RequestToken(t, kc, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: agentNS}}, "mesh-agent", kubetoken.DefaultAudience),
		"pod deleted":     kubeapi.RequestToken(t, kc, gone, "mesh-agent", kubetoken.DefaultAudience),
		"not a k8s token": "not-a-token",
		"forged JWT":      "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6bm9kZW1lc2gtc3lzdGVtOm1lc2gtYWdlbnQifQ.c2ln",
	}
	zero := int64(0)
	if err := kc.CoreV1().Pods(agentNS).Delete(ctx, gone.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}

	caDir := t.TempDir()
	xdsAddr := kubeapi.StartMeshd(t, "--kube", "--kubeconfig", srv.Kubeconfig, "--ca-dir", caDir,
		"--lease-namespace", agentNS, "--lease-identity", "meshd-0")

	// The bundle, as an agent reads it: from the ConfigMap.
	var bundle *x509bundle.Bundle
	if err := pollFor(30*time.Second, func() error {
		cm, err := kc.CoreV1().ConfigMaps(agentNS).Get(ctx, kubetoken.DefaultRootCertConfigMap, metav1.GetOptions{})
		if err != nil {
			return err
		}
		roots, err := identity.ParseCertsPEM([]byte(cm.Data[kubetoken.RootCertKey]))
		if err != nil {
			return err
		}
		bundle = x509bundle.FromX509Authorities(tdLocal, roots)
		return nil
	}); err != nil {
		t.Fatalf("configmap %s/%s with the bundle: %v", agentNS, kubetoken.DefaultRootCertConfigMap, err)
	}
	onDisk, err := os.ReadFile(filepath.Join(caDir, "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if roots, err := identity.ParseCertsPEM(onDisk); err != nil || !x509bundle.FromX509Authorities(tdLocal, roots).Equal(bundle) {
		t.Fatalf("the ConfigMap's bundle is not meshd's root-cert.pem (%v)", err)
	}

	conn := certlessConn(t, bundle, xdsAddr)
	svids := map[string]*x509svid.SVID{}
	for _, node := range []string{"node-a", "node-b"} {
		svid, err := agentSVIDByToken(ctx, t, conn, tokens[node])
		if err != nil {
			t.Fatalf("CreateCertificate with the token of %s's agent pod: %v", node, err)
		}
		if got, err := identity.AgentNode(svid.Certificates[0], tdLocal); err != nil || got != node {
			t.Fatalf("AgentNode = %q, %v; want %s", got, err, node)
		}
		if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
			t.Fatalf("agent SVID of %s does not verify against the ConfigMap's bundle: %v", node, err)
		}
		svids[node] = svid
	}

	for _, tc := range []struct{ token, why string }{
		{"wrong audience", "audience"},
		{"other account", "system:serviceaccount:default:web"},
		{"unbound", "not bound to a pod"},
		{"pod deleted", "not authenticated"},
		{"not a k8s token", "not a JWT"},
		{"forged JWT", "not authenticated"},
	} {
		t.Run("refused: "+tc.token, func(t *testing.T) {
			_, err := agentSVIDByToken(ctx, t, conn, tokens[tc.token])
			if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), tc.why) {
				t.Fatalf("got %v; want Unauthenticated naming %q", err, tc.why)
			}
			t.Log(status.Convert(err).Message())
		})
	}

	agent := agentConn(t, svids["node-a"], bundle, xdsAddr)
	for _, tc := range []struct {
		node string
		want codes.Code
	}{{"node-a", codes.OK}, {"node-b", codes.PermissionDenied}} {
		t.Run("ADS with node-a's certificate as "+tc.node, func(t *testing.T) {
			sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(agent).StreamAggregatedResources(sctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: tc.node}, TypeUrl: cdsType}); err != nil {
				t.Fatal(err)
			}
			r, err := st.Recv()
			if status.Code(err) != tc.want {
				t.Fatalf("got %v; want %s", err, tc.want)
			}
			if tc.want == codes.OK && r.GetTypeUrl() != cdsType {
				t.Fatalf("got a response of type %q", r.GetTypeUrl())
			}
		})
	}
}

func createSA(t *testing.T, kc kubernetes.Interface, ns, name string) {
	t.Helper()
	if _, err := kc.CoreV1().ServiceAccounts(ns).Create(t.Context(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// createBoundPod creates a pod of sa scheduled on node (no scheduler or
// kubelet needed: spec.nodeName is set).
func createBoundPod(t *testing.T, kc kubernetes.Interface, ns, name, sa, node string) *corev1.Pod {
	t.Helper()
	pod, err := kc.CoreV1().Pods(ns).Create(t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "agent", Image: "example/agent:1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

func pollFor(d time.Duration, fn func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := fn()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// certlessConn dials meshd verifying it against bundle, without a client
// certificate: a node agent before its first certificate.
func certlessConn(t *testing.T, bundle *x509bundle.Bundle, addr string) *grpc.ClientConn {
	t.Helper()
	meshd, err := xds.ControlPlaneID(tdLocal)
	if err != nil {
		t.Fatal(err)
	}
	cfg := tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(meshd))
	cfg.MinVersion = tls.VersionTLS13
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func agentConn(t *testing.T, svid *x509svid.SVID, bundle *x509bundle.Bundle, addr string) *grpc.ClientConn {
	t.Helper()
	cfg, err := xds.AgentClientTLS(svidSource{svid}, bundle, tdLocal)
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

type svidSource struct{ s *x509svid.SVID }

func (s svidSource) GetX509SVID() (*x509svid.SVID, error) { return s.s, nil }

// agentSVIDByToken asks CreateCertificate for the agent identity (a CSR
// without names) with token as the bearer token.
func agentSVIDByToken(ctx context.Context, t *testing.T, conn *grpc.ClientConn, token string) (*x509svid.SVID, error) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token), 20*time.Second)
	defer cancel()
	resp, err := securityv1alpha1.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, &securityv1alpha1.IstioCertificateRequest{
		Csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})),
	})
	if err != nil {
		return nil, err
	}
	chain, err := identity.ParseCertsPEM([]byte(strings.Join(resp.GetCertChain(), "")))
	if err != nil || len(chain) < 2 {
		t.Fatalf("cert chain of %d certificates: %v", len(chain), err)
	}
	chain = chain[:len(chain)-1] // the root comes last
	id, err := x509svid.IDFromCert(chain[0])
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, nil
}
