package kubeapi_test

import (
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/config/kube"
	"github.com/nodemesh/nodemesh/e2e/kubeapi"
	"github.com/nodemesh/nodemesh/translate/dataplane"
	"github.com/nodemesh/nodemesh/xds"
)

const (
	cdsType = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	edsType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	v1Name  = "outbound|9080|v1|reviews.default.svc.cluster.local"
)

// The whole control plane on a real API server, wired as meshd --kube does
// (xds.StartControlPlane with the Kubernetes source as its Feed: serving
// starts after the caches synced), and an ADS client for node-a that sees the reviews
// subset clusters and the pod IPs set through the API, then a pod IP change
// and a DestinationRule deletion; the pod's dataplane Workload carries the
// UID the API server gave the pod.
func TestMeshdOnAPIServer(t *testing.T) {
	srv := kubeapi.Start(t)
	srv.InstallCRDs(t)
	ctx := t.Context()
	kc, err := kubernetes.NewForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}
	bookinfo, err := os.ReadFile("../../../shared/testdata/istio/samples/bookinfo/networking/destination-rule-all.yaml")
	if err != nil {
		t.Fatalf("bookinfo sample (../shared beside the repository) not readable: %v", err)
	}
	mustApply(t, srv, []byte(reviewsService))
	mustApply(t, srv, bookinfo)
	for i, v := range []string{"v1", "v2", "v3"} {
		createPod(t, kc, "reviews-"+v, map[string]string{"app": "reviews", "version": v}, "node-a", "10.1.0."+string(rune('1'+i)))
	}

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var src *kube.Source
	var store *config.Store
	cp, err := xds.StartControlPlane(xds.ControlPlaneConfig{
		XDSAddr: "127.0.0.1:0", DebugAddr: "127.0.0.1:0", SyncTimeout: 30 * time.Second, Logger: log,
		NewFeed: func(s *config.Store) (xds.Feed, error) {
			var err error
			store = s
			src, err = kube.New(kube.Config{RESTConfig: srv.Config, Store: store, Logger: log})
			return src, err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Stop() })
	if !src.HasSynced() {
		t.Fatal("StartControlPlane returned before the Kubernetes caches synced")
	}

	c := dialADS(t, cp.XDSAddr(), "node-a")
	c.subscribe(t, cdsType, nil)
	c.subscribe(t, edsType, []string{v1Name})
	c.wait(t, "reviews subset clusters", func() bool {
		names := c.clusters()
		return slices.Contains(names, v1Name) &&
			slices.Contains(names, "outbound|9080|v2|reviews.default.svc.cluster.local") &&
			slices.Contains(names, "outbound|9080|v3|reviews.default.svc.cluster.local")
	})
	c.wait(t, "endpoint 10.1.0.1 for reviews v1", func() bool { return slices.Equal(c.endpoints(v1Name), []string{"10.1.0.1"}) })

	pod, err := kc.CoreV1().Pods("default").Get(ctx, "reviews-v1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The node agent finds the pod's cgroup by the UID the API server gave it.
	var uid string
	for _, w := range dataplane.Translate(store.Snapshot(), "node-a").Workloads {
		if w.GetNamespace() == "default" && w.GetName() == "reviews-v1" {
			uid = w.GetPodUid()
		}
	}
	if uid == "" || uid != string(pod.UID) {
		t.Errorf("dataplane workload default/reviews-v1: pod_uid %q, want the API server's %q", uid, pod.UID)
	}
	pod.Status.PodIP, pod.Status.PodIPs = "10.1.0.99", []corev1.PodIP{{IP: "10.1.0.99"}}
	if _, err := kc.CoreV1().Pods("default").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.wait(t, "endpoint moved to 10.1.0.99", func() bool { return slices.Equal(c.endpoints(v1Name), []string{"10.1.0.99"}) })

	gvr := kubeapi.GVR("networking.istio.io", "v1", "destinationrules")
	if err := srv.Dynamic(t).Resource(gvr).Namespace("default").Delete(ctx, "reviews", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.wait(t, "subset clusters gone", func() bool {
		names := c.clusters()
		return !slices.Contains(names, v1Name) && slices.Contains(names, "outbound|9080||reviews.default.svc.cluster.local")
	})
}

const reviewsService = `
apiVersion: v1
kind: Service
metadata: {name: reviews, labels: {app: reviews, service: reviews}}
spec:
  ports: [{port: 9080, name: http}]
  selector: {app: reviews}
`

func mustApply(t *testing.T, srv *kubeapi.Server, data []byte) {
	t.Helper()
	if _, err := srv.Apply(t.Context(), data, kubeapi.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
}

// createPod creates a running, ready pod with an IP, as the scheduler and
// kubelet would leave it.
func createPod(t *testing.T, kc kubernetes.Interface, name string, labels map[string]string, node, ip string) {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: labels},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "example/app:1",
			Ports: []corev1.ContainerPort{{ContainerPort: 9080}}}}},
	}
	got, err := kc.CoreV1().Pods("default").Create(t.Context(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	if _, err := kc.CoreV1().Pods("default").UpdateStatus(t.Context(), got, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// adsClient is a minimal SotW ADS client that ACKs every response and keeps
// the latest resources of each type.
type adsClient struct {
	node   string
	stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	sendMu sync.Mutex
	mu     sync.Mutex
	latest map[string]*discoveryv3.DiscoveryResponse
	names  map[string][]string
	update chan struct{}
}

func dialADS(t *testing.T, addr, node string) *adsClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	c := &adsClient{node: node, stream: stream, latest: map[string]*discoveryv3.DiscoveryResponse{},
		names: map[string][]string{}, update: make(chan struct{}, 1)}
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			c.mu.Lock()
			c.latest[resp.GetTypeUrl()] = resp
			names := c.names[resp.GetTypeUrl()]
			c.mu.Unlock()
			_ = c.send(&discoveryv3.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(),
				ResponseNonce: resp.GetNonce(), ResourceNames: names})
			select {
			case c.update <- struct{}{}:
			default:
			}
		}
	}()
	return c
}

func (c *adsClient) send(req *discoveryv3.DiscoveryRequest) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	req.Node = &corev3.Node{Id: c.node}
	return c.stream.Send(req)
}

func (c *adsClient) subscribe(t *testing.T, typeURL string, names []string) {
	t.Helper()
	c.mu.Lock()
	c.names[typeURL] = names
	c.mu.Unlock()
	if err := c.send(&discoveryv3.DiscoveryRequest{TypeUrl: typeURL, ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
}

func (c *adsClient) clusters() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, a := range c.latest[cdsType].GetResources() {
		var cl clusterv3.Cluster
		if a.UnmarshalTo(&cl) == nil {
			out = append(out, cl.GetName())
		}
	}
	return out
}

func (c *adsClient) endpoints(cluster string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, a := range c.latest[edsType].GetResources() {
		var cla endpointv3.ClusterLoadAssignment
		if a.UnmarshalTo(&cla) != nil || cla.GetClusterName() != cluster {
			continue
		}
		for _, le := range cla.GetEndpoints() {
			for _, lb := range le.GetLbEndpoints() {
				out = append(out, lb.GetEndpoint().GetAddress().GetSocketAddress().GetAddress())
			}
		}
	}
	return out
}

func (c *adsClient) wait(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for !ok() {
		select {
		case <-c.update:
		case <-deadline:
			t.Fatalf("ADS client for %s: %s not seen within 20s (clusters %v)", c.node, what, c.clusters())
		}
	}
}
