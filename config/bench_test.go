package config

import (
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// benchMesh builds the mesh of shared/DESIGN.md's targets: 1,000 services in
// 50 namespaces, 10 pods each on 50 nodes (10,000 endpoints, one slice per
// service), 20% of services with a VirtualService.
func benchMesh() []*Object {
	var objs []*Object
	for s := range 1000 {
		ns, name := fmt.Sprintf("ns%d", s%50), fmt.Sprintf("svc%d", s)
		sel := map[string]string{"app": name}
		objs = append(objs, &Object{Key: Key{KindService, ns, name}, APIVersion: "v1", Labels: sel,
			Spec: &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
				Spec: corev1.ServiceSpec{Selector: sel, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}})
		slice := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: name + "-1", Namespace: ns},
			AddressType: discoveryv1.AddressTypeIPv4}
		for p := range 10 {
			pod := fmt.Sprintf("%s-%d", name, p)
			ip := fmt.Sprintf("10.%d.%d.%d", s/250, s%250, p+1)
			objs = append(objs, &Object{Key: Key{KindPod, ns, pod}, APIVersion: "v1",
				Labels: map[string]string{"app": name, "version": fmt.Sprintf("v%d", p%2+1)},
				Spec: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: pod, Namespace: ns},
					Spec:   corev1.PodSpec{NodeName: fmt.Sprintf("node%d", (s*10+p)%50)},
					Status: corev1.PodStatus{PodIP: ip}}})
			slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}})
		}
		objs = append(objs, &Object{Key: Key{KindEndpointSlice, ns, name + "-1"}, APIVersion: "discovery.k8s.io/v1",
			Labels: map[string]string{discoveryv1.LabelServiceName: name}, Spec: slice})
		if s%5 == 0 {
			objs = append(objs, testVS(ns, name, name))
		}
	}
	return objs
}

func BenchmarkStoreReplaceColdStart(b *testing.B) {
	objs := benchMesh()
	b.ReportAllocs()
	for b.Loop() {
		if err := NewStore().Replace("k8s", objs); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStoreReplaceOneChange replaces the whole mesh where one object
// is new (a source that keeps its unchanged objects).
func BenchmarkStoreReplaceOneChange(b *testing.B) {
	objs := benchMesh()
	s := NewStore()
	if err := s.Replace("k8s", objs); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		svc := *objs[0]
		svc.Labels = map[string]string{"app": "svc0", "rev": fmt.Sprint(i)}
		objs[0] = &svc
		if err := s.Replace("k8s", objs); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStoreReplaceReloaded replaces the mesh with equal objects that
// are new values (what the file source does after re-reading the files).
func BenchmarkStoreReplaceReloaded(b *testing.B) {
	s := NewStore()
	if err := s.Replace("k8s", benchMesh()); err != nil {
		b.Fatal(err)
	}
	objs := benchMesh()
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Replace("k8s", objs); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkStoreApplyOneEndpoint(b *testing.B) {
	s := NewStore()
	if err := s.Replace("k8s", benchMesh()); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		sl := testSlice("ns0", "svc0-1", "svc0")
		sl.Spec.(*discoveryv1.EndpointSlice).Endpoints = []discoveryv1.Endpoint{{Addresses: []string{fmt.Sprintf("10.9.%d.%d", i/250%250, i%250)}}}
		if err := s.Apply("k8s", []*Object{sl}, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSnapshotQueries(b *testing.B) {
	s := NewStore()
	if err := s.Replace("k8s", benchMesh()); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		snap := s.Snapshot()
		pods := snap.PodsOnNode("node7")
		sel := map[string]string{"app": "svc7", "version": "v1"}
		if len(pods) != 200 || len(snap.PodsMatching("ns7", sel)) != 5 || len(snap.EndpointSlicesFor("ns7", "svc7")) != 1 {
			b.Fatal("wrong lookup results")
		}
	}
}

func BenchmarkDecodeMesh(b *testing.B) {
	var y strings.Builder
	for s := range 1000 {
		fmt.Fprintf(&y, "---\napiVersion: v1\nkind: Service\nmetadata: {name: svc%d, namespace: ns%d}\nspec:\n  selector: {app: svc%d}\n  ports: [{name: http, port: 80}]\n", s, s%50, s)
		if s%5 == 0 {
			fmt.Fprintf(&y, "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: svc%d, namespace: ns%d}\nspec:\n  hosts: [svc%d]\n  http:\n  - route:\n    - destination: {host: svc%d, subset: v1}\n      weight: 80\n    - destination: {host: svc%d, subset: v2}\n      weight: 20\n    timeout: 5s\n", s, s%50, s, s, s)
		}
	}
	data := []byte(y.String())
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		objs, diags := Decode("mesh.yaml", data)
		if len(objs) != 1200 || HasErrors(diags) {
			b.Fatalf("%d objects, %v", len(objs), diags)
		}
	}
}
