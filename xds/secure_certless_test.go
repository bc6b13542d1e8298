package xds

import (
	"io"
	"log/slog"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/nodemesh/nodemesh/config"
)

// The server options meshd's security adds refuse a peer without a
// certificate on every method but CreateCertificate, including services
// registered later (here gRPC health), not only where ADSGuard and
// CertService refuse on their own.
func TestCertlessPeerOnlyReachesCreateCertificate(t *testing.T) {
	ca := newTestCA(t, 0)
	cp := &ControlPlane{
		cfg: ControlPlaneConfig{Security: &ControlPlaneSecurity{CA: ca, Tokens: tokenTable{"tok-a": "node-a"}}},
		log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	_, opts, err := cp.secure(StoreSource(config.NewStore(), nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	cp.certs.Register(srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	addr := lis.Addr().String()

	_, err = healthpb.NewHealthClient(certlessConn(t, ca, addr)).Check(t.Context(), &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("health check without a certificate: %v; want Unauthenticated", err)
	}
	if _, err := agentSVIDByToken(t.Context(), t, certlessConn(t, ca, addr), "tok-a"); err != nil {
		t.Fatalf("CreateCertificate with a token and no certificate: %v", err)
	}
	svid, err := ca.NewAgentSVID("node-a")
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
	defer conn.Close()
	if _, err := healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health check with an agent certificate: %v", err)
	}
}
