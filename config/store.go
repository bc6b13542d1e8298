package config

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sync"

	memdb "github.com/hashicorp/go-memdb"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// ErrOwnedByOtherSource is returned (wrapped) by Store.Replace when an object
// it would write is already owned by another source.
var ErrOwnedByOtherSource = errors.New("object owned by another source")

const (
	tableObjects = "objects"
	tableMeta    = "meta"

	indexID        = "id"        // unique: kind, namespace, name
	indexKind      = "kind"      // kind
	indexKindNS    = "kindns"    // kind, namespace
	indexSource    = "source"    // source that owns the object
	indexNode      = "node"      // pods: spec.nodeName
	indexPodLabels = "podlabels" // pods: "namespace/key=value" per label
	indexService   = "service"   // endpointslices: "namespace/<kubernetes.io/service-name>"
)

// record is one row of the objects table. Records and the Objects they point
// to are never modified after insert: a change inserts a new record.
type record struct {
	ID        string // kind \x00 namespace \x00 name, so that index order is (kind, namespace, name)
	Kind      string
	KindNS    string
	Source    string
	Node      string
	PodLabels []string
	Service   string
	Hash      [sha256.Size]byte
	Obj       *Object
}

// metaRecord holds the store version in the same database, so a snapshot's
// version always matches its content.
type metaRecord struct {
	ID      string
	Version uint64
}

const metaVersionID = "version"

func objectID(k Key) string { return string(k.Kind) + "\x00" + k.Namespace + "\x00" + k.Name }

func newRecord(source string, o *Object, hash [sha256.Size]byte) *record {
	r := &record{
		ID: objectID(o.Key), Kind: string(o.Kind), KindNS: string(o.Kind) + "\x00" + o.Namespace,
		Source: source, Hash: hash, Obj: o,
	}
	switch spec := o.Spec.(type) {
	case *corev1.Pod:
		if spec != nil {
			r.Node = spec.Spec.NodeName
		}
		for _, k := range slices.Sorted(mapKeys(o.Labels)) {
			r.PodLabels = append(r.PodLabels, labelIndexValue(o.Namespace, k, o.Labels[k]))
		}
	case *discoveryv1.EndpointSlice:
		if svc := o.Labels[discoveryv1.LabelServiceName]; svc != "" {
			r.Service = o.Namespace + "/" + svc
		}
	}
	return r
}

func labelIndexValue(namespace, key, value string) string {
	return namespace + "/" + key + "=" + value
}

var schema = &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
	tableObjects: {Name: tableObjects, Indexes: map[string]*memdb.IndexSchema{
		indexID:        {Name: indexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ID"}},
		indexKind:      {Name: indexKind, Indexer: &memdb.StringFieldIndex{Field: "Kind"}},
		indexKindNS:    {Name: indexKindNS, Indexer: &memdb.StringFieldIndex{Field: "KindNS"}},
		indexSource:    {Name: indexSource, Indexer: &memdb.StringFieldIndex{Field: "Source"}},
		indexNode:      {Name: indexNode, AllowMissing: true, Indexer: &memdb.StringFieldIndex{Field: "Node"}},
		indexPodLabels: {Name: indexPodLabels, AllowMissing: true, Indexer: &memdb.StringSliceFieldIndex{Field: "PodLabels"}},
		indexService:   {Name: indexService, AllowMissing: true, Indexer: &memdb.StringFieldIndex{Field: "Service"}},
	}},
	tableMeta: {Name: tableMeta, Indexes: map[string]*memdb.IndexSchema{
		indexID: {Name: indexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ID"}},
	}},
}}

// Store holds the configuration objects of every source in a go-memdb
// database. Writes replace one source's whole set at a time; reads go through
// immutable Snapshots. A Store is safe for concurrent use.
//
// Objects passed to Replace belong to the store from then on: neither the
// caller nor readers may modify them.
type Store struct {
	db *memdb.MemDB

	mu       sync.Mutex // guards watchers
	watchers []chan struct{}
}

// NewStore returns an empty store at version 0.
func NewStore() *Store {
	db, err := memdb.NewMemDB(schema)
	if err != nil {
		panic(fmt.Sprintf("config: invalid store schema: %v", err)) // a programming error
	}
	txn := db.Txn(true)
	if err := txn.Insert(tableMeta, &metaRecord{ID: metaVersionID}); err != nil {
		panic(fmt.Sprintf("config: init store: %v", err))
	}
	txn.Commit()
	return &Store{db: db}
}

