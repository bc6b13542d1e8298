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
	c, err := readSmall(m)
	if err != nil {
		return nil, err
	}
	if c.services, err = m.Services.Dump(); err != nil {
		return nil, err
	}
	if c.backends, err = m.Backends.Dump(); err != nil {
		return nil, err
	}
	return c, nil
}

// readSmall reads every map but services and backends.
func readSmall(m Maps) (*current, error) {
	var c current
	var err error
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

// applyState makes the maps hold s, reading everything they hold first
// (never a cache: a crashed agent converges on its next apply). Write order
// keeps every intermediate state consistent for the programs:
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
// writes nothing. It returns the backend ids in use, for incremental applies.
func applyState(ctx context.Context, m Maps, s *State, resolve CgroupResolver) (Stats, *backendIDs, error) {
	var st Stats
	if err := s.Validate(); err != nil {
		return st, nil, fmt.Errorf("invalid state: %w", err)
	}
	cur, err := readCurrent(m)
	if err != nil {
		return st, nil, err
	}
	ids := newBackendIDs(cur.backends)
	want, err := desiredContents(s, ids, resolve)
	if err != nil {
		return st, nil, err
	}
	st.Warnings = want.warnings
	w := &writer{ctx: ctx, st: &st}
	svcSteps := serviceSteps(w, m, cur.services, want.services, cur.backends, want.backends)
	if err := runSteps(smallPuts(w, m, cur, want), svcSteps, smallDeletes(w, m, cur, want)); err != nil {
		return st, nil, err
	}
	for id, b := range cur.backends {
		if _, ok := want.backends[id]; !ok {
			ids.release(id, b)
		}
	}
	for k, v := range want.services {
		if k.Slot != 0 {
			ids.refs[v.BackendId]++
		}
	}
	ids.fresh = map[uint32]bool{}
	st.Services = len(s.Services)
	st.Backends = len(want.backends)
	st.Workloads = len(want.workloads)
	st.Policies = len(want.policy)
	return st, ids, nil
}

func runSteps(groups ...[]func() error) error {
	for _, g := range groups {
		for _, step := range g {
			if err := step(); err != nil {
				return err
			}
		}
	}
	return nil
}

// smallPuts writes new and changed entries of every map but services and
// backends (step 1).
func smallPuts(w *writer, m Maps, cur *current, want *contents) []func() error {
	return []func() error{
		func() error { return putChanged(w, m.Namespaces, cur.namespaces, want.namespaces, nil, cmp.Compare) },
		func() error { return putChanged(w, m.Workloads, cur.workloads, want.workloads, nil, compareAddr) },
		func() error { return putChanged(w, m.Cgroups, cur.cgroups, want.cgroups, nil, cmp.Compare) },
		func() error { return putChanged(w, m.Redirects, cur.redirects, want.redirects, nil, cmp.Compare) },
		func() error { return putChanged(w, m.Policy, cur.policy, want.policy, nil, comparePolicy) },
		func() error { return putChanged(w, m.PolicyMode, cur.mode, want.mode, nil, cmp.Compare) },
	}
}

// serviceSteps are steps 2-5 over the given service and backend entries.
func serviceSteps(w *writer, m Maps, curSvc, wantSvc map[bpf.MeshSvcKey]bpf.MeshSvcValue, curBe, wantBe map[uint32]bpf.MeshBackend) []func() error {
	isSlot := func(k bpf.MeshSvcKey) bool { return k.Slot != 0 }
	isMaster := func(k bpf.MeshSvcKey) bool { return k.Slot == 0 }
	return []func() error{
		func() error { return putChanged(w, m.Backends, curBe, wantBe, nil, cmp.Compare) },
		func() error { return putChanged(w, m.Services, curSvc, wantSvc, isSlot, compareSvc) },
		func() error { return putChanged(w, m.Services, curSvc, wantSvc, isMaster, compareSvc) },
		func() error { return deleteStale(w, m.Services, curSvc, wantSvc, isMaster, compareSvc) },
		func() error { return deleteStale(w, m.Services, curSvc, wantSvc, isSlot, compareSvc) },
		func() error { return deleteStale(w, m.Backends, curBe, wantBe, nil, cmp.Compare) },
	}
}

// smallDeletes removes what is no longer wanted (step 6).
func smallDeletes(w *writer, m Maps, cur *current, want *contents) []func() error {
	return []func() error{
		func() error { return deleteStale(w, m.PolicyMode, cur.mode, want.mode, nil, cmp.Compare) },
		func() error { return deleteStale(w, m.Policy, cur.policy, want.policy, nil, comparePolicy) },
		func() error { return deleteStale(w, m.Redirects, cur.redirects, want.redirects, nil, cmp.Compare) },
		func() error { return deleteStale(w, m.Cgroups, cur.cgroups, want.cgroups, nil, cmp.Compare) },
		func() error { return deleteStale(w, m.Workloads, cur.workloads, want.workloads, nil, compareAddr) },
		func() error { return deleteStale(w, m.Namespaces, cur.namespaces, want.namespaces, nil, cmp.Compare) },
	}
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
