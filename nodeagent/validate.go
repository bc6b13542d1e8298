package nodeagent

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"path/filepath"

	"github.com/nodemesh/nodemesh/bpf"
)

// ErrAccelerationUnsafe is returned by Validate (and so Apply) for an
// Acceleration without SpliceSafe.
var ErrAccelerationUnsafe = errors.New("acceleration needs spliceSafe: true (sk_msg-redirected data never reaches splice(2) readers)")

// Validate checks the state; the error names the object and field. Apply
// calls it and writes nothing when it fails, so the last good state keeps
// serving.
func (s *State) Validate() error {
	var errs []error
	seenSvc := map[ServiceKey]int{}
	for i, svc := range s.Services {
		if err := validateService(svc); err != nil {
			errs = append(errs, fmt.Errorf("services[%d] (%s): %w", i, svc.Key(), err))
		}
		if j, ok := seenSvc[svc.Key()]; ok {
			errs = append(errs, fmt.Errorf("services[%d] (%s): duplicate of services[%d]", i, svc.Key(), j))
		}
		seenSvc[svc.Key()] = i
	}
	seenIP := map[netip.Addr]int{}
	for i, w := range s.Workloads {
		if err := validateWorkload(w); err != nil {
			errs = append(errs, fmt.Errorf("workloads[%d] (%s): %w", i, w.IP, err))
		}
		if j, ok := seenIP[w.IP]; ok {
			errs = append(errs, fmt.Errorf("workloads[%d] (%s): ip: duplicate of workloads[%d]", i, w.IP, j))
		}
		seenIP[w.IP] = i
	}
	for i, p := range s.Policies {
		if err := validatePolicy(p); err != nil {
			errs = append(errs, fmt.Errorf("policies[%d] (dst identity %d): %w", i, p.DstIdentity, err))
		}
	}
	seenNS := map[string]int{}
	for i, r := range s.Redirects {
		if err := validateRedirect(r); err != nil {
			errs = append(errs, fmt.Errorf("redirects[%d] (namespace %q): %w", i, r.Namespace, err))
		}
		if j, ok := seenNS[r.Namespace]; ok {
			errs = append(errs, fmt.Errorf("redirects[%d] (namespace %q): duplicate of redirects[%d]", i, r.Namespace, j))
		}
		seenNS[r.Namespace] = i
	}
	for i, a := range s.Accelerate {
		switch {
		case a.Namespace == "":
			errs = append(errs, fmt.Errorf("accelerate[%d]: namespace: empty", i))
		case !a.SpliceSafe:
			errs = append(errs, fmt.Errorf("accelerate[%d] (namespace %q): spliceSafe: %w", i, a.Namespace, ErrAccelerationUnsafe))
		}
	}
	if _, err := s.namespaceIDs(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func validateService(svc Service) error {
	switch {
	case !svc.VIP.IsValid():
		return errors.New("vip: not a valid address")
	case svc.Port == 0:
		return errors.New("port: must not be 0")
	case svc.Proto != TCP && svc.Proto != UDP:
		return fmt.Errorf("proto: %s is not TCP or UDP", svc.Proto)
	case len(svc.Backends) > bpf.MaxSlots:
		return fmt.Errorf("backends: %d is more than %d", len(svc.Backends), bpf.MaxSlots)
	}
	var total uint64
	var seen map[netip.AddrPort]int // only for large services: small ones compare pairwise
	if len(svc.Backends) > 16 {
		seen = make(map[netip.AddrPort]int, len(svc.Backends))
	}
	for i, b := range svc.Backends {
		ap := netip.AddrPortFrom(b.IP, b.Port)
		switch {
		case !b.IP.IsValid():
			return fmt.Errorf("backends[%d].ip: not a valid address", i)
		case b.IP.Unmap().Is4() != svc.VIP.Unmap().Is4():
			return fmt.Errorf("backends[%d].ip: %s is not of the VIP's family", i, b.IP)
		case b.Port == 0:
			return fmt.Errorf("backends[%d].port: must not be 0", i)
		}
		if j := duplicateBackend(svc.Backends, i, seen); j >= 0 {
			return fmt.Errorf("backends[%d]: %s duplicates backends[%d]", i, ap, j)
		}
		total += uint64(b.Weight)
	}
	if total > 1<<32-1 {
		return errors.New("backends: total weight overflows 32 bits")
	}
	return nil
}

// duplicateBackend returns the index of an earlier backend with the same
// address and port as bs[i], or -1.
func duplicateBackend(bs []Backend, i int, seen map[netip.AddrPort]int) int {
	if seen == nil {
		for j := 0; j < i; j++ {
			if bs[j].IP == bs[i].IP && bs[j].Port == bs[i].Port {
				return j
			}
		}
		return -1
	}
	ap := netip.AddrPortFrom(bs[i].IP, bs[i].Port)
	if j, ok := seen[ap]; ok {
		return j
	}
	seen[ap] = i
	return -1
}

func validateWorkload(w Workload) error {
	switch {
	case !w.IP.IsValid():
		return errors.New("ip: not a valid address")
	case w.Identity == IdentityUnknown:
		return errors.New("identity: 0 is reserved for unknown sources")
	case len(w.Namespace) >= bpf.MaxNamespaceName:
		return fmt.Errorf("namespace: longer than %d bytes", bpf.MaxNamespaceName-1)
	case w.Cgroup != "" && !filepath.IsAbs(w.Cgroup):
		return fmt.Errorf("cgroup: %q is not an absolute path", w.Cgroup)
	}
	return nil
}

func validatePolicy(p PolicyRule) error {
	switch {
	case p.DstIdentity == IdentityUnknown:
		return errors.New("dstIdentity: must not be 0")
	case p.Verdict != Allow && p.Verdict != Deny:
		return fmt.Errorf("verdict: %s is not ALLOW or DENY", p.Verdict)
	case p.Proto != ProtoAny && p.Proto != TCP && p.Proto != UDP:
		return fmt.Errorf("proto: %s is not TCP, UDP or ANY", p.Proto)
	}
	return nil
}

func validateRedirect(r Redirect) error {
	switch {
	case !r.ProxyIP.IsValid():
		return errors.New("proxyIP: not a valid address")
	case r.ProxyPort == 0 && r.Namespace != "":
		return errors.New("proxyPort: must not be 0 (only the node default may use the service's port)")
	case len(r.Namespace) >= bpf.MaxNamespaceName:
		return fmt.Errorf("namespace: longer than %d bytes", bpf.MaxNamespaceName-1)
	}
	return nil
}

// NamespaceID is the kernel id of a namespace name: FNV-1a, never 0 (0 is
// "no namespace", the name ""). Stable across restarts and nodes without
// any allocation state; Validate refuses a state in which two names collide.
func NamespaceID(name string) uint32 {
	if name == "" {
		return 0
	}
	h := fnv.New32a()
	h.Write([]byte(name))
	if id := h.Sum32(); id != 0 {
		return id
	}
	return 1
}

// namespaceIDs returns every namespace the state names, by id.
func (s *State) namespaceIDs() (map[uint32]string, error) {
	ids := map[uint32]string{}
	add := func(name string) error {
		if name == "" {
			return nil
		}
		id := NamespaceID(name)
		if other, ok := ids[id]; ok && other != name {
			return fmt.Errorf("namespace %q: id %d collides with namespace %q", name, id, other)
		}
		ids[id] = name
		return nil
	}
	var errs []error
	for _, w := range s.Workloads {
		errs = append(errs, add(w.Namespace))
	}
	for _, r := range s.Redirects {
		errs = append(errs, add(r.Namespace))
	}
	for _, a := range s.Accelerate {
		errs = append(errs, add(a.Namespace))
	}
	return ids, errors.Join(errs...)
}
