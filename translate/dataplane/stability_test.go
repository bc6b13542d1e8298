package dataplane

import (
	"bytes"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/config"
)

// The numbers bookinfo's identities and namespace get. They are part of the
// contract (agents keep them in pinned maps across meshd restarts): a change
// here is a breaking change.
var bookinfoIdentities = map[string]uint32{
	"default/bookinfo-details":     800394833,
	"default/bookinfo-productpage": 618193219,
	"default/bookinfo-ratings":     1012587453,
	"default/bookinfo-reviews":     435795858,
}

const defaultNamespaceID = 3890143

func TestIdentityNumbersAreHashesOfNames(t *testing.T) {
	for name, want := range bookinfoIdentities {
		h := fnv.New32a()
		h.Write([]byte(name))
		if got := IdentityBase + h.Sum32()%IdentitySlots; got != want {
			t.Errorf("%s: FNV-1a gives %d, pinned %d", name, got, want)
		}
	}
	h := fnv.New32a()
	h.Write([]byte("default"))
	if got := NamespaceIDBase + h.Sum32()%NamespaceIDSlots; got != defaultNamespaceID {
		t.Errorf("namespace default: FNV-1a gives %d, pinned %d", got, defaultNamespaceID)
	}
}

// numbers returns pod -> identity and namespace -> id from every node's
// resources.
func numbers(t *testing.T, snap *config.Snapshot, nodes ...string) (map[string]uint32, map[string]uint32) {
	t.Helper()
	ids, nsIDs := map[string]uint32{}, map[string]uint32{}
	for _, n := range nodes {
		r := Translate(snap, n)
		for _, w := range r.Workloads {
			ids[w.GetNamespace()+"/"+w.GetServiceAccount()] = w.GetIdentity()
			nsIDs[w.GetNamespace()] = w.GetNamespaceId()
		}
		for _, l := range r.Listeners {
			if old, ok := nsIDs[l.GetNamespace()]; ok && old != l.GetNamespaceId() {
				t.Fatalf("namespace %s: listener id %d, workload id %d", l.GetNamespace(), l.GetNamespaceId(), old)
			}
		}
	}
	return ids, nsIDs
}

func TestNumbersAreStable(t *testing.T) {
	objs, diags := config.Load(base...)
	if len(diags) > 0 && diags[0].Severity >= config.SeverityWarning {
		t.Fatal(diags)
	}
	before := snapshotOf(t, objs)
	ids, nsIDs := numbers(t, before, "node-a", "node-b")
	if diff := cmp.Diff(bookinfoIdentities, ids); diff != "" {
		t.Fatalf("bookinfo identities (-pinned +got):\n%s", diff)
	}
	if nsIDs["default"] != defaultNamespaceID {
		t.Fatalf("namespace default: id %d, pinned %d", nsIDs["default"], defaultNamespaceID)
	}

	t.Run("arrival order", func(t *testing.T) {
		st := config.NewStore()
		rev := slices.Clone(objs)
		slices.Reverse(rev)
		for i, o := range rev { // one object per commit, last first
			if err := st.Apply(fmt.Sprintf("src%d", i%3), []*config.Object{o}, nil); err != nil {
				t.Fatal(err)
			}
		}
		for _, n := range []string{"node-a", "node-b"} {
			if a, b := render(t, Translate(before, n)), render(t, Translate(st.Snapshot(), n)); !bytes.Equal(a, b) {
				t.Errorf("%s: output depends on arrival order:\n%s", n, cmp.Diff(string(a), string(b)))
			}
		}
	})

	t.Run("unrelated workloads added", func(t *testing.T) {
		more := `
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: aaa}
spec: {nodeName: node-a, serviceAccountName: first, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.1.9.1}
---
apiVersion: v1
kind: Pod
metadata: {name: z, namespace: default}
spec: {nodeName: node-b, serviceAccountName: zz-new, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.2.9.1}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: aaa-unused, namespace: default}
`
		after := decode(t, more)
		ids2, nsIDs2 := numbers(t, after, "node-a", "node-b")
		for name, id := range bookinfoIdentities {
			if ids2[name] != id {
				t.Errorf("%s: identity %d became %d", name, id, ids2[name])
			}
		}
		if nsIDs2["default"] != defaultNamespaceID {
			t.Errorf("namespace default: id %d became %d", defaultNamespaceID, nsIDs2["default"])
		}
		if len(ids2) != len(ids)+2 || ids2["aaa/first"] == 0 || ids2["default/zz-new"] == 0 {
			t.Errorf("new identities missing: %v", ids2)
		}
	})
}

