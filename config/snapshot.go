package config

import (
	"slices"

	memdb "github.com/hashicorp/go-memdb"
)

// Snapshot is an immutable, point-in-time view of a Store. Lists come out
// sorted by namespace then name. The returned Objects are shared: read-only.
type Snapshot struct {
	db      *memdb.MemDB // a memdb snapshot: never written
	version uint64
}

// Version is the store version this snapshot shows; it increments on every
// commit that changed something (0 for an empty, never written store).
func (s *Snapshot) Version() uint64 { return s.version }

// Get returns the object with key k.
func (s *Snapshot) Get(k Key) (*Object, bool) {
	raw, err := s.db.Txn(false).First(tableObjects, indexID, objectID(k))
	if err != nil || raw == nil {
		return nil, false
	}
	return raw.(*record).Obj, true
}

// Source returns the source that owns the object with key k.
func (s *Snapshot) Source(k Key) (string, bool) {
	raw, err := s.db.Txn(false).First(tableObjects, indexID, objectID(k))
	if err != nil || raw == nil {
		return "", false
	}
	return raw.(*record).Source, true
}

// List returns every object of a kind, sorted by namespace and name.
func (s *Snapshot) List(kind Kind) []*Object {
	return s.list(indexID+"_prefix", string(kind)+"\x00")
}

// ListInNamespace returns the objects of a kind in one namespace, sorted by
// name.
func (s *Snapshot) ListInNamespace(kind Kind, namespace string) []*Object {
	return s.list(indexID+"_prefix", string(kind)+"\x00"+namespace+"\x00")
}

// PodsOnNode returns the pods whose spec.nodeName is node, sorted by
// namespace and name.
func (s *Snapshot) PodsOnNode(node string) []*Object {
	if node == "" {
		return nil
	}
	return s.list(indexNode, node)
}

// PodsMatching returns the pods of a namespace whose labels include every
// pair of selector, sorted by name. As for a Service, an empty selector
// matches nothing.
func (s *Snapshot) PodsMatching(namespace string, selector map[string]string) []*Object {
	if len(selector) == 0 {
		return nil
	}
	keys := slices.Sorted(mapKeys(selector))
	first := keys[0]
	candidates := s.list(indexPodLabels, labelIndexValue(namespace, first, selector[first]))
	return slices.DeleteFunc(candidates, func(o *Object) bool {
		for _, k := range keys[1:] {
			if v, ok := o.Labels[k]; !ok || v != selector[k] {
				return true
			}
		}
		return false
	})
}

// EndpointSlicesFor returns the EndpointSlices of a Service (those labelled
// kubernetes.io/service-name=service in its namespace), sorted by name.
func (s *Snapshot) EndpointSlicesFor(namespace, service string) []*Object {
	return s.list(indexService, namespace+"/"+service)
}

// BySource returns the objects owned by a source, sorted by kind, namespace
// and name.
func (s *Snapshot) BySource(source string) []*Object {
	return s.list(indexSource, source)
}

// list returns the objects under one value of an index. memdb orders the
// entries of one index value by primary key (kind, namespace, name).
func (s *Snapshot) list(index, value string) []*Object {
	it, err := s.db.Txn(false).Get(tableObjects, index, value)
	if err != nil {
		return nil
	}
	var out []*Object
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, raw.(*record).Obj)
	}
	return out
}