// Replace makes the set of objects owned by source exactly objs, in one
// write transaction: new keys are added, changed objects updated (an object
// whose content hash is unchanged is not rewritten), and the source's other
// objects deleted. Other sources' objects are untouched. If a key is owned by
// another source, or objs is invalid (nil object, empty kind or name,
// duplicate key), nothing is written and an error is returned. The version
// is incremented and watchers notified only when something changed.
func (s *Store) Replace(source string, objs []*Object) error {
	if source == "" {
		return errors.New("replace: empty source name")
	}
	recs, keep, err := s.prepare(source, objs)
	if err != nil {
		return err
	}
	txn := s.db.Txn(true)
	defer txn.Abort()
	changed := false
	for _, r := range recs {
		raw, err := txn.First(tableObjects, indexID, r.ID)
		if err != nil {
			return fmt.Errorf("replace %s: look up %s: %w", source, r.Obj.Key, err)
		}
		if old, ok := raw.(*record); ok {
			if old.Source != source {
				return fmt.Errorf("replace %s: %s (%s): %w %q (%s)", source, r.Obj.Key, r.Obj.Origin,
					ErrOwnedByOtherSource, old.Source, old.Obj.Origin)
			}
			if old.Hash == r.Hash {
				continue
			}
		}
		if err := txn.Insert(tableObjects, r); err != nil {
			return fmt.Errorf("replace %s: insert %s: %w", source, r.Obj.Key, err)
		}
		changed = true
	}
	it, err := txn.Get(tableObjects, indexSource, source)
	if err != nil {
		return fmt.Errorf("replace %s: list source: %w", source, err)
	}
	var stale []*record
	for raw := it.Next(); raw != nil; raw = it.Next() {
		if r := raw.(*record); !keep[r.ID] {
			stale = append(stale, r)
		}
	}
	for _, r := range stale {
		if err := txn.Delete(tableObjects, r); err != nil {
			return fmt.Errorf("replace %s: delete %s: %w", source, r.Obj.Key, err)
		}
		changed = true
	}
	if !changed {
		return nil
	}
	raw, err := txn.First(tableMeta, indexID, metaVersionID)
	if err != nil || raw == nil {
		return fmt.Errorf("replace %s: read version: %v", source, err)
	}
	next := &metaRecord{ID: metaVersionID, Version: raw.(*metaRecord).Version + 1}
	if err := txn.Insert(tableMeta, next); err != nil {
		return fmt.Errorf("replace %s: write version: %w", source, err)
	}
	txn.Commit()
	s.notify()
	return nil
}

// prepare validates objs and builds their records (hashing outside the
// write transaction).
func (s *Store) prepare(source string, objs []*Object) ([]*record, map[string]bool, error) {
	recs := make([]*record, 0, len(objs))
	keep := make(map[string]bool, len(objs))
	for i, o := range objs {
		switch {
		case o == nil:
			return nil, nil, fmt.Errorf("replace %s: object %d is nil", source, i)
		case o.Kind == "" || o.Name == "":
			return nil, nil, fmt.Errorf("replace %s: object %d (%s): kind and name are required", source, i, o.Key)
		}
		id := objectID(o.Key)
		if keep[id] {
			return nil, nil, fmt.Errorf("replace %s: duplicate object %s (%s)", source, o.Key, o.Origin)
		}
		keep[id] = true
		h, err := contentHash(o)
		if err != nil {
			return nil, nil, fmt.Errorf("replace %s: %w", source, err)
		}
		recs = append(recs, newRecord(source, o, h))
	}
	return recs, keep, nil
}

// Watch returns a channel that receives a value after every commit that
// changed the store. It is buffered (1) and coalescing: a slow reader gets
// one value for several commits, then reads the latest Snapshot. Each call
// registers a new channel; call Unwatch when done with it.
func (s *Store) Watch() <-chan struct{} {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	s.watchers = append(s.watchers, ch)
	s.mu.Unlock()
	return ch
}

// Unwatch stops notifications on a channel returned by Watch.
func (s *Store) Unwatch(ch <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.watchers = slices.DeleteFunc(s.watchers, func(c chan struct{}) bool { return c == ch })
}

func (s *Store) notify() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ch := range s.watchers {
		select {
		case ch <- struct{}{}:
		default: // a notification is already pending
		}
	}
}

// Snapshot returns an immutable view of the store as of now. It is cheap
// (no copy) and safe for concurrent use.
func (s *Store) Snapshot() *Snapshot {
	db := s.db.Snapshot()
	raw, err := db.Txn(false).First(tableMeta, indexID, metaVersionID)
	var v uint64
	if err == nil && raw != nil {
		v = raw.(*metaRecord).Version
	}
	return &Snapshot{db: db, version: v}
}
