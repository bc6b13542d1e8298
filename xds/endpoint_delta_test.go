package xds

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/nodemesh/nodemesh/config"
)

// endpointMeshYAML: ns-a has web and api (pods on node-a), ns-b has db
// (pod on node-b) and a Sidecar that limits ns-b to its own services, so
// node-b knows nothing of ns-a. extraWebPod adds a web pod on node-x, a
// node with no connected proxy: only web's endpoints change.
func endpointMeshYAML(extraWebPod bool) string {
	var b strings.Builder
	svc := func(ns, name, ip string) {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Service\nmetadata: {name: %s, namespace: %s}\nspec:\n  clusterIP: %s\n  selector: {app: %s}\n  ports: [{name: http, port: 9080}]\n", name, ns, ip, name)
	}
	pod := func(ns, name, app, node, ip string) {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: %s, labels: {app: %s}}\nspec:\n  nodeName: %s\n  containers: [{name: c, image: c}]\nstatus: {phase: Running, podIP: %s}\n", name, ns, app, node, ip)
	}
	svc("ns-a", "web", "10.96.0.1")
	svc("ns-a", "api", "10.96.0.2")
	svc("ns-b", "db", "10.96.1.1")
	pod("ns-a", "web-0", "web", "node-a", "10.1.0.1")
	pod("ns-a", "api-0", "api", "node-a", "10.1.0.2")
	pod("ns-b", "db-0", "db", "node-b", "10.1.1.1")
	if extraWebPod {
		pod("ns-a", "web-1", "web", "node-x", "10.1.2.1")
	}
	b.WriteString("---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: ns-b}\nspec:\n  egress: [{hosts: [\"./*\"]}]\n")
	return b.String()
}

func replaceYAML(t *testing.T, store *config.Store, yaml string) {
	t.Helper()
	objs, diags := config.Decode("mesh.yaml", []byte(yaml))
	if config.HasErrors(diags) {
		t.Fatalf("decode: %v", diags)
	}
	if err := store.Replace("test", objs); err != nil {
		t.Fatal(err)
	}
}

// subscribeLikeEnvoy subscribes c to CDS and LDS (wildcard), then to the
// EDS and RDS names they reference, ACKing everything until quiet.
func subscribeLikeEnvoy(t *testing.T, c *deltaClient) {
	t.Helper()
	c.send(&discoveryv3.DeltaDiscoveryRequest{Node: c.node, TypeUrl: resourcev3.ClusterType})
	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ListenerType})
	// Done once every subscribed type has answered and nothing more comes
	// for a while; a slow first answer on a loaded machine is waited for.
	pending := map[string]bool{resourcev3.ClusterType: true, resourcev3.ListenerType: true}
	answered := map[string]bool{}
	deadline := time.After(10 * time.Second)
	for {
		var r *discoveryv3.DeltaDiscoveryResponse
		select {
		case r = <-c.resps:
		case err := <-c.errs:
			t.Fatalf("%s: stream ended: %v", c.node.GetId(), err)
		case <-time.After(quiet):
			if len(pending) == 0 {
				return
			}
			continue
		case <-deadline:
			t.Fatalf("%s: no answer for %v", c.node.GetId(), slices.Sorted(maps.Keys(pending)))
		}
		delete(pending, r.GetTypeUrl())
		answered[r.GetTypeUrl()] = true
		c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()})
		var dep string
		var names []string
		for _, res := range r.GetResources() {
			switch r.GetTypeUrl() {
			case resourcev3.ClusterType:
				cl := &clusterv3.Cluster{}
				if err := res.GetResource().UnmarshalTo(cl); err != nil {
					t.Fatal(err)
				}
				if cl.GetType() == clusterv3.Cluster_EDS {
					dep, names = resourcev3.EndpointType, append(names, cl.GetName())
				}
			case resourcev3.ListenerType:
				l := &listenerv3.Listener{}
				if err := res.GetResource().UnmarshalTo(l); err != nil {
					t.Fatal(err)
				}
				dep, names = resourcev3.RouteType, append(names, listenerRouteNames(l)...)
			}
		}
		if dep != "" {
			if !answered[dep] {
				pending[dep] = true
			}
			slices.Sort(names)
			c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: dep, ResourceNamesSubscribe: slices.Compact(names)})
		}
	}
}

// TestDeltaEndpointChangeSendsOneAssignment: one new endpoint of one
// service sends that service's ClusterLoadAssignment alone (<= 1 KiB) to
// the node that uses it, and nothing to a node that does not, over real
// gRPC Delta ADS streams from the store and translator meshd uses.
func TestDeltaEndpointChangeSendsOneAssignment(t *testing.T) {
	store := config.NewStore()
	replaceYAML(t, store, endpointMeshYAML(false))
	srv := startServer(t, StoreSource(store, nil, nil))
	a := newDeltaClient(t, srv.addr, envoyNode("node-a"))
	b := newDeltaClient(t, srv.addr, envoyNode("node-b"))
	subscribeLikeEnvoy(t, a)
	subscribeLikeEnvoy(t, b)
	for _, id := range []string{"node-a", "node-b"} {
		for _, typeURL := range EnvoyTypeURLs {
			if st := typeStatus(t, srv.Server, id, typeURL); st.Acked == "" {
				t.Fatalf("%s: %s not ACKed after subscribing: %+v", id, typeShort(typeURL), st)
			}
		}
	}

	start := time.Now()
	replaceYAML(t, store, endpointMeshYAML(true))
	r := a.recv(wait)
	took := time.Since(start)
	a.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()})
	if r.GetTypeUrl() != resourcev3.EndpointType || len(r.GetResources()) != 1 || len(r.GetRemovedResources()) != 0 {
		t.Fatalf("node-a got %s with %d resources, %d removed; want EDS with 1", typeShort(r.GetTypeUrl()), len(r.GetResources()), len(r.GetRemovedResources()))
	}
	const want = "outbound|9080||web.ns-a.svc.cluster.local"
	if got := r.GetResources()[0].GetName(); got != want {
		t.Fatalf("node-a got load assignment %q, want %q", got, want)
	}
	cla := &endpointv3.ClusterLoadAssignment{}
	if err := r.GetResources()[0].GetResource().UnmarshalTo(cla); err != nil {
		t.Fatal(err)
	}
	if n := len(cla.GetEndpoints()[0].GetLbEndpoints()); n != 2 {
		t.Fatalf("web has %d endpoints after the change, want 2", n)
	}
	if size := proto.Size(r); size > 1024 {
		t.Fatalf("node-a was sent %d bytes for one endpoint, want <= 1 KiB", size)
	}
	t.Logf("endpoint change: node-a got 1 load assignment, %d bytes, %v after the store change; node-b nothing", proto.Size(r), took)
	a.expectNothing(quiet)
	b.expectNothing(quiet)
}

// TestPremarshaledEncodesAsTheOriginal: the message served in place of a
// resource encodes to the resource's own bytes and decodes to it.
func TestPremarshaledEncodesAsTheOriginal(t *testing.T) {
	c := &clusterv3.Cluster{Name: "outbound|80||web.a.svc.cluster.local", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	served := premarshaled(c, b)
	got, err := proto.MarshalOptions{Deterministic: true}.Marshal(served)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(b) {
		t.Fatalf("premarshaled encodes to %x, want %x", got, b)
	}
	back := &clusterv3.Cluster{}
	if err := proto.Unmarshal(got, back); err != nil || !proto.Equal(back, c) {
		t.Fatalf("decoded %v (%v), want %v", back, err, c)
	}
}
