package xds

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/nodemesh/nodemesh/translate/inboundauthz"
)

// details (node-a, 10.1.0.11) accepts GET /info* from service accounts
// named sleep only.
const detailsPolicy = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: details-get-info, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  rules:
  - from: [{source: {principals: ["*/sa/sleep"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/info*"]}}]
`

// meshd serves node-a an inbound listener whose chain for details on its
// HTTP port terminates mTLS and runs the policy's RBAC before the router,
// and the route configuration that chain needs; the whole config passed
// the pipeline's check (it would not be served otherwise).
func TestControlPlaneServesInboundAuthorization(t *testing.T) {
	ca := newTestCA(t, 0)
	dir := secureMeshDir(t)
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(detailsPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	cp, err := StartControlPlane(ControlPlaneConfig{
		ConfigDir: dir, XDSAddr: "127.0.0.1:0", DebugAddr: "127.0.0.1:0", PollInterval: 50 * time.Millisecond,
		Security: &ControlPlaneSecurity{CA: ca},
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Stop() })
	st := sotwOn(t, agentConn(t, ca, cp.XDSAddr(), "node-a"))
	fetch := func(typeURL string, names ...string) *discoveryv3.DiscoveryResponse {
		t.Helper()
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: typeURL, ResourceNames: names}); err != nil {
			t.Fatal(err)
		}
		r, err := recvWithin(t, 10*time.Second, st.Recv)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	var chain *listenerv3.FilterChain
	for _, a := range fetch(resourcev3.ListenerType).GetResources() {
		l := &listenerv3.Listener{}
		if err := a.UnmarshalTo(l); err != nil {
			t.Fatal(err)
		}
		if l.GetName() != "inbound_default" {
			continue
		}
		for _, fc := range l.GetFilterChains() {
			m := fc.GetFilterChainMatch()
			if m.GetDestinationPort().GetValue() == 9080 && len(m.GetPrefixRanges()) == 1 &&
				m.GetPrefixRanges()[0].GetAddressPrefix() == "10.1.0.11" && m.GetTransportProtocol() != "raw_buffer" {
				chain = fc
			}
		}
	}
	if chain == nil {
		t.Fatal("inbound_default has no mTLS chain for details (10.1.0.11:9080)")
	}
	if chain.GetTransportSocket() == nil {
		t.Errorf("chain %s does not terminate mTLS", chain.GetName())
	}
	fs := chain.GetFilters()
	hcm := &hcmv3.HttpConnectionManager{}
	if err := fs[len(fs)-1].GetTypedConfig().UnmarshalTo(hcm); err != nil {
		t.Fatalf("chain %s does not end in an HTTP connection manager: %v", chain.GetName(), err)
	}
	rbac := 0
	for _, h := range hcm.GetHttpFilters() {
		if h.GetTypedConfig().MessageIs((*rbachttpv3.RBAC)(nil)) {
			rbac++
		}
	}
	if rbac == 0 {
		t.Errorf("chain %s: no RBAC filter in %v", chain.GetName(), hcm.GetHttpFilters())
	}

	r := fetch(resourcev3.RouteType, hcm.GetRds().GetRouteConfigName())
	if len(r.GetResources()) != 1 {
		t.Fatalf("route configuration %q: got %d resources", hcm.GetRds().GetRouteConfigName(), len(r.GetResources()))
	}
	rc := &routev3.RouteConfiguration{}
	if err := r.GetResources()[0].UnmarshalTo(rc); err != nil {
		t.Fatal(err)
	}
	if got := rc.GetVirtualHosts()[0].GetRoutes()[0].GetRoute().GetCluster(); got != inboundauthz.ClusterName("default") {
		t.Errorf("inbound route goes to %q, want %q", got, inboundauthz.ClusterName("default"))
	}
}
