package config

import (
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	securityv1beta1 "istio.io/api/security/v1beta1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func testPod(ns, name, node string, labels map[string]string) *Object {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{NodeName: node}}
	return &Object{Key: Key{KindPod, ns, name}, APIVersion: "v1", Labels: labels, Spec: p}
}

func testSlice(ns, name, service string) *Object {
	labels := map[string]string{discoveryv1.LabelServiceName: service}
	s := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		AddressType: discoveryv1.AddressTypeIPv4}
	return &Object{Key: Key{KindEndpointSlice, ns, name}, APIVersion: "discovery.k8s.io/v1", Labels: labels, Spec: s}
}

func testVS(ns, name string, hosts ...string) *Object {
	return &Object{Key: Key{KindVirtualService, ns, name}, APIVersion: "networking.istio.io/v1",
		Spec: &networkingv1alpha3.VirtualService{Hosts: hosts}}
}

func keys(objs []*Object) []string {
	out := []string{}
	for _, o := range objs {
		out = append(out, o.Key.String())
	}
	return out
}

// watchCount drains a Watch channel and returns how many values it held.
func drained(ch <-chan struct{}) int {
	n := 0
	for {
		select {
		case <-ch:
			n++
		default:
			return n
		}
	}
}

func TestStoreReplace(t *testing.T) {
	s := NewStore()
	w := s.Watch()
	if v := s.Snapshot().Version(); v != 0 {
		t.Fatalf("new store version %d", v)
	}
	steps := []struct {
		name       string
		source     string
		objs       []*Object
		wantErr    error
		wantChange bool
		wantAll    []string // every VirtualService, sorted
	}{
		{"add", "a", []*Object{testVS("ns2", "x", "x"), testVS("ns1", "y", "y")}, nil, true,
			[]string{"VirtualService/ns1/y", "VirtualService/ns2/x"}},
		{"same content again is a no-op", "a", []*Object{testVS("ns1", "y", "y"), testVS("ns2", "x", "x")}, nil, false,
			[]string{"VirtualService/ns1/y", "VirtualService/ns2/x"}},
		{"second source", "b", []*Object{testVS("ns1", "z", "z")}, nil, true,
			[]string{"VirtualService/ns1/y", "VirtualService/ns1/z", "VirtualService/ns2/x"}},
		{"update one, delete one", "a", []*Object{testVS("ns2", "x", "x2")}, nil, true,
			[]string{"VirtualService/ns1/z", "VirtualService/ns2/x"}},
		{"key owned by another source", "a", []*Object{testVS("ns3", "new", "n"), testVS("ns1", "z", "z")},
			ErrOwnedByOtherSource, false, []string{"VirtualService/ns1/z", "VirtualService/ns2/x"}},
		{"duplicate in one batch", "a", []*Object{testVS("ns3", "d", "d"), testVS("ns3", "d", "e")}, errAny, false,
			[]string{"VirtualService/ns1/z", "VirtualService/ns2/x"}},
		{"nil object", "a", []*Object{nil}, errAny, false, []string{"VirtualService/ns1/z", "VirtualService/ns2/x"}},
		{"empty source", "", nil, errAny, false, []string{"VirtualService/ns1/z", "VirtualService/ns2/x"}},
		{"delete all of b", "b", nil, nil, true, []string{"VirtualService/ns2/x"}},
	}
	version := uint64(0)
	for _, st := range steps {
		before := s.Snapshot()
		err := s.Replace(st.source, st.objs)
		switch {
		case st.wantErr == nil && err != nil:
			t.Fatalf("%s: %v", st.name, err)
		case st.wantErr == errAny && err == nil, st.wantErr != nil && st.wantErr != errAny && !errors.Is(err, st.wantErr):
			t.Fatalf("%s: error %v, want %v", st.name, err, st.wantErr)
		}
		snap := s.Snapshot()
		if st.wantChange {
			version++
		}
		if snap.Version() != version {
			t.Errorf("%s: version %d, want %d", st.name, snap.Version(), version)
		}
		if n := drained(w); n != map[bool]int{true: 1, false: 0}[st.wantChange] {
			t.Errorf("%s: watch fired %d times", st.name, n)
		}
		if diff := cmp.Diff(st.wantAll, keys(snap.List(KindVirtualService))); diff != "" {
			t.Errorf("%s: objects (-want +got):\n%s", st.name, diff)
		}
		if st.wantChange && cmp.Equal(keys(before.List(KindVirtualService)), st.wantAll) &&
			before.Version() == snap.Version() {
			t.Errorf("%s: old snapshot changed", st.name)
		}
	}
	if o, ok := s.Snapshot().Get(Key{KindVirtualService, "ns2", "x"}); !ok ||
		o.Spec.(*networkingv1alpha3.VirtualService).Hosts[0] != "x2" {
		t.Errorf("updated object not stored: %v", o)
	}
	if src, _ := s.Snapshot().Source(Key{KindVirtualService, "ns2", "x"}); src != "a" {
		t.Errorf("source = %q", src)
	}
}

