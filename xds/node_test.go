package xds

import (
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/nodemesh/nodemesh/translate"
)

func TestProxyForNode(t *testing.T) {
	md := func(kv map[string]any) *structpb.Struct {
		s, err := structpb.NewStruct(kv)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	tests := []struct {
		name    string
		node    *corev3.Node
		want    translate.Proxy
		wantErr string
	}{
		{"shared envoy", &corev3.Node{Id: "kind-worker"}, translate.Proxy{Kind: translate.SharedEnvoy, Node: "kind-worker"}, ""},
		{"explicit envoy", &corev3.Node{Id: "w2", Metadata: md(map[string]any{MetaProxy: "envoy"})}, translate.Proxy{Node: "w2"}, ""},
		{"grpc", &corev3.Node{Id: "pod-123", Metadata: md(map[string]any{MetaProxy: "grpc", MetaNamespace: "shop", MetaNodeName: "w1"})},
			translate.Proxy{Kind: translate.ProxylessGRPC, Node: "w1", Namespace: "shop"}, ""},
		{"grpc without namespace", &corev3.Node{Id: "p", Metadata: md(map[string]any{MetaProxy: "grpc"})}, translate.Proxy{}, "needs NAMESPACE"},
		{"unknown kind", &corev3.Node{Id: "p", Metadata: md(map[string]any{MetaProxy: "waypoint"})}, translate.Proxy{}, `unknown metadata NODEMESH_PROXY="waypoint"`},
		{"no id", &corev3.Node{}, translate.Proxy{}, "no id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ProxyForNode(tt.node)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestContentVersion(t *testing.T) {
	nc := newFakeSource("127.0.0.1", "127.0.0.2").Current().Translate(translate.Proxy{})
	other := newFakeSource("127.0.0.1", "127.0.0.3").Current().Translate(translate.Proxy{})
	s1, err := buildSnapshot(nc, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	s1again, _ := buildSnapshot(newFakeSource("127.0.0.1", "127.0.0.2").Current().Translate(translate.Proxy{}), nil, &hashMemo{})
	s2, _ := buildSnapshot(other, nil, nil)
	v1, v1again, v2 := s1.versions, s1again.versions, s2.versions
	if !v1.Equal(v1again) {
		t.Fatalf("same content, different versions: %v vs %v", v1, v1again)
	}
	if v1.Equal(v2) {
		t.Fatal("different endpoints, same versions")
	}
	for _, typ := range EnvoyTypeURLs {
		same := v1[typ] == v2[typ]
		if wantSame := typ != resourcev3.EndpointType; same != wantSame { // only EDS differs
			t.Errorf("%s: versions %s vs %s", typeShort(typ), v1[typ], v2[typ])
		}
	}
	// Order of the input does not matter.
	a := nc.Clusters[0]
	b := proto.Clone(a).(*clusterv3.Cluster)
	b.Name = "outbound|9090||other"
	x, _, _, _ := contentVersion([]namedResource{{a.Name, a}, {b.Name, b}}, nil)
	y, _, _, _ := contentVersion([]namedResource{{b.Name, b}, {a.Name, a}}, nil)
	if x != y {
		t.Fatalf("order changed the version: %s vs %s", x, y)
	}
}
