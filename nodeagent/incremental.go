package nodeagent

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"net/netip"
	"slices"

	"github.com/nodemesh/nodemesh/bpf"
)

// Reconciler applies states to one Maps (a Dataplane holds one). The first apply (and the next one
// after any failure) is a full reconcile: every map is read and the
// difference written (applyState). After a success it remembers the
// applied services and the backend ids in use, so the next apply only
// touches the services that differ from the last applied state - their
// current entries are still read from the maps, not from memory - and
// reads the small maps (workloads, policy, ...) in full as before. With
// 100k services and 1M backends, a full reconcile reads ~2.1M entries; an
// incremental one reads the entries of the changed services only.
type Reconciler struct {
	m       Maps
	resolve CgroupResolver
	last    map[ServiceKey]svcDigest // of the last applied state; nil: full next
	seed    maphash.Seed
	ids     *backendIDs
	// fullEvery forces a full reconcile after that many incremental ones
	// (0: never), to repair maps changed behind the agent's back.
	fullEvery   int
	incremental int
}

// DefaultFullEvery is how many incremental applies a Reconciler does
// between two full ones.
const DefaultFullEvery = 100

// NewReconciler returns a Reconciler over m; resolve turns cgroup paths into
// ids (CgroupID for the kernel).
func NewReconciler(m Maps, resolve CgroupResolver) *Reconciler {
	return &Reconciler{m: m, resolve: resolve, fullEvery: DefaultFullEvery, seed: maphash.MakeSeed()}
}

// Apply makes the maps hold s: a full reconcile first and after a failure,
// incremental service updates otherwise.
func (r *Reconciler) Apply(ctx context.Context, s State) (Stats, error) { return r.apply(ctx, &s) }

func (r *Reconciler) apply(ctx context.Context, s *State) (Stats, error) {
	if err := s.Validate(); err != nil {
		return Stats{}, fmt.Errorf("invalid state: %w", err)
	}
	next := r.digests(s.Services)
	full := r.last == nil || (r.fullEvery > 0 && r.incremental >= r.fullEvery)
	var st Stats
	var err error
	if full {
		var ids *backendIDs
		st, ids, err = applyState(ctx, r.m, s, r.resolve)
		r.ids, r.incremental = ids, 0
	} else {
		st, err = r.applyIncremental(ctx, s, next)
		r.incremental++
	}
	if err != nil {
		r.last, r.ids = nil, nil
		return st, err
	}
	r.last = next
	return st, nil
}

// Invalidate makes the next apply a full reconcile.
func (r *Reconciler) Invalidate() { r.last, r.ids = nil, nil }

// svcDigest stands for a service's content: the number of backends and a
// 64-bit hash of the L7 port and the sorted backends. Keeping digests
// instead of the services keeps no reference to the caller's slices and
// little memory; two different contents share a digest with probability
// 2^-64, and even then the next full reconcile repairs it.
type svcDigest struct {
	n   int
	sum uint64
}

func (r *Reconciler) digests(svcs []Service) map[ServiceKey]svcDigest {
	idx := make(map[ServiceKey]svcDigest, len(svcs))
	var buf []Backend
	var h maphash.Hash
	h.SetSeed(r.seed)
	for _, s := range svcs {
		bs := s.Backends
		if !slices.IsSortedFunc(bs, compareBackend) {
			buf = append(buf[:0], bs...)
			slices.SortFunc(buf, compareBackend)
			bs = buf
		}
		h.Reset()
		var b [8]byte
		binary.LittleEndian.PutUint16(b[:], s.L7ProxyPort)
		h.Write(b[:2])
		for _, be := range bs {
			a := be.IP.As16()
			h.Write(a[:])
			binary.LittleEndian.PutUint16(b[:], be.Port)
			binary.LittleEndian.PutUint32(b[2:], be.Weight)
			h.Write(b[:6])
		}
		idx[s.Key()] = svcDigest{n: len(bs), sum: h.Sum64()}
	}
	return idx
}

func compareBackend(a, b Backend) int {
	return netip.AddrPortFrom(a.IP, a.Port).Compare(netip.AddrPortFrom(b.IP, b.Port))
}