var errAny = errors.New("any error")

func TestStoreSnapshotIsolation(t *testing.T) {
	s := NewStore()
	if err := s.Replace("a", []*Object{testVS("ns", "x", "v1")}); err != nil {
		t.Fatal(err)
	}
	old := s.Snapshot()
	if err := s.Replace("a", []*Object{testVS("ns", "x", "v2"), testVS("ns", "y", "y")}); err != nil {
		t.Fatal(err)
	}
	o, ok := old.Get(Key{KindVirtualService, "ns", "x"})
	if !ok || o.Spec.(*networkingv1alpha3.VirtualService).Hosts[0] != "v1" {
		t.Errorf("old snapshot sees %v", o)
	}
	if _, ok := old.Get(Key{KindVirtualService, "ns", "y"}); ok {
		t.Error("old snapshot sees an object added later")
	}
	if old.Version() != 1 || s.Snapshot().Version() != 2 {
		t.Errorf("versions %d, %d", old.Version(), s.Snapshot().Version())
	}
	if err := s.Replace("a", nil); err != nil {
		t.Fatal(err)
	}
	if len(old.List(KindVirtualService)) != 1 || len(s.Snapshot().List(KindVirtualService)) != 0 {
		t.Error("delete leaked into an old snapshot")
	}
}

