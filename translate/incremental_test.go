package translate

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	corev1 "k8s.io/api/core/v1"

	"github.com/nodemesh/nodemesh/config"
)

func TestPrepareNext(t *testing.T) {
	objs, diags := config.Load(bookinfo("testdata/behaviour/mesh.yaml", vsFile("virtual-service-reviews-jason-v2-v3.yaml"))...)
	if config.HasErrors(diags) {
		t.Fatalf("load: %v", diags)
	}
	st := config.NewStore()
	replace := func(objs []*config.Object) *config.Snapshot {
		t.Helper()
		if err := st.Replace("test", objs); err != nil {
			t.Fatal(err)
		}
		return st.Snapshot()
	}
	proxies := []Proxy{{Node: "node-a"}, {Node: "node-b"}, {Kind: ProxylessGRPC, Namespace: "default"}}
	prev := Prepare(replace(objs))
	prevNC := map[Proxy]*NodeConfig{}
	for _, p := range proxies {
		prevNC[p] = prev.Translate(p)
		if err := prev.Check(prevNC[p]); err != nil {
			t.Fatal(err)
		}
	}

	// An endpoint change: reviews-v3-1 gets a new IP.
	changed := slices.Clone(objs)
	i := slices.IndexFunc(changed, func(o *config.Object) bool { return o.Kind == config.KindPod && o.Name == "reviews-v3-1" })
	pod := *changed[i]
	spec := pod.Spec.(*corev1.Pod).DeepCopy()
	spec.Status.PodIP = "10.2.0.99"
	pod.Spec = spec
	changed[i] = &pod
	snap := replace(changed)
	next := PrepareNext(prev, snap)
	for _, p := range proxies {
		nc := next.Translate(p)
		if err := next.Check(nc); err != nil {
			t.Fatalf("%+v: %v", p, err)
		}
		if !bytes.Equal(marshalNodeConfig(t, nc), marshalNodeConfig(t, Prepare(snap).Translate(p))) {
			t.Errorf("%+v: PrepareNext differs from Prepare", p)
		}
		for j, r := range nc.Routes {
			if r != prevNC[p].Routes[j] {
				t.Errorf("%+v: route configuration %s rebuilt for an endpoint change", p, r.GetName())
			}
		}
		// Only the load assignments of reviews (the service's and its
		// subsets') are new messages; the others are prev's.
		for j, e := range nc.Endpoints {
			name, same := e.GetClusterName(), e == prevNC[p].Endpoints[j]
			if want := !strings.Contains(name, "reviews.default"); same != want {
				t.Errorf("%+v: load assignment %s reused %v, want %v", p, name, same, want)
			}
		}
	}
	if got := endpointsOf(next.Translate(Proxy{Node: "node-b"}), reviewsV3); !slices.Equal(got, []string{"10.2.0.11:9080", "10.2.0.99:9080"}) {
		t.Errorf("reviews v3 endpoints after the change: %v", got)
	}

	// A routing change: a new Sidecar makes namespace open REGISTRY_ONLY.
	routed := slices.Clone(changed)
	routed = append(routed, &config.Object{Key: config.Key{Kind: config.KindSidecar, Namespace: "open", Name: "default"},
		Spec: mustSidecar(t)})
	snap = replace(routed)
	third := PrepareNext(next, snap)
	nc := third.Translate(Proxy{Node: "node-a"})
	if !bytes.Equal(marshalNodeConfig(t, nc), marshalNodeConfig(t, Prepare(snap).Translate(Proxy{Node: "node-a"}))) {
		t.Errorf("PrepareNext after a routing change differs from Prepare")
	}
	// Clusters and load assignments built from unchanged objects are kept,
	// and so are inbound listeners of unchanged pods.
	before := next.Translate(Proxy{Node: "node-a"})
	for _, l := range nc.Listeners {
		if b := findListener(before, l.GetName()); strings.HasPrefix(l.GetName(), "inbound_") && b != l {
			t.Errorf("inbound listener %s rebuilt for a change that does not touch it", l.GetName())
		}
	}
	if a, b := findCluster(nc, PassthroughCluster), findCluster(third.Translate(Proxy{Node: "node-b"}), PassthroughCluster); a == nil || a != b {
		t.Errorf("nodes do not share %s", PassthroughCluster)
	}
	if a, b := findCluster(before, reviewsV1), findCluster(nc, reviewsV1); a == nil || a != b {
		t.Errorf("cluster %s rebuilt for a change that does not touch it", reviewsV1)
	}
	for _, e := range nc.Endpoints {
		if i := slices.IndexFunc(before.Endpoints, func(o *endpointv3.ClusterLoadAssignment) bool { return o.GetClusterName() == e.GetClusterName() }); i < 0 || before.Endpoints[i] != e {
			t.Errorf("load assignment %s rebuilt for a change that does not touch it", e.GetClusterName())
		}
	}
	if got, err := simulate(nc, request{Namespace: "open", Port: 9080, Host: "reviews.default.svc.cluster.local"}); err != nil || got.only() != BlackHoleCluster {
		t.Errorf("the new Sidecar of namespace open is not applied: %+v, %v", got, err)
	}
}

func mustSidecar(t *testing.T) any {
	t.Helper()
	objs, diags := config.Decode("sidecar.yaml", []byte(`
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: open}
spec:
  egress: [{hosts: ["./*"]}]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
`))
	if len(objs) != 1 || config.HasErrors(diags) {
		t.Fatalf("decode: %v", diags)
	}
	return objs[0].Spec
}