func (r *Reconciler) applyIncremental(ctx context.Context, s *State, next map[ServiceKey]svcDigest) (Stats, error) {
	var st Stats
	cur, err := readSmall(r.m)
	if err != nil {
		return st, err
	}
	want, err := desiredSmall(s, r.resolve)
	if err != nil {
		return st, err
	}
	st.Warnings = want.warnings

	// The services that differ, in both directions.
	var touched []ServiceKey
	for k, d := range next {
		if old, ok := r.last[k]; !ok || old != d {
			touched = append(touched, k)
		}
	}
	for k := range r.last {
		if _, ok := next[k]; !ok {
			touched = append(touched, k)
		}
	}
	curSvc, curBe, err := r.readServices(touched)
	if err != nil {
		return st, err
	}
	r.ids.fresh = map[uint32]bool{}
	byKey := make(map[ServiceKey]int, len(touched))
	for _, k := range touched {
		byKey[k] = -1
	}
	for i, svc := range s.Services {
		if _, ok := byKey[svc.Key()]; ok {
			byKey[svc.Key()] = i
		}
	}
	for _, k := range touched {
		if i := byKey[k]; i >= 0 {
			if err := want.addService(s.Services[i], r.ids); err != nil {
				return st, err
			}
		}
	}
	// Backends no longer used by any slot once this change is in.
	refs := map[uint32]int{}
	for k, v := range curSvc {
		if k.Slot != 0 {
			refs[v.BackendId]--
		}
	}
	for k, v := range want.services {
		if k.Slot != 0 {
			refs[v.BackendId]++
		}
	}
	wantBe := want.backends
	for id, b := range curBe {
		if int(r.ids.refs[id])+refs[id] > 0 {
			wantBe[id] = b // still used elsewhere: keep
		}
	}
	// Backends reused from other services are in the map already.
	for id, b := range wantBe {
		if !r.ids.fresh[id] {
			curBe[id] = b
		}
	}
	w := &writer{ctx: ctx, st: &st}
	steps := serviceSteps(w, r.m, curSvc, want.services, curBe, wantBe)
	if err := runSteps(smallPuts(w, r.m, cur, want), steps, smallDeletes(w, r.m, cur, want)); err != nil {
		return st, err
	}
	for id, d := range refs {
		r.ids.refs[id] = uint32(int(r.ids.refs[id]) + d)
	}
	for id, b := range curBe {
		if _, ok := wantBe[id]; !ok {
			r.ids.release(id, b)
		}
	}
	r.ids.fresh = map[uint32]bool{}
	st.Services = len(next)
	st.Backends = len(r.ids.byAddr)
	st.Workloads = len(want.workloads)
	st.Policies = len(want.policy)
	return st, nil
}

// readServices reads the entries of the given services from the maps:
// master, slots 1..count and the backends they point at.
func (r *Reconciler) readServices(keys []ServiceKey) (map[bpf.MeshSvcKey]bpf.MeshSvcValue, map[uint32]bpf.MeshBackend, error) {
	svcs := map[bpf.MeshSvcKey]bpf.MeshSvcValue{}
	backends := map[uint32]bpf.MeshBackend{}
	for _, k := range keys {
		mk := bpf.ServiceKey(k.VIP, k.Port, uint8(k.Proto), 0)
		master, ok, err := r.m.Services.Lookup(mk)
		if err != nil {
			return nil, nil, err
		}
		if !ok {
			continue
		}
		svcs[mk] = master
		n := max(master.Count, uint32(r.last[k].n))
		for slot := uint32(1); slot <= n && slot <= bpf.MaxSlots; slot++ {
			sk := mk
			sk.Slot = uint16(slot)
			v, ok, err := r.m.Services.Lookup(sk)
			if err != nil {
				return nil, nil, err
			}
			if !ok {
				continue
			}
			svcs[sk] = v
			if _, seen := backends[v.BackendId]; seen {
				continue
			}
			b, ok, err := r.m.Backends.Lookup(v.BackendId)
			if err != nil {
				return nil, nil, err
			}
			if ok {
				backends[v.BackendId] = b
			}
		}
	}
	return svcs, backends, nil
}