func TestStoreLookups(t *testing.T) {
	s := NewStore()
	objs := []*Object{
		testPod("shop", "web-b", "node1", map[string]string{"app": "web", "version": "v2"}),
		testPod("shop", "web-a", "node1", map[string]string{"app": "web", "version": "v1"}),
		testPod("shop", "db", "node2", map[string]string{"app": "db"}),
		testPod("other", "web-c", "node1", map[string]string{"app": "web", "version": "v1"}),
		testPod("shop", "webby", "node2", map[string]string{"app": "webby"}),
		testPod("shop", "pending", "", map[string]string{"app": "web"}),
		testSlice("shop", "web-2", "web"),
		testSlice("shop", "web-1", "web"),
		testSlice("other", "web-1", "web"),
		testSlice("shop", "db-1", "db"),
		{Key: Key{KindNamespace, "", "shop"}, Spec: &corev1.Namespace{}},
	}
	if err := s.Replace("k8s", objs); err != nil {
		t.Fatal(err)
	}
	snap := s.Snapshot()
	tests := []struct {
		name string
		got  []*Object
		want []string
	}{
		{"pods on node1", snap.PodsOnNode("node1"), []string{"Pod/other/web-c", "Pod/shop/web-a", "Pod/shop/web-b"}},
		{"pods on no node", snap.PodsOnNode(""), []string{}},
		{"pods app=web", snap.PodsMatching("shop", map[string]string{"app": "web"}),
			[]string{"Pod/shop/pending", "Pod/shop/web-a", "Pod/shop/web-b"}},
		{"pods app=web,version=v1", snap.PodsMatching("shop", map[string]string{"app": "web", "version": "v1"}),
			[]string{"Pod/shop/web-a"}},
		{"pods version=v1 in other", snap.PodsMatching("other", map[string]string{"version": "v1"}), []string{"Pod/other/web-c"}},
		{"empty selector matches nothing", snap.PodsMatching("shop", nil), []string{}},
		{"no such label", snap.PodsMatching("shop", map[string]string{"app": "we"}), []string{}},
		{"slices for shop/web", snap.EndpointSlicesFor("shop", "web"), []string{"EndpointSlice/shop/web-1", "EndpointSlice/shop/web-2"}},
		{"slices for other/web", snap.EndpointSlicesFor("other", "web"), []string{"EndpointSlice/other/web-1"}},
		{"list pods", snap.List(KindPod), []string{"Pod/other/web-c", "Pod/shop/db", "Pod/shop/pending",
			"Pod/shop/web-a", "Pod/shop/web-b", "Pod/shop/webby"}},
		{"pods in other", snap.ListInNamespace(KindPod, "other"), []string{"Pod/other/web-c"}},
		{"namespaces", snap.List(KindNamespace), []string{"Namespace/shop"}},
		{"by source", snap.BySource("k8s")[:2], []string{"EndpointSlice/other/web-1", "EndpointSlice/shop/db-1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, keys(tt.got)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	// Moving a pod to another node and relabelling it updates the indexes.
	objs[1] = testPod("shop", "web-a", "node2", map[string]string{"app": "db"})
	if err := s.Replace("k8s", objs); err != nil {
		t.Fatal(err)
	}
	snap = s.Snapshot()
	if diff := cmp.Diff([]string{"Pod/shop/db", "Pod/shop/web-a", "Pod/shop/webby"}, keys(snap.PodsOnNode("node2"))); diff != "" {
		t.Errorf("after move (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"Pod/shop/pending", "Pod/shop/web-b"}, keys(snap.PodsMatching("shop", map[string]string{"app": "web"}))); diff != "" {
		t.Errorf("after relabel (-want +got):\n%s", diff)
	}
}

// TestStoreConcurrent runs writers and readers together (for -race).
func TestStoreConcurrent(t *testing.T) {
	s := NewStore()
	w := s.Watch()
	var wg sync.WaitGroup
	for src := range 4 {
		wg.Go(func() {
			for i := range 50 {
				objs := []*Object{testVS("ns", fmt.Sprintf("s%d", src), fmt.Sprintf("h%d", i)),
					testPod("ns", fmt.Sprintf("p%d", src), "n", map[string]string{"i": fmt.Sprint(i)})}
				if err := s.Replace(fmt.Sprintf("src%d", src), objs); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		last := uint64(0)
		for {
			snap := s.Snapshot()
			if snap.Version() < last {
				t.Errorf("version went back from %d to %d", last, snap.Version())
			}
			last = snap.Version()
			if n := len(snap.PodsOnNode("n")); n > 4 {
				t.Errorf("%d pods", n)
			}
			if last == 200 {
				return
			}
			select {
			case <-w:
			case <-time.After(5 * time.Second):
				t.Errorf("no notification; version %d", last)
				return
			}
		}
	}()
	wg.Wait()
	<-done
	s.Unwatch(w)
	drained(w) // a notification sent before Unwatch may be pending
	if err := s.Replace("src0", nil); err != nil {
		t.Fatal(err)
	}
	if drained(w) != 0 {
		t.Error("notified after Unwatch")
	}
}

func TestSpecTypes(t *testing.T) {
	want := map[Kind]any{
		KindNamespace: &corev1.Namespace{}, KindService: &corev1.Service{}, KindPod: &corev1.Pod{},
		KindServiceAccount: &corev1.ServiceAccount{}, KindEndpointSlice: &discoveryv1.EndpointSlice{},
		KindVirtualService: &networkingv1alpha3.VirtualService{}, KindDestinationRule: &networkingv1alpha3.DestinationRule{},
		KindGateway: &networkingv1alpha3.Gateway{}, KindServiceEntry: &networkingv1alpha3.ServiceEntry{},
		KindSidecar:            &networkingv1alpha3.Sidecar{},
		KindPeerAuthentication: &securityv1beta1.PeerAuthentication{}, KindAuthorizationPolicy: &securityv1beta1.AuthorizationPolicy{},
		KindRequestAuthentication: &securityv1beta1.RequestAuthentication{},
		KindTrafficSplit:          &TrafficSplit{}, KindTrafficTarget: &TrafficTarget{},
		KindHTTPRouteGroup: &HTTPRouteGroup{}, KindTCPRoute: &TCPRoute{}, KindUDPRoute: &UDPRoute{},
	}
	if len(specTypes) != len(want) {
		t.Errorf("%d kinds, want %d", len(specTypes), len(want))
	}
	for k, v := range want {
		if specTypes[k] != reflect.TypeOf(v) {
			t.Errorf("%s: %v, want %T", k, specTypes[k], v)
		}
	}
}

func TestStoreRefusesInvalidObjects(t *testing.T) {
	s := NewStore()
	bad := map[string]*Object{
		"wrong spec type":             {Key: Key{KindPod, "ns", "p"}, Spec: &corev1.Service{}},
		"nil spec":                    {Key: Key{KindPod, "ns", "p"}, Spec: (*corev1.Pod)(nil)},
		"no namespace":                {Key: Key{KindPod, "", "p"}, Spec: &corev1.Pod{}},
		"namespace on cluster-scoped": {Key: Key{KindNamespace, "ns", "n"}, Spec: &corev1.Namespace{}},
		"no name":                     {Key: Key{KindPod, "ns", ""}, Spec: &corev1.Pod{}},
	}
	for name, o := range bad {
		t.Run(name, func(t *testing.T) {
			if err := s.Replace("a", []*Object{testVS("ns", "ok", "h"), o}); err == nil {
				t.Error("accepted")
			}
			if err := s.Apply("a", []*Object{o}, nil); err == nil {
				t.Error("accepted by Apply")
			}
		})
	}
	if v := s.Snapshot().Version(); v != 0 {
		t.Errorf("version %d after refused writes", v)
	}
}

func TestStoreApply(t *testing.T) {
	s := NewStore()
	w := s.Watch()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.Replace("a", []*Object{testVS("ns", "x", "x"), testVS("ns", "y", "y")}))
	must(s.Replace("b", []*Object{testVS("ns", "b", "b")}))
	drained(w)
	must(s.Apply("a", []*Object{testVS("ns", "z", "z"), testVS("ns", "x", "x2")},
		[]Key{{KindVirtualService, "ns", "y"}, {KindVirtualService, "ns", "gone"}, {KindVirtualService, "ns", "y"}}))
	if diff := cmp.Diff([]string{"VirtualService/ns/b", "VirtualService/ns/x", "VirtualService/ns/z"},
		keys(s.Snapshot().List(KindVirtualService))); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if n := drained(w); n != 1 || s.Snapshot().Version() != 3 {
		t.Errorf("%d notifications, version %d", n, s.Snapshot().Version())
	}
	// No-ops: the same content, the same pointer, deleting what is gone.
	same := s.Snapshot().List(KindVirtualService)[1]
	must(s.Apply("a", []*Object{same, testVS("ns", "z", "z")}, []Key{{KindVirtualService, "ns", "y"}}))
	if n := drained(w); n != 0 || s.Snapshot().Version() != 3 {
		t.Errorf("no-op Apply: %d notifications, version %d", n, s.Snapshot().Version())
	}
	if err := s.Apply("a", nil, []Key{{KindVirtualService, "ns", "b"}}); !errors.Is(err, ErrOwnedByOtherSource) {
		t.Errorf("deleting another source's object: %v", err)
	}
	if err := s.Apply("a", []*Object{testVS("ns", "z", "z3")}, []Key{{KindVirtualService, "ns", "z"}}); err == nil {
		t.Error("writing and deleting one key accepted")
	}
	if s.Snapshot().Version() != 3 {
		t.Error("a refused Apply wrote")
	}
}
