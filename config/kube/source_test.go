package kube_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/config/kube"
	"github.com/nodemesh/nodemesh/e2e/kubeapi"
)

const samples = "../../../shared/testdata/istio/samples/bookinfo"

// The Source against a real kube-apiserver: bookinfo Services, Pods created
// through the API (IPs and nodes set as the kubelet would), Istio and SMI
// resources; edits, deletes and invalid objects.
func TestSource(t *testing.T) {
	srv := kubeapi.Start(t)
	srv.InstallCRDs(t)
	ctx := t.Context()
	kc, err := kubernetes.NewForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}
	applyFiltered(t, srv, readSample(t, "platform/kube/bookinfo.yaml"), "Service", "ServiceAccount")
	pods := createPods(t, kc)
	apply(t, srv, readSample(t, "networking/destination-rule-all.yaml"))
	apply(t, srv, readSample(t, "networking/virtual-service-reviews-80-20.yaml"))
	apply(t, srv, []byte(smiObjects))

	store := config.NewStore()
	watch := store.Watch()
	src, err := kube.New(kube.Config{
		RESTConfig: srv.Config, Store: store, Debounce: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
		LeaderElection: &kube.LeaderElection{Namespace: "default", Identity: "meshd-test-0",
			LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 500 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	if src.HasSynced() {
		t.Fatal("HasSynced before Run")
	}
	runSource(t, src)

	// The first write the store sees is the whole API server: no empty or
	// partial config at start.
	select {
	case <-watch:
	case <-time.After(60 * time.Second):
		t.Fatal("store not written within 60s")
	}
	first := store.Snapshot()
	if err := src.WaitForSync(ctx); err != nil {
		t.Fatal(err)
	}
	t.Run("first snapshot is complete", func(t *testing.T) {
		want := map[config.Kind]int{
			config.KindService:        5, // bookinfo's 4 and the API server's own "kubernetes"
			config.KindServiceAccount: 4, config.KindPod: len(pods),
			config.KindDestinationRule: 4, config.KindVirtualService: 1,
			config.KindTrafficSplit: 1, config.KindHTTPRouteGroup: 1,
		}
		for kind, n := range want {
			if got := len(first.List(kind)); got != n {
				t.Errorf("first snapshot has %d %s objects, want %d", got, kind, n)
			}
		}
		if len(first.List(config.KindNamespace)) < 1 {
			t.Error("first snapshot has no Namespace")
		}
	})

	t.Run("typed objects", func(t *testing.T) {
		snap := store.Snapshot()
		vs := specOf[*networkingv1alpha3.VirtualService](t, snap, config.KindVirtualService, "default", "reviews")
		if got := routeWeights(vs); !slices.Equal(got, []string{"v1=80", "v2=20"}) {
			t.Errorf("VirtualService reviews routes %v, want [v1=80 v2=20]", got)
		}
		dr := specOf[*networkingv1alpha3.DestinationRule](t, snap, config.KindDestinationRule, "default", "reviews")
		if len(dr.GetSubsets()) != 3 {
			t.Errorf("DestinationRule reviews has %d subsets, want 3", len(dr.GetSubsets()))
		}
		pod := specOf[*corev1.Pod](t, snap, config.KindPod, "default", "reviews-v2")
		if pod.Spec.NodeName != "node-b" || pod.Status.PodIP != pods["reviews-v2"] || pod.ManagedFields != nil {
			t.Errorf("pod reviews-v2: node %q ip %q (want node-b %s), managedFields kept: %v",
				pod.Spec.NodeName, pod.Status.PodIP, pods["reviews-v2"], pod.ManagedFields != nil)
		}
		svc := specOf[*corev1.Service](t, snap, config.KindService, "default", "reviews")
		if svc.Spec.ClusterIP == "" || svc.Spec.Ports[0].Port != 9080 {
			t.Errorf("service reviews: clusterIP %q ports %v", svc.Spec.ClusterIP, svc.Spec.Ports)
		}
		ts := specOf[*config.TrafficSplit](t, snap, config.KindTrafficSplit, "default", "reviews-split")
		if len(ts.Backends) != 2 {
			t.Errorf("TrafficSplit backends %v, want 2", ts.Backends)
		}
		if o, _ := snap.Get(config.Key{Kind: config.KindVirtualService, Namespace: "default", Name: "reviews"}); o.Origin.File != "k8s" {
			t.Errorf("origin %v, want k8s", o.Origin)
		}
		if src, _ := snap.Source(config.Key{Kind: config.KindPod, Namespace: "default", Name: "reviews-v1"}); src != kube.DefaultSource {
			t.Errorf("pod owned by source %q, want %q", src, kube.DefaultSource)
		}
	})

	t.Run("invalid object reported and skipped", func(t *testing.T) {
		key := config.Key{Kind: config.KindTrafficSplit, Namespace: "default", Name: "bad-split"}
		if _, ok := store.Snapshot().Get(key); ok {
			t.Errorf("%v is in the store", key)
		}
		var found *config.Diagnostic
		for _, d := range src.Status().Diagnostics {
			if d.Object == key && d.Severity == config.SeverityError {
				found = &d
			}
		}
		if found == nil || !strings.Contains(found.Field, "wieght") {
			t.Fatalf("no error diagnostic naming spec.backends[0].wieght for %v in %v", key, src.Status().Diagnostics)
		}
		ev := waitEvent(t, kc, "bad-split")
		if ev.Type != corev1.EventTypeWarning || ev.InvolvedObject.Kind != "TrafficSplit" || !strings.Contains(ev.Message, "wieght") {
			t.Errorf("event %s %s on %s: %q", ev.Type, ev.Reason, ev.InvolvedObject.Kind, ev.Message)
		}
		if !src.IsLeader() {
			t.Error("sole replica is not the leader")
		}
		lease, err := kc.CoordinationV1().Leases("default").Get(ctx, "nodemesh-meshd", metav1.GetOptions{})
		if err != nil || lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != "meshd-test-0" {
			t.Errorf("lease default/nodemesh-meshd: %v %v", lease, err)
		}
	})

	t.Run("translate the k8s-fed snapshot", func(t *testing.T) { checkTranslate(t, store.Snapshot(), pods) })

	t.Run("edit VirtualService, with an invalid object alongside", func(t *testing.T) {
		// A second invalid object arrives in the same burst: the edit still flows.
		apply(t, srv, []byte(strings.ReplaceAll(smiBad, "bad-split", "bad-split-2")))
		apply(t, srv, readSample(t, "networking/virtual-service-reviews-50-v3.yaml"))
		waitStore(t, store, "reviews routes v1=50 v3=50", func(s *config.Snapshot) bool {
			o, ok := s.Get(config.Key{Kind: config.KindVirtualService, Namespace: "default", Name: "reviews"})
			return ok && slices.Equal(routeWeights(o.Spec.(*networkingv1alpha3.VirtualService)), []string{"v1=50", "v3=50"})
		})
		waitEvent(t, kc, "bad-split-2")
	})

	t.Run("delete VirtualService", func(t *testing.T) {
		gvr := kubeapi.GVR("networking.istio.io", "v1", "virtualservices")
		if err := srv.Dynamic(t).Resource(gvr).Namespace("default").Delete(ctx, "reviews", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		waitStore(t, store, "no VirtualService", func(s *config.Snapshot) bool {
			return len(s.List(config.KindVirtualService)) == 0
		})
	})

	t.Run("namespace filter", func(t *testing.T) {
		apply(t, srv, []byte(`{apiVersion: v1, kind: Namespace, metadata: {name: shop}}`))
		apply(t, srv, []byte(`{apiVersion: v1, kind: Service, metadata: {name: web, namespace: shop}, spec: {ports: [{port: 80}]}}`))
		shop := config.NewStore()
		only, err := kube.New(kube.Config{RESTConfig: srv.Config, Store: shop, Namespace: "shop",
			Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
		if err != nil {
			t.Fatal(err)
		}
		runSource(t, only)
		syncCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := only.WaitForSync(syncCtx); err != nil {
			t.Fatal(err)
		}
		snap := shop.Snapshot()
		var keys []string
		for _, kind := range []config.Kind{config.KindNamespace, config.KindService, config.KindPod, config.KindTrafficSplit} {
			for _, o := range snap.List(kind) {
				keys = append(keys, o.Key.String())
			}
		}
		if want := []string{"Namespace/shop", "Service/shop/web"}; !slices.Equal(keys, want) {
			t.Errorf("namespace-filtered store holds %v, want %v", keys, want)
		}
	})

	t.Run("pod deleted", func(t *testing.T) {
		if err := kc.CoreV1().Pods("default").Delete(ctx, "ratings-v1", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
		waitStore(t, store, "pod ratings-v1 gone", func(s *config.Snapshot) bool {
			_, ok := s.Get(config.Key{Kind: config.KindPod, Namespace: "default", Name: "ratings-v1"})
			return !ok
		})
	})
}

const smiObjects = `
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: reviews-split}
spec:
  service: reviews
  backends:
  - {service: reviews-v1, weight: 80}
  - {service: reviews-v2, weight: 20}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: reviews-routes}
spec:
  matches:
  - {name: all, pathRegex: ".*", methods: ["GET"]}
---
` + smiBad

// smiBad passes the API server (SMI CRDs keep unknown fields) but not
// nodemesh's decoder: "wieght" is a typo.
const smiBad = `
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: bad-split}
spec:
  service: reviews
  backends:
  - {service: reviews-v1, wieght: 80}
`

func runSource(t *testing.T, src *kube.Source) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Run did not return within 15s of cancel")
		}
	})
}

func readSample(t *testing.T, rel string) []byte {
	t.Helper()
	data, err := os.ReadFile(samples + "/" + rel)
	if err != nil {
		t.Fatalf("bookinfo sample (../shared beside the repository) not readable: %v", err)
	}
	return data
}

func apply(t *testing.T, srv *kubeapi.Server, data []byte) {
	t.Helper()
	if _, err := srv.Apply(t.Context(), data, kubeapi.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
}

// applyFiltered applies the documents of data whose kind is in kinds.
func applyFiltered(t *testing.T, srv *kubeapi.Server, data []byte, kinds ...string) {
	t.Helper()
	objs, err := kubeapi.Objects(data)
	if err != nil {
		t.Fatal(err)
	}
	var docs []string
	for _, o := range objs {
		if slices.Contains(kinds, o.GetKind()) {
			js, err := yaml.Marshal(o.Object)
			if err != nil {
				t.Fatal(err)
			}
			docs = append(docs, string(js))
		}
	}
	apply(t, srv, []byte(strings.Join(docs, "---\n")))
}

// createPods creates one pod per bookinfo workload, then sets its status as
// the kubelet would (phase, IP, readiness). It returns the IPs by pod name.
func createPods(t *testing.T, kc kubernetes.Interface) map[string]string {
	t.Helper()
	type w struct{ app, version, node, ip string }
	ws := []w{
		{"details", "v1", "node-a", "10.1.0.10"}, {"ratings", "v1", "node-a", "10.1.0.11"},
		{"reviews", "v1", "node-a", "10.1.0.12"}, {"reviews", "v2", "node-b", "10.2.0.10"},
		{"reviews", "v3", "node-b", "10.2.0.11"}, {"productpage", "v1", "node-a", "10.1.0.13"},
	}
	ips := map[string]string{}
	for _, w := range ws {
		name := w.app + "-" + w.version
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default",
				Labels: map[string]string{"app": w.app, "version": w.version}},
			Spec: corev1.PodSpec{
				NodeName: w.node, ServiceAccountName: "bookinfo-" + w.app,
				Containers: []corev1.Container{{Name: w.app, Image: "docker.io/istio/examples-bookinfo-" + name + ":1.20.3",
					Ports: []corev1.ContainerPort{{ContainerPort: 9080}}}},
			},
		}
		got, err := kc.CoreV1().Pods("default").Create(t.Context(), pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create pod %s: %v", name, err)
		}
		got.Status = corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: w.ip, PodIPs: []corev1.PodIP{{IP: w.ip}}, HostIP: "192.168.0.1",
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		}
		if _, err := kc.CoreV1().Pods("default").UpdateStatus(t.Context(), got, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("update status of pod %s: %v", name, err)
		}
		ips[name] = w.ip
	}
	return ips
}

