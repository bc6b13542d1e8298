package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/nodeagent"
	"github.com/nodemesh/nodemesh/nodeagent/ads"
)

// fakeKernel records what it is asked to apply and fails on demand.
type fakeKernel struct {
	applied []nodeagent.State
	err     error
}

func (k *fakeKernel) Apply(_ context.Context, s nodeagent.State) (nodeagent.Stats, error) {
	if k.err != nil {
		return nodeagent.Stats{}, k.err
	}
	k.applied = append(k.applied, s)
	return nodeagent.Stats{Workloads: len(s.Workloads), Services: len(s.Services)}, nil
}

func resources(workloadIP string) *ads.Resources {
	return &ads.Resources{
		Workloads: map[string]*dataplanev1.Workload{"shop/web-0": {Name: "web-0", Namespace: "shop", Node: "n1", Identity: 1000, Ips: []string{workloadIP}}},
		Services: map[string]*dataplanev1.Service{"shop/web:80/TCP": {Namespace: "shop", Name: "web", Vips: []string{"10.96.0.10"}, Port: 80,
			Protocol: dataplanev1.Protocol_TCP, Backends: []*dataplanev1.Backend{{Ip: workloadIP, Port: 8080}}}},
	}
}

func TestApplier(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	nodeIP := netip.MustParseAddr("10.0.0.1")
	cfg := ads.StateConfig{Node: "n1", ProxyIP: nodeIP, PodCgroup: func(ns, pod, _ string) string { return "/cg/" + ns + "_" + pod }}
	host := nodeagent.Workload{IP: nodeIP, Identity: nodeagent.IdentityHost, Local: true}
	addrCmp := cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

	t.Run("adds the host workload and resolves local cgroups", func(t *testing.T) {
		k := &fakeKernel{}
		a := NewApplier(k, cfg, nodeIP, log)
		if err := a.Apply(context.Background(), resources("10.1.0.5")); err != nil {
			t.Fatal(err)
		}
		want := []nodeagent.Workload{
			host,
			{IP: netip.MustParseAddr("10.1.0.5"), Identity: 1000, Namespace: "shop", Local: true, Cgroup: "/cg/shop_web-0"},
		}
		if diff := cmp.Diff(want, k.applied[0].Canonical().Workloads, addrCmp); diff != "" {
			t.Errorf("workloads (-want +got):\n%s", diff)
		}
		if st := a.Status(); st.Applies != 1 || st.Failures != 0 || st.Stats.Workloads != 2 || st.At.IsZero() {
			t.Errorf("status %+v", st)
		}
	})
	t.Run("a pod on the node IP keeps its identity", func(t *testing.T) {
		k := &fakeKernel{}
		a := NewApplier(k, cfg, nodeIP, log)
		if err := a.Apply(context.Background(), resources("10.0.0.1")); err != nil {
			t.Fatal(err)
		}
		if ws := k.applied[0].Workloads; len(ws) != 1 || ws[0].Identity != 1000 {
			t.Errorf("workloads %+v", ws)
		}
	})
	t.Run("no node IP, no host workload", func(t *testing.T) {
		k := &fakeKernel{}
		if err := NewApplier(k, cfg, netip.Addr{}, log).Apply(context.Background(), resources("10.1.0.5")); err != nil {
			t.Fatal(err)
		}
		if ws := k.applied[0].Workloads; len(ws) != 1 {
			t.Errorf("workloads %+v", ws)
		}
	})
	t.Run("a bad resource is rejected before the kernel", func(t *testing.T) {
		k := &fakeKernel{}
		a := NewApplier(k, cfg, nodeIP, log)
		err := a.Apply(context.Background(), resources("not-an-ip"))
		if err == nil || !strings.Contains(err.Error(), "workload shop/web-0") {
			t.Fatalf("want an error naming the workload, got %v", err)
		}
		if len(k.applied) != 0 {
			t.Errorf("the kernel was written: %+v", k.applied)
		}
		if st := a.Status(); st.Failures != 1 || st.Error != err.Error() {
			t.Errorf("status %+v", st)
		}
	})
	t.Run("a kernel failure is returned and a success clears it", func(t *testing.T) {
		k := &fakeKernel{err: errors.New("map full")}
		a := NewApplier(k, cfg, nodeIP, log)
		err := a.Apply(context.Background(), resources("10.1.0.5"))
		if err == nil || !strings.Contains(err.Error(), "applying dataplane state: map full") {
			t.Fatalf("got %v", err)
		}
		k.err = nil
		if err := a.Apply(context.Background(), resources("10.1.0.5")); err != nil {
			t.Fatal(err)
		}
		if st := a.Status(); st.Failures != 1 || st.Applies != 1 || st.Error != "" {
			t.Errorf("status %+v", st)
		}
	})
}
