package dataplane

import (
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/internal/meshgen"
)

// The DESIGN.md mesh: 1,000 services, 10,000 pods, 50 namespaces, 50 nodes,
// 20% of services behind an 80/20 VirtualService.
func scaleMesh(tb testing.TB) (*config.Snapshot, meshgen.Params) {
	tb.Helper()
	p := meshgen.Default()
	objs, err := meshgen.Generate(p)
	if err != nil {
		tb.Fatal(err)
	}
	return snapshotOf(tb, objs), p
}

// TestScale checks what each node gets at scale: its own workloads only
// (no policies: no sources to classify), every service, l7 exactly for the
// services with a VirtualService, and resources the agent accepts.
func TestScale(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	snap, p := scaleMesh(t)
	start := time.Now()
	mesh := Prepare(snap, Options{})
	prepared := time.Since(start)
	total := 0
	for i := range p.Nodes {
		node := meshgen.NodeName(i)
		r := mesh.Translate(node)
		local := len(snap.PodsOnNode(node))
		if len(r.Workloads) != local {
			t.Errorf("%s: %d workloads, want its %d pods", node, len(r.Workloads), local)
		}
		if len(r.Services) != p.Services {
			t.Errorf("%s: %d services, want %d", node, len(r.Services), p.Services)
		}
		l7 := 0
		for _, s := range r.Services {
			if s.GetL7() {
				l7++
			}
			if len(s.GetBackends()) != p.EndpointsPerService {
				t.Fatalf("%s: service %s has %d backends, want %d", node, ResourceName(s), len(s.GetBackends()), p.EndpointsPerService)
			}
		}
		want := 0
		for s := range p.Services {
			if p.HasVirtualService(s) {
				want++
			}
		}
		if l7 != want {
			t.Errorf("%s: %d l7 services, want %d (those with a VirtualService)", node, l7, want)
		}
		if i == 0 {
			agentState(t, r, node)
		}
		total += len(r.Workloads)
	}
	if total != len(snap.List(config.KindPod)) {
		t.Errorf("%d workloads over all nodes, want each of the %d pods once", total, len(snap.List(config.KindPod)))
	}
	t.Logf("Prepare %v, Prepare + %d nodes %v", prepared, p.Nodes, time.Since(start))
}

// TestScaleWithPolicy: a namespace-wide ALLOW from another namespace gives
// the nodes of the selected pods that namespace's workloads as sources, and
// nothing more of the cluster.
func TestScaleWithPolicy(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	p := meshgen.Default()
	objs, err := meshgen.Generate(p)
	if err != nil {
		t.Fatal(err)
	}
	dst, src := meshgen.NamespaceName(0), meshgen.NamespaceName(1)
	more, diags := config.Decode("policy.yaml", []byte(authz(dst, "ALLOW", "", `
  - from: [{source: {namespaces: [`+src+`]}}]`)))
	if len(diags) > 0 {
		t.Fatal(diags)
	}
	snap := snapshotOf(t, append(objs, more...))
	mesh := Prepare(snap, Options{})
	srcPods := map[string]bool{}
	for _, o := range snap.List(config.KindPod) {
		if o.Namespace == src {
			srcPods[o.Name] = true
		}
	}
	checked := 0
	for i := range p.Nodes {
		node := meshgen.NodeName(i)
		r := mesh.Translate(node)
		want := map[string]bool{}
		hasDst := false
		for _, o := range snap.PodsOnNode(node) {
			want[o.Namespace+"/"+o.Name] = true
			hasDst = hasDst || o.Namespace == dst
		}
		if hasDst {
			checked++
			for name := range srcPods {
				want[src+"/"+name] = true
			}
			if len(r.Policies) != 1 {
				t.Fatalf("%s: %d policies, want 1", node, len(r.Policies))
			}
		}
		got := map[string]bool{}
		for _, w := range r.Workloads {
			got[ResourceName(w)] = true
		}
		if len(got) != len(want) {
			t.Fatalf("%s: %d workloads, want %d (its pods, plus %s's when it runs %s pods)", node, len(got), len(want), src, dst)
		}
		for name := range want {
			if !got[name] {
				t.Fatalf("%s: workload %s missing", node, name)
			}
		}
	}
	if checked == 0 {
		t.Fatalf("no node runs pods of %s; the test checks nothing", dst)
	}
}

func BenchmarkPrepareAndTranslateAllNodes(b *testing.B) {
	snap, p := scaleMesh(b)
	for b.Loop() {
		mesh := Prepare(snap, Options{})
		for i := range p.Nodes {
			mesh.Translate(meshgen.NodeName(i))
		}
	}
}