func specOf[T any](t *testing.T, snap *config.Snapshot, kind config.Kind, ns, name string) T {
	t.Helper()
	var zero T
	o, ok := snap.Get(config.Key{Kind: kind, Namespace: ns, Name: name})
	if !ok {
		t.Fatalf("%s %s/%s not in the store", kind, ns, name)
		return zero
	}
	spec, ok := o.Spec.(T)
	if !ok {
		t.Fatalf("%s %s/%s spec is %T, want %T", kind, ns, name, o.Spec, zero)
	}
	return spec
}

func routeWeights(vs *networkingv1alpha3.VirtualService) []string {
	var out []string
	for _, h := range vs.GetHttp() {
		for _, r := range h.GetRoute() {
			out = append(out, fmt.Sprintf("%s=%d", r.GetDestination().GetSubset(), r.GetWeight()))
		}
	}
	return out
}

func waitStore(t *testing.T, store *config.Store, what string, ok func(*config.Snapshot) bool) {
	t.Helper()
	ch := store.Watch()
	defer store.Unwatch(ch)
	deadline := time.After(20 * time.Second)
	for !ok(store.Snapshot()) {
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("store: %s not seen within 20s", what)
		}
	}
}

// waitEvent waits for nodemesh's InvalidConfig event on the named object.
func waitEvent(t *testing.T, kc kubernetes.Interface, name string) corev1.Event {
	t.Helper()
	sel := fields.Set{"involvedObject.name": name, "reason": kube.EventReason}.AsSelector().String()
	deadline := time.Now().Add(20 * time.Second)
	for {
		list, err := kc.CoreV1().Events("default").List(t.Context(), metav1.ListOptions{FieldSelector: sel})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Fatalf("list events: %v", err)
		}
		if err == nil && len(list.Items) > 0 {
			return list.Items[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s event on %s within 20s", kube.EventReason, name)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
