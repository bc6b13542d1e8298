package ads

import (
	"context"
	"fmt"
	"log/slog"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/anypb"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
)

// bigSet holds n services with 10 backends each, and n/10 workloads.
func bigSet(n int) resourceSet {
	s := resourceSet{dataplanev1.ServiceType: {}, dataplanev1.WorkloadType: {}, dataplanev1.NamespaceListenerType: {}, dataplanev1.PolicyType: {}}
	for i := range n {
		svc := &dataplanev1.Service{Namespace: "ns", Name: fmt.Sprint("svc", i), Vips: []string{fmt.Sprintf("10.%d.%d.%d", 96+i>>16, i>>8&255, i&255)}, Port: 80, Protocol: dataplanev1.Protocol_TCP}
		for b := range 10 {
			svc.Backends = append(svc.Backends, &dataplanev1.Backend{Ip: fmt.Sprintf("10.200.%d.%d", i>>8&255, (i+b)&255), Port: uint32(8000 + b)})
		}
		s[dataplanev1.ServiceType][fmt.Sprintf("ns/svc%d:80/TCP", i)] = held{version: "v1", msg: svc}
	}
	for i := range n / 10 {
		s[dataplanev1.WorkloadType][fmt.Sprintf("ns/pod%d", i)] = held{version: "v1", msg: &dataplanev1.Workload{
			Namespace: "ns", Name: fmt.Sprint("pod", i), Ips: []string{fmt.Sprintf("10.201.%d.%d", i>>8&255, i&255)}, Identity: uint32(100 + i), Node: "node-a"}}
	}
	return s
}

// BenchmarkHandleOneEndpointChange is the client-side cost of one endpoint
// change with 10k services held: decode, stage, build the desired set,
// convert to a kernel State (the fake applier stops there), ACK.
func BenchmarkHandleOneEndpointChange(b *testing.B) {
	for _, n := range []int{1000, 10000, 100000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			conv := NewConverter(StateConfig{Node: "node-a"})
			c, err := New(Config{Node: "node-a", ControlPlane: "x:1", Logger: slog.New(slog.DiscardHandler),
				Applier: ApplierFunc(func(_ context.Context, r *Resources) error {
					_, err := conv.Convert(r)
					return err
				})})
			if err != nil {
				b.Fatal(err)
			}
			c.applied, c.synced = bigSet(n), true
			svc := &dataplanev1.Service{Namespace: "ns", Name: "svc7", Vips: []string{"10.96.0.7"}, Port: 80,
				Backends: []*dataplanev1.Backend{{Ip: "10.200.0.1", Port: 8080}}}
			body, _ := anypb.New(svc)
			st := newStreamState()
			b.ResetTimer()
			for i := range b.N {
				resp := &discovery.DeltaDiscoveryResponse{TypeUrl: dataplanev1.ServiceType, Nonce: fmt.Sprint(i),
					Resources: []*discovery.Resource{{Name: "ns/svc7:80/TCP", Version: fmt.Sprint(i), Resource: body}}}
				if err := c.handle(context.Background(), nopSender{}, st, resp); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

type nopSender struct{}

func (nopSender) Send(*discovery.DeltaDiscoveryRequest) error { return nil }
