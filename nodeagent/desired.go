package nodeagent

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/nodemesh/nodemesh/bpf"
)

// contents is what the maps must hold for a State.
type contents struct {
	services   map[bpf.MeshSvcKey]bpf.MeshSvcValue
	backends   map[uint32]bpf.MeshBackend
	workloads  map[bpf.MeshAddr]bpf.MeshEndpointInfo
	cgroups    map[uint64]bpf.MeshEndpointInfo
	namespaces map[uint32]bpf.MeshNsInfo
	redirects  map[uint32]bpf.MeshRedirect
	policy     map[bpf.MeshPolicyKey]bpf.MeshPolicyValue
	mode       map[uint32]uint32
	warnings   []string
}

// CgroupResolver turns a cgroup v2 directory into its id.
type CgroupResolver func(path string) (uint64, error)

// newContents returns empty contents.
func newContents() *contents {
	return &contents{
		services:   map[bpf.MeshSvcKey]bpf.MeshSvcValue{},
		backends:   map[uint32]bpf.MeshBackend{},
		workloads:  map[bpf.MeshAddr]bpf.MeshEndpointInfo{},
		cgroups:    map[uint64]bpf.MeshEndpointInfo{},
		namespaces: map[uint32]bpf.MeshNsInfo{},
		redirects:  map[uint32]bpf.MeshRedirect{},
		policy:     map[bpf.MeshPolicyKey]bpf.MeshPolicyValue{},
		mode:       map[uint32]uint32{},
	}
}

// desiredContents computes the map contents of a validated state. Backend
// ids come from alloc (see backendIDs).
func desiredContents(s *State, alloc *backendIDs, resolve CgroupResolver) (*contents, error) {
	c, err := desiredSmall(s, resolve)
	if err != nil {
		return nil, err
	}
	for _, svc := range s.Services {
		if err := c.addService(svc, alloc); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// desiredSmall computes everything but services and backends.
func desiredSmall(s *State, resolve CgroupResolver) (*contents, error) {
	c := newContents()
	nsIDs, err := s.namespaceIDs()
	if err != nil {
		return nil, err
	}
	accel := map[string]bool{}
	for _, a := range s.Accelerate {
		accel[a.Namespace] = true
	}
	for id, name := range nsIDs {
		var flags uint32
		if accel[name] {
			flags |= bpf.NamespaceAccelerate
		}
		c.namespaces[id] = bpf.NamespaceInfo(name, flags)
	}
	for _, w := range s.Workloads {
		c.addWorkload(w, resolve)
	}
	for _, r := range s.Redirects {
		c.redirects[NamespaceID(r.Namespace)] = bpf.Redirect(r.ProxyIP, r.ProxyPort)
	}
	for _, p := range s.Policies {
		k := bpf.MeshPolicyKey{DstIdentity: p.DstIdentity, SrcIdentity: p.SrcIdentity, Port: p.Port, Proto: uint8(p.Proto)}
		if old, ok := c.policy[k]; ok && old.Verdict == bpf.VerdictDeny {
			continue // a duplicate rule: DENY wins
		}
		c.policy[k] = bpf.MeshPolicyValue{Verdict: uint32(p.Verdict)}
		if p.Verdict == Allow {
			c.mode[p.DstIdentity] = bpf.ModeDefaultDeny
		}
	}
	return c, nil
}

func (c *contents) addService(svc Service, alloc *backendIDs) error {
	bs := slices.Clone(svc.Backends)
	slices.SortFunc(bs, func(a, b Backend) int {
		return netip.AddrPortFrom(a.IP, a.Port).Compare(netip.AddrPortFrom(b.IP, b.Port))
	})
	weighted := false
	for _, b := range bs {
		weighted = weighted || b.Weight > 0
	}
	var cum uint32
	for i, b := range bs {
		id, err := alloc.id(bpf.Backend(b.IP, b.Port))
		if err != nil {
			return fmt.Errorf("services (%s): backends[%d]: %w", svc.Key(), i, err)
		}
		c.backends[id] = bpf.Backend(b.IP, b.Port)
		v := bpf.MeshSvcValue{BackendId: id}
		if weighted {
			cum += b.Weight
			v.Weight = cum
		}
		c.services[bpf.ServiceKey(svc.VIP, svc.Port, uint8(svc.Proto), uint16(i+1))] = v
	}
	master := bpf.MeshSvcValue{Count: uint32(len(bs)), L7ProxyPort: svc.L7ProxyPort}
	if weighted {
		master.Flags = bpf.SvcWeighted
		master.Weight = cum
	}
	c.services[bpf.ServiceKey(svc.VIP, svc.Port, uint8(svc.Proto), 0)] = master
	return nil
}

func (c *contents) addWorkload(w Workload, resolve CgroupResolver) {
	info := bpf.MeshEndpointInfo{Identity: w.Identity, Ns: NamespaceID(w.Namespace)}
	if w.Local {
		info.Flags |= bpf.EndpointLocal
	}
	c.workloads[bpf.Addr(w.IP)] = info
	id := w.CgroupID
	if id == 0 && w.Cgroup != "" {
		var err error
		if id, err = resolve(w.Cgroup); err != nil {
			c.warnings = append(c.warnings, fmt.Sprintf("workload %s: cgroup skipped: %v", w.IP, err))
			return
		}
	}
	if id != 0 {
		c.cgroups[id] = info
	}
}

// backendIDs hands out backend ids: an address already in the backends map
// keeps its id; a new one gets the lowest id not in the map (never one
// freed by the same change, since deletes come last). refs counts the
// slots using each id; it is kept between incremental applies.
type backendIDs struct {
	byAddr map[bpf.MeshBackend]uint32
	inMap  []bool   // index: id
	refs   []uint32 // index: id
	fresh  map[uint32]bool
	next   uint32
}

func newBackendIDs(cur map[uint32]bpf.MeshBackend) *backendIDs {
	a := &backendIDs{
		byAddr: make(map[bpf.MeshBackend]uint32, len(cur)),
		inMap:  make([]bool, bpf.BackendsMax+1),
		refs:   make([]uint32, bpf.BackendsMax+1),
		fresh:  map[uint32]bool{},
		next:   1,
	}
	for id, b := range cur {
		if id > bpf.BackendsMax {
			continue // not ours; deleted as stale
		}
		a.inMap[id] = true
		if old, ok := a.byAddr[b]; !ok || id < old {
			a.byAddr[b] = id
		}
	}
	return a
}

func (a *backendIDs) id(b bpf.MeshBackend) (uint32, error) {
	if id, ok := a.byAddr[b]; ok {
		return id, nil
	}
	for a.next <= bpf.BackendsMax && a.inMap[a.next] {
		a.next++
	}
	if a.next > bpf.BackendsMax {
		return 0, fmt.Errorf("backend %s: no free backend id (map holds %d)", b.AddrPort(), bpf.BackendsMax)
	}
	id := a.next
	a.inMap[id] = true
	a.fresh[id] = true
	a.byAddr[b] = id
	return id, nil
}

// release forgets an id whose backend entry was deleted.
func (a *backendIDs) release(id uint32, b bpf.MeshBackend) {
	if id <= bpf.BackendsMax {
		a.inMap[id] = false
		a.refs[id] = 0
		if id < a.next {
			a.next = id
		}
	}
	if a.byAddr[b] == id {
		delete(a.byAddr, b)
	}
}
