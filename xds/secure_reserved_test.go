package xds

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/translate/secure"
)

// meshdOnA is a meshd pod (not host network) in nodemesh's own namespace,
// scheduled on node-a.
const meshdOnA = `apiVersion: v1
kind: Pod
metadata: {name: meshd-0, namespace: nodemesh-system}
spec: {nodeName: node-a, serviceAccountName: meshd, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.1.0.99}
`

// A node running a pod in nodemesh's own namespace is not handed that
// identity (meshd's) by SDS or CreateCertificate, and a bearer token gets
// only the agent identity.
func TestReservedIdentitiesNeverIssued(t *testing.T) {
	if secure.ReservedNamespace != identity.AgentNamespace || ControlPlaneNamespace != identity.AgentNamespace {
		t.Fatalf("reserved namespace %q, agent namespace %q, control plane namespace %q: must be one", secure.ReservedNamespace, identity.AgentNamespace, ControlPlaneNamespace)
	}
	ca := newTestCA(t, 0)
	dir := secureMeshDir(t)
	if err := os.WriteFile(filepath.Join(dir, "meshd-pod.yaml"), []byte(meshdOnA), 0o644); err != nil {
		t.Fatal(err)
	}
	cp, err := StartControlPlane(ControlPlaneConfig{
		ConfigDir: dir, XDSAddr: "127.0.0.1:0", DebugAddr: "127.0.0.1:0", PollInterval: 50 * time.Millisecond,
		Security: &ControlPlaneSecurity{CA: ca, Tokens: tokenTable{"tok-a": "node-a"}},
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Stop() })
	meshdID, err := ControlPlaneID(tdLocal)
	if err != nil {
		t.Fatal(err)
	}
	if allowed := cp.secureSrc.AllowedSecrets("node-a"); slices.Contains(allowed, meshdID.String()) || !slices.Contains(allowed, sa("bookinfo-productpage")) {
		t.Fatalf("node-a may receive %v; want productpage's SVID and not meshd's", allowed)
	}

	agent := agentConn(t, ca, cp.XDSAddr(), "node-a")
	certless := certlessConn(t, ca, cp.XDSAddr())
	productpage := spiffeid.RequireFromString(sa("bookinfo-productpage"))
	for _, tc := range []struct {
		name   string
		conn   *grpc.ClientConn
		token  string
		target spiffeid.ID
		want   codes.Code
	}{
		{"agent asks for meshd's identity", agent, "tok-a", meshdID, codes.PermissionDenied},
		{"token asks for meshd's identity", certless, "tok-a", meshdID, codes.PermissionDenied},
		{"token asks for a workload on its node", certless, "tok-a", productpage, codes.PermissionDenied},
		{"agent asks for a workload on its node", agent, "", productpage, codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := requestSVID(ctx, t, tc.conn, tc.token, tc.target)
			if status.Code(err) != tc.want {
				t.Fatalf("CreateCertificate(%s) = %v; want %s", tc.target, err, tc.want)
			}
		})
	}
	got := httpGet(t, "http://"+cp.DebugAddr()+"/metrics")
	for _, want := range []string{"nodemesh_xds_certificates_issued_total 1\n", "nodemesh_xds_refused_certificate_requests_total 3\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, got)
		}
	}
}
