package nodeagent

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/nodemesh/nodemesh/bpf"
)

// Table is one BPF map as the diff sees it. Implementations: the real map
// (NewEBPFTable), an in-memory fake (NewFakeMaps) and a fault-injecting
// wrapper (FaultyMaps), in the spirit of Cilium's lbmaps.
type Table[K comparable, V any] interface {
	Name() string
	Put(k K, v V) error
	// Lookup reads one entry; ok is false when k is absent.
	Lookup(k K) (v V, ok bool, err error)
	// Delete removes k; deleting a missing key is success.
	Delete(k K) error
	// Dump reads every entry.
	Dump() (map[K]V, error)
}

// Maps are the tables Apply writes. The program-written maps (reverse NAT,
// original destinations, counters, sock_hash) are not here.
type Maps struct {
	Services   Table[bpf.MeshSvcKey, bpf.MeshSvcValue]
	Backends   Table[uint32, bpf.MeshBackend]
	Workloads  Table[bpf.MeshAddr, bpf.MeshEndpointInfo]
	Cgroups    Table[uint64, bpf.MeshEndpointInfo]
	Namespaces Table[uint32, bpf.MeshNsInfo]
	Redirects  Table[uint32, bpf.MeshRedirect]
	Policy     Table[bpf.MeshPolicyKey, bpf.MeshPolicyValue]
	PolicyMode Table[uint32, uint32]
}

// KernelMaps wraps the loaded kernel maps of a collection, by name.
func KernelMaps(m map[string]*ebpf.Map) Maps {
	return Maps{
		Services:   NewEBPFTable[bpf.MeshSvcKey, bpf.MeshSvcValue](bpf.MeshMapServices, m[bpf.MeshMapServices]),
		Backends:   NewEBPFTable[uint32, bpf.MeshBackend](bpf.MeshMapBackends, m[bpf.MeshMapBackends]),
		Workloads:  NewEBPFTable[bpf.MeshAddr, bpf.MeshEndpointInfo](bpf.MeshMapWorkloads, m[bpf.MeshMapWorkloads]),
		Cgroups:    NewEBPFTable[uint64, bpf.MeshEndpointInfo](bpf.MeshMapCgroupWorkloads, m[bpf.MeshMapCgroupWorkloads]),
		Namespaces: NewEBPFTable[uint32, bpf.MeshNsInfo](bpf.MeshMapNamespaces, m[bpf.MeshMapNamespaces]),
		Redirects:  NewEBPFTable[uint32, bpf.MeshRedirect](bpf.MeshMapRedirects, m[bpf.MeshMapRedirects]),
		Policy:     NewEBPFTable[bpf.MeshPolicyKey, bpf.MeshPolicyValue](bpf.MeshMapPolicy, m[bpf.MeshMapPolicy]),
		PolicyMode: NewEBPFTable[uint32, uint32](bpf.MeshMapPolicyMode, m[bpf.MeshMapPolicyMode]),
	}
}

// ebpfTable is a Table over a kernel map.
type ebpfTable[K comparable, V any] struct {
	name string
	m    *ebpf.Map
}

// NewEBPFTable wraps a kernel map whose key and value types are K and V.
func NewEBPFTable[K comparable, V any](name string, m *ebpf.Map) Table[K, V] {
	return &ebpfTable[K, V]{name: name, m: m}
}

func (t *ebpfTable[K, V]) Name() string { return t.name }

func (t *ebpfTable[K, V]) Put(k K, v V) error {
	if err := t.m.Update(&k, &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("update map %s: %w", t.name, err)
	}
	return nil
}

func (t *ebpfTable[K, V]) Lookup(k K) (V, bool, error) {
	var v V
	err := t.m.Lookup(&k, &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return v, false, nil
	}
	if err != nil {
		return v, false, fmt.Errorf("lookup in map %s: %w", t.name, err)
	}
	return v, true, nil
}

func (t *ebpfTable[K, V]) Delete(k K) error {
	if err := t.m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete from map %s: %w", t.name, err)
	}
	return nil
}

// batchSize is the number of entries read per BPF_MAP_LOOKUP_BATCH call.
const batchSize = 8192

func (t *ebpfTable[K, V]) Dump() (map[K]V, error) {
	out := make(map[K]V)
	keys := make([]K, batchSize)
	vals := make([]V, batchSize)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := t.m.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			out[keys[i]] = vals[i]
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if err != nil {
			// Arrays of this kernel and oversized buckets (ENOSPC) do
			// not batch: fall back to the iterator.
			return t.iterate()
		}
	}
}

func (t *ebpfTable[K, V]) iterate() (map[K]V, error) {
	out := make(map[K]V)
	var k K
	var v V
	it := t.m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read map %s: %w", t.name, err)
	}
	return out, nil
}
