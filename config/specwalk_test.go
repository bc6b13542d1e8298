package config

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	corev1 "k8s.io/api/core/v1"
)

func TestIstioUnknownFieldsAllReported(t *testing.T) {
	in := `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r, namespace: a}
spec:
  hosts: [r]
  htp: []
  http:
  - match:
    - headers:
        x-user: {exact: jason, exct: json}
    route:
    - destination: {host: r, subzet: v1}
      weight: 100
`
	_, diags := Decode("f.yaml", []byte(in))
	var fields []string
	for _, d := range diags {
		if d.Severity != SeverityError || d.Object != (Key{KindVirtualService, "a", "r"}) || d.Origin.Line != 1 {
			t.Errorf("unexpected %v", d)
		}
		fields = append(fields, d.Field+": "+d.Message)
	}
	want := []string{
		"spec.htp: unknown field (line 6)",
		"spec.http[0].match[0].headers.x-user.exct: unknown field (line 10)",
		"spec.http[0].route[0].destination.subzet: unknown field (line 12)",
	}
	if diff := cmp.Diff(want, fields); diff != "" {
		t.Errorf("fields (-want +got):\n%s", diff)
	}
}

func TestIstioDurationsAndNames(t *testing.T) {
	// Go durations anywhere (nested, in lists), proto (snake_case) field
	// names, and numbers as strings, all accepted as Istio does.
	in := `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [r]
  http:
  - timeout: 1m30s
    retries: {attempts: 3, per_try_timeout: 250ms}
    fault: {delay: {fixed_delay: 5s, percentage: {value: 0.1}}}
    route:
    - destination: {host: r, port: {number: "9080"}}
`
	objs, diags := Decode("f.yaml", []byte(in))
	if len(diags) != 0 || len(objs) != 1 {
		t.Fatalf("%d objects, diagnostics %v", len(objs), diags)
	}
	want := &networkingv1alpha3.VirtualService{Hosts: []string{"r"}, Http: []*networkingv1alpha3.HTTPRoute{{
		Timeout: durationpb.New(90 * time.Second),
		Retries: &networkingv1alpha3.HTTPRetry{Attempts: 3, PerTryTimeout: durationpb.New(250 * time.Millisecond)},
		Fault: &networkingv1alpha3.HTTPFaultInjection{Delay: &networkingv1alpha3.HTTPFaultInjection_Delay{
			HttpDelayType: &networkingv1alpha3.HTTPFaultInjection_Delay_FixedDelay{FixedDelay: durationpb.New(5 * time.Second)},
			Percentage:    &networkingv1alpha3.Percent{Value: 0.1},
		}},
		Route: []*networkingv1alpha3.HTTPRouteDestination{{Destination: &networkingv1alpha3.Destination{
			Host: "r", Port: &networkingv1alpha3.PortSelector{Number: 9080}}}},
	}}}
	if diff := cmp.Diff(want, objs[0].Spec, protocmp.Transform()); diff != "" {
		t.Errorf("spec (-want +got):\n%s", diff)
	}
}

func TestDurationString(t *testing.T) {
	for in, want := range map[string]string{
		"1m": "60s", "1h30m": "5400s", "500ms": "0.5s", "1.5s": "1.5s", "-2m": "-120s", "1ns": "0.000000001s", "0s": "0s",
	} {
		if got, ok := durationString(in); !ok || got != want {
			t.Errorf("durationString(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "5", "soon", "1d"} {
		if got, ok := durationString(in); ok {
			t.Errorf("durationString(%q) = %q, want failure", in, got)
		}
	}
}

func TestPathAtOffset(t *testing.T) {
	js := []byte(`{"a":{"b":[1,{"c":"x"},[true]]},"d":null}`)
	tests := []struct {
		at   string // the text at the offset
		want string
	}{
		{`{"a"`, ""},
		{`"a"`, "a"},
		{`{"b"`, "a"},
		{`"b"`, "a.b"},
		{`1,`, "a.b[0]"},
		{`"c"`, "a.b[1].c"},
		{`"x"`, "a.b[1].c"},
		{`true`, "a.b[2][0]"},
		{`null`, "d"},
	}
	for _, tt := range tests {
		off := -1
		for i := range js {
			if string(js[i:min(len(js), i+len(tt.at))]) == tt.at {
				off = i
				break
			}
		}
		if off < 0 {
			t.Fatalf("%q not in input", tt.at)
		}
		if got := pathAtOffset(js, int64(off)); got != tt.want {
			t.Errorf("pathAtOffset(at %q) = %q, want %q", tt.at, got, tt.want)
		}
	}
}

func TestDecodePodStatus(t *testing.T) {
	in := `apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web}}
spec:
  nodeName: node1
  serviceAccountName: web
  containers:
  - name: web
    image: web:1
    ports: [{name: http, containerPort: 8080, protocol: TCP}]
status:
  phase: Running
  podIP: 10.1.0.5
  podIPs: [{ip: 10.1.0.5}, {ip: "fd00::5"}]
`
	objs, diags := Decode("f.yaml", []byte(in))
	if len(diags) != 0 || len(objs) != 1 {
		t.Fatalf("%d objects, diagnostics %v", len(objs), diags)
	}
	pod := objs[0].Spec.(*corev1.Pod)
	got := []any{pod.Spec.NodeName, pod.Spec.ServiceAccountName, pod.Spec.Containers[0].Ports[0].ContainerPort,
		pod.Status.PodIP, len(pod.Status.PodIPs), pod.Status.PodIPs[1].IP, pod.Status.Phase}
	want := []any{"node1", "web", int32(8080), "10.1.0.5", 2, "fd00::5", corev1.PodRunning}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
