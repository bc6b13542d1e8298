package spire

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/xds"
)

// The mesh with SVIDs only from SPIRE: the real meshd binary (--spire-socket,
// no CA) and the real mesh-agent binary (--spire-socket,
// --spire-admin-socket) get their own SVIDs from a real spire-agent through
// the Workload API; the agent's ADS stream is accepted as node-a because
// its entry has -dns node-a; the agent serves its pod's SVID, from SPIRE's
// Delegated Identity API, over local SDS and as files, and follows SPIRE's
// renewals, as meshd does for its own. The agent asks SPIRE by the PID of
// the process in the pod's cgroup, which SPIRE attests itself: a service
// account whose pod's process matches no entry gets nothing, though an
// entry by k8s selectors exists. An agent SVID whose entry names
// node-b is refused when it claims node-a (by mesh-agent itself at start,
// and by meshd when a client tries anyway), and meshd refuses to start
// with an SVID that is not its own ID.
func TestMeshOnSPIRE(t *testing.T) {
	m := startSPIREMesh(t)
	t.Run("meshd refuses another SPIFFE ID", m.meshdRefusesOtherID)
	m.startMeshd(t)
	m.startMeshAgent(t)
	t.Run("agent of node-a is accepted", m.agentAccepted)
	t.Run("meshd serves no secrets", m.noSecretsFromMeshd)
	t.Run("the agent serves its workload's SVID from SPIRE over local SDS", m.workloadSVIDOverSDS)
	t.Run("SPIRE's renewals keep the mesh connected", m.renewals)
	t.Run("the agent writes its workload's SVID from SPIRE for proxyless gRPC", m.workloadSVIDFiles)
	t.Run("the agent asks SPIRE by the pid of the pod's process", m.svidByPID)
	t.Run("no SVID for a service account whose pod's process matches no entry", m.noSVIDWithoutMatchingProcess)
	t.Run("a new process of the pod is attested when the old one exits", m.newPodProcess)
	t.Run("an agent whose entry names node-b", m.impostor)
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
