package xds

import (
	"io"
	"log/slog"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// ControlPlaneSecurity.PerAccountClusters reaches translate/secure: node
// Envoys older than 1.38 get a cluster copy per service account instead of
// one cluster selecting the account's socket.
func TestPerAccountClustersOption(t *testing.T) {
	const details = "outbound|9080||details.default.svc.cluster.local"
	for _, perAccount := range []bool{false, true} {
		ca := newTestCA(t, 0)
		cp, err := StartControlPlane(ControlPlaneConfig{
			ConfigDir: secureMeshDir(t), XDSAddr: "127.0.0.1:0", DebugAddr: "127.0.0.1:0", PollInterval: 50 * time.Millisecond,
			Security: &ControlPlaneSecurity{CA: ca, PerAccountClusters: perAccount},
			Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cp.Stop() })
		st := sotwOn(t, agentConn(t, ca, cp.XDSAddr(), "node-a"))
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: resourcev3.ClusterType}); err != nil {
			t.Fatal(err)
		}
		r, err := recvWithin(t, 10*time.Second, st.Recv)
		if err != nil {
			t.Fatal(err)
		}
		var copied, selecting bool
		for _, a := range r.GetResources() {
			c := &clusterv3.Cluster{}
			if err := a.UnmarshalTo(c); err != nil {
				t.Fatal(err)
			}
			switch c.Name {
			case details + "~default/bookinfo-productpage":
				copied = c.GetTransportSocket() != nil
			case details:
				selecting = c.GetTransportSocketMatcher() != nil
			}
		}
		if copied != perAccount || selecting == perAccount {
			t.Errorf("PerAccountClusters=%v: per-account copy %v, socket-selecting cluster %v", perAccount, copied, selecting)
		}
	}
}