func TestAllocateProbesDeterministically(t *testing.T) {
	// Find three names with the same preferred slot among 16.
	const slots = 16
	byslot := map[uint32][]string{}
	var names []string
	for i := 0; len(names) == 0; i++ {
		n := fmt.Sprintf("ns%d/sa", i)
		s := preferredSlot(n, slots)
		byslot[s] = append(byslot[s], n)
		if len(byslot[s]) == 3 {
			names = byslot[s]
		}
	}
	s := preferredSlot(names[0], slots)
	sorted := slices.Sorted(slices.Values(names))
	got := allocate([]string{names[2], names[0], names[1]}, 100, slots)
	for i, n := range sorted {
		if want := 100 + (s+uint32(i))%slots; got[n] != want {
			t.Errorf("%s: got %d, want %d (sorted position %d)", n, got[n], want, i)
		}
	}
	if again := allocate(slices.Clone(sorted), 100, slots); !cmp.Equal(got, again) {
		t.Errorf("input order changes the allocation: %v vs %v", got, again)
	}
	// The documented limit: removing the first collider moves the others.
	moved := allocate(sorted[1:], 100, slots)
	if moved[sorted[1]] != 100+s {
		t.Errorf("%s: got %d after its collider left, want its preferred slot %d", sorted[1], moved[sorted[1]], 100+s)
	}
	// Every name gets a distinct number, even with the table full.
	var many []string
	for i := range slots + 4 {
		many = append(many, fmt.Sprint(i))
	}
	full := allocate(many, 0, slots)
	seen := map[uint32]bool{}
	for _, id := range full {
		if seen[id] {
			t.Fatalf("number %d given twice", id)
		}
		seen[id] = true
	}
	if len(full) != slots {
		t.Errorf("%d names numbered in %d slots", len(full), slots)
	}
}

func TestConcurrentTranslateIsDeterministic(t *testing.T) {
	snap := load(t, append(base, "testdata/golden/l4-allow-sa/input.yaml")...)
	mesh := Prepare(snap, Options{})
	want := render(t, mesh.Translate("node-b"))
	var wg sync.WaitGroup
	outs := make([][]byte, 8)
	for i := range outs {
		wg.Go(func() { outs[i] = render(t, mesh.Translate("node-b")) })
	}
	wg.Wait()
	for i, got := range outs {
		if !bytes.Equal(got, want) {
			t.Errorf("translation %d differs", i)
		}
	}
}

func TestResourceName(t *testing.T) {
	cases := []struct {
		msg  proto.Message
		want string
	}{
		{&dataplanev1.Service{Namespace: "shop", Name: "web", Port: 80, Protocol: dataplanev1.Protocol_TCP}, "shop/web:80/TCP"},
		{&dataplanev1.Service{Namespace: "shop", Name: "dns", Port: 53, Protocol: dataplanev1.Protocol_UDP}, "shop/dns:53/UDP"},
		{&dataplanev1.Workload{Namespace: "shop", Name: "web-0"}, "shop/web-0"},
		{&dataplanev1.Policy{Namespace: "shop", Name: "deny"}, "shop/deny"},
		{&dataplanev1.NamespaceListener{Namespace: "shop"}, "shop"},
		{&dataplanev1.Backend{Ip: "10.0.0.1"}, ""},
	}
	for _, tc := range cases {
		if got := ResourceName(tc.msg); got != tc.want {
			t.Errorf("ResourceName(%v) = %q, want %q", tc.msg, got, tc.want)
		}
	}
}
