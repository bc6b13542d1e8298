package nodeagent

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/nodemesh/nodemesh/bpf"
)

// Stats says what one Apply did.
type Stats struct {
	Puts    int // entries written (new or changed)
	Deletes int // entries removed
	// Sizes after the apply.
	Services  int // (VIP, port, proto) entries
	Backends  int
	Workloads int
	Policies  int
	// Warnings are non-fatal problems (a workload's cgroup that is gone).
	Warnings []string
}

// current is what the maps hold before an apply.
type current struct {
	services   map[bpf.MeshSvcKey]bpf.MeshSvcValue
	backends   map[uint32]bpf.MeshBackend
	workloads  map[bpf.MeshAddr]bpf.MeshEndpointInfo
	cgroups    map[uint64]bpf.MeshEndpointInfo
	namespaces map[uint32]bpf.MeshNsInfo
	redirects  map[uint32]bpf.MeshRedirect
	policy     map[bpf.MeshPolicyKey]bpf.MeshPolicyValue
	mode       map[uint32]uint32
}

func readCurrent(m Maps) (*current, error) {
	var c current
	var err error
	if c.services, err = m.Services.Dump(); err != nil {
		return nil, err
	}
	if c.backends, err = m.Backends.Dump(); err != nil {
		return nil, err
	}
	if c.workloads, err = m.Workloads.Dump(); err != nil {
		return nil, err
	}
	if c.cgroups, err = m.Cgroups.Dump(); err != nil {
		return nil, err
	}
	if c.namespaces, err = m.Namespaces.Dump(); err != nil {
		return nil, err
	}
	if c.redirects, err = m.Redirects.Dump(); err != nil {
		return nil, err
	}
	if c.policy, err = m.Policy.Dump(); err != nil {
		return nil, err
	}
	if c.mode, err = m.PolicyMode.Dump(); err != nil {
		return nil, err
	}
	return &c, nil
}

// applyState makes the maps hold s, reading what they hold first (never a
// cache: a crashed agent converges on its next apply). Write order keeps
// every intermediate state consistent for the programs:
//
//  1. namespaces, workloads, cgroups, redirects, policy rules, then modes;
//  2. new backends;
//  3. service slots, then the master entries (so a count never grows over
//     slots not written yet);
//  4. removed masters, then slots beyond the new counts;
//  5. unused backends;
//  6. removed modes, rules, redirects, cgroups, workloads, namespaces.
//
// Only entries that differ are written, so a second apply of the same state
// writes nothing.
func applyState(ctx context.Context, m Maps, s *State, resolve CgroupResolver) (Stats, error) {
	var st Stats
	if err := s.Validate(); err != nil {
		return st, fmt.Errorf("invalid state: %w", err)
	}
	cur, err := readCurrent(m)
	if err != nil {
		return st, err
	}
	want, err := desiredContents(s, cur.backends, resolve)
	if err != nil {
		return st, err
	}
	st.Warnings = want.warnings
	w := &writer{ctx: ctx, st: &st}

	isSlot := func(k bpf.MeshSvcKey) bool { return k.Slot != 0 }
	isMaster := func(k bpf.MeshSvcKey) bool { return k.Slot == 0 }
	steps := []func() error{
		func() error { return putChanged(w, m.Namespaces, cur.namespaces, want.namespaces, nil, cmp.Compare) },
		func() error { return putChanged(w, m.Workloads, cur.workloads, want.workloads, nil, compareAddr) },
		func() error { return putChanged(w, m.Cgroups, cur.cgroups, want.cgroups, nil, cmp.Compare) },
		func() error { return putChanged(w, m.Redirects, cur.redirects, want.redirects, nil, cmp.Compare) },
		func() error { return putChanged(w, m.Policy, cur.policy, want.policy, nil, comparePolicy) },
		func() error { return putChanged(w, m.PolicyMode, cur.mode, want.mode, nil, cmp.Compare) },
		func() error { return putChanged(w, m.Backends, cur.backends, want.backends, nil, cmp.Compare) },
		func() error { return putChanged(w, m.Services, cur.services, want.services, isSlot, compareSvc) },
		func() error { return putChanged(w, m.Services, cur.services, want.services, isMaster, compareSvc) },
		func() error { return deleteStale(w, m.Services, cur.services, want.services, isMaster, compareSvc) },
		func() error { return deleteStale(w, m.Services, cur.services, want.services, isSlot, compareSvc) },
		func() error { return deleteStale(w, m.Backends, cur.backends, want.backends, nil, cmp.Compare) },
		func() error { return deleteStale(w, m.PolicyMode, cur.mode, want.mode, nil, cmp.Compare) },
		func() error { return deleteStale(w, m.Policy, cur.policy, want.policy, nil, comparePolicy) },
		func() error { return deleteStale(w, m.Redirects, cur.redirects, want.redirects, nil, cmp.Compare) },
		func() error { return deleteStale(w, m.Cgroups, cur.cgroups, want.cgroups, nil, cmp.Compare) },
		func() error { return deleteStale(w, m.Workloads, cur.workloads, want.workloads, nil, compareAddr) },
		func() error { return deleteStale(w, m.Namespaces, cur.namespaces, want.namespaces, nil, cmp.Compare) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return st, err
		}
	}
	for k := range want.services {
		if k.Slot == 0 {
			st.Services++
		}
	}
	st.Backends = len(want.backends)
	st.Workloads = len(want.workloads)
	st.Policies = len(want.policy)
	return st, nil
}

// writer counts writes and checks for cancellation now and then.
type writer struct {
	ctx context.Context
	st  *Stats
	n   int
}

func (w *writer) tick() error {
	w.n++
	if w.n%1024 == 0 {
		return w.ctx.Err()
	}
	return nil
}

func putChanged[K comparable, V comparable](w *writer, t Table[K, V], cur, want map[K]V, keep func(K) bool, order func(a, b K) int) error {
	var keys []K
	for k, v := range want {
		if keep != nil && !keep(k) {
			continue
		}
		if old, ok := cur[k]; !ok || old != v {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, order)
	for _, k := range keys {
		if err := w.tick(); err != nil {
			return err
		}
		if err := t.Put(k, want[k]); err != nil {
			return err
		}
		w.st.Puts++
	}
	return nil
}

func deleteStale[K comparable, V any](w *writer, t Table[K, V], cur, want map[K]V, keep func(K) bool, order func(a, b K) int) error {
	var keys []K
	for k := range cur {
		if keep != nil && !keep(k) {
			continue
		}
		if _, ok := want[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, order)
	for _, k := range keys {
		if err := w.tick(); err != nil {
			return err
		}
		if err := t.Delete(k); err != nil {
			return err
		}
		w.st.Deletes++
	}
	return nil
}

// compareAddr orders addresses by their map words: deterministic and cheap
// (the order is not the numeric one on little-endian machines).
func compareAddr(a, b bpf.MeshAddr) int {
	return slices.Compare(a.A[:], b.A[:])
}

func compareSvc(a, b bpf.MeshSvcKey) int {
	return cmp.Or(compareAddr(a.Vip, b.Vip), cmp.Compare(bpf.NetPort(a.Port), bpf.NetPort(b.Port)),
		cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Slot, b.Slot))
}

func comparePolicy(a, b bpf.MeshPolicyKey) int {
	return cmp.Or(cmp.Compare(a.DstIdentity, b.DstIdentity), cmp.Compare(a.SrcIdentity, b.SrcIdentity),
		cmp.Compare(a.Port, b.Port), cmp.Compare(a.Proto, b.Proto))
}
