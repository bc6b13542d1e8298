package dataplane

import (
	"hash/fnv"
	"slices"
)

// Numeric identities and namespace ids.
//
// Both are allocated the same way, from names alone, so that they are the
// same on every node and after a restart of meshd, whatever order objects
// arrived in:
//
//   - the preferred slot of a name is FNV-1a-32(name) mod slots;
//   - names are placed in sorted order; a name whose preferred slot is
//     taken probes linearly (slot+1, slot+2, ... wrapping);
//   - the number is base + slot.
//
// Guarantee: a name whose preferred slot is not the preferred (or probed)
// slot of a name sorting before it keeps its number for as long as it
// exists, whatever else is added or removed. Limit: only names that
// collided can move, when a colliding name is added or removed. With
// 2^30 identity slots, 10,000 identities collide with probability about
// 5%, and then only one or two of them move; namespace ids use 2^24 slots.
const (
	// IdentityBase is the first workload identity; 0..IdentityBase-1 are
	// reserved (0 unknown, 1 host, see nodeagent) for the agent.
	IdentityBase  = 1 << 16
	IdentitySlots = 1 << 30
	// NamespaceIDBase is the first namespace id (0 means none).
	NamespaceIDBase  = 1
	NamespaceIDSlots = 1 << 24
)

// allocate returns name -> base+slot for every name, as described above.
func allocate(names []string, base, slots uint32) map[string]uint32 {
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	taken := make(map[uint32]bool, len(sorted))
	out := make(map[string]uint32, len(sorted))
	for _, n := range sorted {
		if uint32(len(taken)) >= slots {
			break // more names than slots: the rest get none
		}
		s := preferredSlot(n, slots)
		for taken[s] {
			s = (s + 1) % slots
		}
		taken[s] = true
		out[n] = base + s
	}
	return out
}

func preferredSlot(name string, slots uint32) uint32 {
	h := fnv.New32a()
	h.Write([]byte(name))
	return h.Sum32() % slots
}

// identityName is the key an identity is allocated by: "<ns>/<sa>".
func identityName(ns, sa string) string { return ns + "/" + sa }
