package translate

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	networking "istio.io/api/networking/v1alpha3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/nodemesh/nodemesh/config"
)

// A VirtualService with one broken route keeps its other routes, and the
// diagnostic names the object and the field.
func TestDiagnosticsUnknownSubset(t *testing.T) {
	snap := decode(t, `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers: {end-user: {exact: jason}}
    route:
    - destination: {host: reviews, subset: v2}
  - match:
    - headers: {end-user: {exact: bob}}
    route:
    - destination: {host: reviews, subset: v1}
      weight: 50
    - destination: {host: reviews, subset: v9}
      weight: 50
  - match:
    - uri: {regex: "(unclosed"}
    route:
    - destination: {host: reviews, subset: v1}
  - match:
    - uri: {prefix: /nowhere}
    route:
    - destination: {host: nosuch}
  - route:
    - destination: {host: reviews, subset: v3}
`, bookinfo()...)
	for _, p := range []Proxy{{Node: "node-a"}, {Kind: ProxylessGRPC, Namespace: "default"}} {
		nc := mustTranslate(t, snap, p)
		want := map[string]string{
			"spec.http[1].route[1].destination.subset": `subset "v9"`,
			"spec.http[2].match[0].uri.regex":          "bad regular expression",
			"spec.http[3].route[0].destination.host":   `host "nosuch.default.svc.cluster.local" is not a service`,
		}
		for _, d := range nc.Diagnostics {
			if d.Object.Kind != config.KindVirtualService {
				continue
			}
			frag, ok := want[d.Field]
			if !ok {
				t.Errorf("unexpected diagnostic %v", d)
				continue
			}
			delete(want, d.Field)
			if d.Severity != config.SeverityError || d.Object != (config.Key{Kind: config.KindVirtualService, Namespace: "default", Name: "reviews"}) ||
				d.Origin.File != "inline.yaml" || !strings.Contains(d.Message, frag) {
				t.Errorf("diagnostic %v: want Error on VirtualService/default/reviews from inline.yaml mentioning %q", d, frag)
			}
		}
		for f := range want {
			t.Errorf("%v: no diagnostic for %s", p, f)
		}
		for _, tc := range []struct {
			headers map[string]string
			path    string
			want    string
		}{
			{map[string]string{"end-user": "jason"}, "/", reviewsV2},
			{map[string]string{"end-user": "bob"}, "/", reviewsV3}, // broken route skipped
			{nil, "/nowhere", reviewsV3},
			{nil, "/(unclosed", reviewsV3},
		} {
			got, err := simulate(nc, request{Namespace: "default", Port: 9080, Host: "reviews", Path: tc.path, Headers: tc.headers})
			if err != nil || got.only() != tc.want {
				t.Errorf("%v: %v %s -> %+v, %v; want %s", p.Kind, tc.headers, tc.path, got, err, tc.want)
			}
		}
	}
}

// Problems in objects that are not routes are diagnosed as well.
func TestDiagnosticsOtherObjects(t *testing.T) {
	snap := load(t, bookinfo("testdata/behaviour/mesh.yaml")...)
	nc := mustTranslate(t, snap, Proxy{Node: "node-a"})
	var got []string
	for _, d := range nc.Diagnostics {
		if d.Severity >= config.SeverityWarning {
			got = append(got, d.Object.String()+" "+d.Field)
		}
	}
	want := []string{"ServiceEntry/default/anything spec.resolution"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("warnings (-want +got):\n%s\nall: %v", diff, nc.Diagnostics)
	}
}

// Rules for hosts that exist nowhere are reported (as istioctl analyze does).
func TestDiagnosticsUnknownHosts(t *testing.T) {
	snap := decode(t, `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: typo, namespace: default}
spec:
  hosts: [reveiws]
  http: [{route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: typo, namespace: default}
spec: {host: ratings.prod.svc.cluster.local}
`, bookinfo()...)
	nc := mustTranslate(t, snap, Proxy{Node: "node-a"})
	want := map[string]bool{"VirtualService/default/typo spec.hosts[0]": false, "DestinationRule/default/typo spec.host": false}
	for _, d := range nc.Diagnostics {
		k := d.Object.String() + " " + d.Field
		if _, ok := want[k]; ok && d.Severity == config.SeverityWarning {
			want[k] = true
		}
	}
	for k, found := range want {
		if !found {
			t.Errorf("no warning for %s; diagnostics: %v", k, nc.Diagnostics)
		}
	}
}

// Objects whose spec is missing or of the wrong type are diagnosed, not
// dereferenced.
func TestNilAndWrongSpecs(t *testing.T) {
	var objs []*config.Object
	for i, spec := range []any{
		(*corev1.Service)(nil), (*corev1.Pod)(nil), (*discoveryv1.EndpointSlice)(nil),
		(*networking.VirtualService)(nil), (*networking.DestinationRule)(nil), (*networking.ServiceEntry)(nil), (*networking.Sidecar)(nil),
	} {
		kind := []config.Kind{config.KindService, config.KindPod, config.KindEndpointSlice, config.KindVirtualService,
			config.KindDestinationRule, config.KindServiceEntry, config.KindSidecar}[i]
		objs = append(objs, &config.Object{Key: config.Key{Kind: kind, Namespace: "default", Name: "nil"}, Spec: spec},
			&config.Object{Key: config.Key{Kind: kind, Namespace: "default", Name: "wrong"}, Spec: "text"})
	}
	src := &fakeSource{objs: objs}
	for _, p := range []Proxy{{Node: "node-a"}, {Kind: ProxylessGRPC, Namespace: "default"}} {
		nc := prepare(src).Translate(p)
		if err := Check(nc); err != nil {
			t.Fatal(err)
		}
		if len(nc.Diagnostics) < 7 {
			t.Errorf("%v: %d diagnostics, want one per bad object: %v", p.Kind, len(nc.Diagnostics), nc.Diagnostics)
		}
	}
}

// fakeSource serves a fixed list of objects, including ones the real store
// would refuse.
type fakeSource struct{ objs []*config.Object }

func (f *fakeSource) List(kind config.Kind) []*config.Object {
	var out []*config.Object
	for _, o := range f.objs {
		if o.Kind == kind {
			out = append(out, o)
		}
	}
	return out
}
func (f *fakeSource) Get(k config.Key) (*config.Object, bool) { return nil, false }
func (f *fakeSource) PodsOnNode(node string) []*config.Object { return f.List(config.KindPod) }
func (f *fakeSource) PodsMatching(ns string, sel map[string]string) []*config.Object {
	return f.List(config.KindPod)
}
func (f *fakeSource) EndpointSlicesFor(ns, svc string) []*config.Object {
	return f.List(config.KindEndpointSlice)
}
