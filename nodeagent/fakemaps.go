package nodeagent

import (
	"fmt"
	"sync"

	"github.com/nodemesh/nodemesh/bpf"
)

// Op is one write recorded by the fake maps.
type Op struct {
	Table  string
	Delete bool
	Key    any
	Value  any // nil for a delete
}

func (o Op) String() string {
	if o.Delete {
		return fmt.Sprintf("delete %s %+v", o.Table, o.Key)
	}
	return fmt.Sprintf("put %s %+v = %+v", o.Table, o.Key, o.Value)
}

// OpLog records the writes of every fake table of one Maps, in order.
type OpLog struct {
	mu  sync.Mutex
	ops []Op
}

func (l *OpLog) add(op Op) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ops = append(l.ops, op)
}

// Ops returns the writes so far.
func (l *OpLog) Ops() []Op {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Op(nil), l.ops...)
}

// Reset forgets the writes so far.
func (l *OpLog) Reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ops = nil
}

// memTable is an in-memory Table.
type memTable[K comparable, V any] struct {
	name string
	log  *OpLog
	mu   sync.Mutex
	m    map[K]V
}

func newMemTable[K comparable, V any](name string, log *OpLog) *memTable[K, V] {
	return &memTable[K, V]{name: name, log: log, m: map[K]V{}}
}

func (t *memTable[K, V]) Name() string { return t.name }

func (t *memTable[K, V]) Put(k K, v V) error {
	t.mu.Lock()
	t.m[k] = v
	t.mu.Unlock()
	t.log.add(Op{Table: t.name, Key: k, Value: v})
	return nil
}

func (t *memTable[K, V]) Lookup(k K) (V, bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	v, ok := t.m[k]
	return v, ok, nil
}

func (t *memTable[K, V]) Delete(k K) error {
	t.mu.Lock()
	delete(t.m, k)
	t.mu.Unlock()
	t.log.add(Op{Table: t.name, Delete: true, Key: k})
	return nil
}

func (t *memTable[K, V]) Dump() (map[K]V, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[K]V, len(t.m))
	for k, v := range t.m {
		out[k] = v
	}
	return out, nil
}

// NewFakeMaps returns in-memory tables that record every write in log.
func NewFakeMaps(log *OpLog) Maps {
	return Maps{
		Services:   newMemTable[bpf.MeshSvcKey, bpf.MeshSvcValue](bpf.MeshMapServices, log),
		Backends:   newMemTable[uint32, bpf.MeshBackend](bpf.MeshMapBackends, log),
		Workloads:  newMemTable[bpf.MeshAddr, bpf.MeshEndpointInfo](bpf.MeshMapWorkloads, log),
		Cgroups:    newMemTable[uint64, bpf.MeshEndpointInfo](bpf.MeshMapCgroupWorkloads, log),
		Namespaces: newMemTable[uint32, bpf.MeshNsInfo](bpf.MeshMapNamespaces, log),
		Redirects:  newMemTable[uint32, bpf.MeshRedirect](bpf.MeshMapRedirects, log),
		Policy:     newMemTable[bpf.MeshPolicyKey, bpf.MeshPolicyValue](bpf.MeshMapPolicy, log),
		PolicyMode: newMemTable[uint32, uint32](bpf.MeshMapPolicyMode, log),
	}
}

// Fault decides whether a write fails: it gets the table name, whether the
// write is a delete, and the number of writes so far (across all tables of
// one FaultyMaps). A non-nil error is returned instead of writing.
type Fault func(table string, del bool, n int) error

type faultCounter struct {
	mu    sync.Mutex
	n     int
	fault Fault
}

func (c *faultCounter) check(table string, del bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.n
	c.n++
	return c.fault(table, del, n)
}

type faultyTable[K comparable, V any] struct {
	Table[K, V]
	c *faultCounter
}

func (t faultyTable[K, V]) Put(k K, v V) error {
	if err := t.c.check(t.Name(), false); err != nil {
		return err
	}
	return t.Table.Put(k, v)
}

func (t faultyTable[K, V]) Delete(k K) error {
	if err := t.c.check(t.Name(), true); err != nil {
		return err
	}
	return t.Table.Delete(k)
}

func wrapFaulty[K comparable, V any](t Table[K, V], c *faultCounter) Table[K, V] {
	return faultyTable[K, V]{Table: t, c: c}
}

// FaultyMaps wraps m so that writes fail when fault says so.
func FaultyMaps(m Maps, fault Fault) Maps {
	c := &faultCounter{fault: fault}
	return Maps{
		Services:   wrapFaulty(m.Services, c),
		Backends:   wrapFaulty(m.Backends, c),
		Workloads:  wrapFaulty(m.Workloads, c),
		Cgroups:    wrapFaulty(m.Cgroups, c),
		Namespaces: wrapFaulty(m.Namespaces, c),
		Redirects:  wrapFaulty(m.Redirects, c),
		Policy:     wrapFaulty(m.Policy, c),
		PolicyMode: wrapFaulty(m.PolicyMode, c),
	}
}
