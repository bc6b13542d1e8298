package config

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"reflect"
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

	// indexID is unique on (kind, namespace, name). Its prefix queries
	// serve as the kind and kind+namespace indexes: IDs are
	// "kind\x00namespace\x00name\x00", so the prefix "kind\x00" selects a
	// kind and "kind\x00namespace\x00" a namespace, in (namespace, name)
	// order, without two more trees to update on every write.
	indexID        = "id"
	indexSource    = "source"    // source that owns the object
	indexNode      = "node"      // pods: spec.nodeName
	indexPodLabels = "podlabels" // pods: "namespace/key=value" per label
	indexService   = "service"   // endpointslices: "namespace/<kubernetes.io/service-name>"
)

// record is one row of the objects table. Records and the Objects they point
// to are never modified after insert: a change inserts a new record.
type record struct {
	ID        string // kind \x00 namespace \x00 name, so that index order is (kind, namespace, name)
	Source    string
	Node      string
	PodLabels []string
	Service   string
	hash      func() ([sha256.Size]byte, error) // content hash, computed once when first needed
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

func newRecord(source string, o *Object) *record {
	r := &record{
		ID: objectID(o.Key), Source: source, Obj: o,
		hash: sync.OnceValues(func() ([sha256.Size]byte, error) { return contentHash(o) }),
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
		indexSource:    {Name: indexSource, Indexer: &memdb.StringFieldIndex{Field: "Source"}},
		indexNode:      {Name: indexNode, AllowMissing: true, Indexer: &memdb.StringFieldIndex{Field: "Node"}},
		indexPodLabels: {Name: indexPodLabels, AllowMissing: true, Indexer: &memdb.StringSliceFieldIndex{Field: "PodLabels"}},
		indexService:   {Name: indexService, AllowMissing: true, Indexer: &memdb.StringFieldIndex{Field: "Service"}},
	}},
	tableMeta: {Name: tableMeta, Indexes: map[string]*memdb.IndexSchema{
		indexID: {Name: indexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ID"}},
	}},
}}

// Store holds the configuration objects of every source (a file directory,
// a Kubernetes API server, ...) in a go-memdb database. Each object is owned
// by one source; writes change one source's objects in one transaction
// (Replace: the whole set; Apply: some objects); reads go through immutable
// Snapshots. A Store is safe for concurrent use.
//
// Objects passed to Replace or Apply belong to the store from then on:
// neither the caller nor readers may modify them.
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
// another source, or objs is invalid (see Apply), nothing is written and an
// error is returned. The version is incremented and watchers notified only
// when something changed.
func (s *Store) Replace(source string, objs []*Object) error {
	return s.write(source, objs, nil, true)
}

// Apply adds or updates upserts and deletes the objects with the keys in
// deletes, all owned by source, in one write transaction; the source's other
// objects are untouched. Deleting a key that does not exist is not an error;
// writing or deleting a key owned by another source is, and then nothing is
// written. Objects must have a kind, a name, a namespace exactly when the
// kind is namespaced, and a Spec of the kind's Go type (see the Kind
// constants).
func (s *Store) Apply(source string, upserts []*Object, deletes []Key) error {
	return s.write(source, upserts, deletes, false)
}

func (s *Store) write(source string, objs []*Object, deletes []Key, replace bool) error {
	if source == "" {
		return errors.New("write to store: empty source name")
	}
	keep, err := prepare(source, objs)
	if err != nil {
		return err
	}
	txn := s.db.Txn(true)
	defer txn.Abort()
	changed := false
	for _, o := range objs {
		c, err := upsert(txn, source, o)
		if err != nil {
			return err
		}
		changed = changed || c
	}
	var stale []*record
	if replace {
		if stale, err = staleRecords(txn, source, keep); err != nil {
			return err
		}
	}
	deleted := make(map[Key]bool, len(deletes))
	for _, k := range deletes {
		if deleted[k] {
			continue
		}
		deleted[k] = true
		raw, err := txn.First(tableObjects, indexID, objectID(k))
		if err != nil {
			return fmt.Errorf("write %s: look up %s: %w", source, k, err)
		}
		if old, ok := raw.(*record); ok {
			if old.Source != source {
				return fmt.Errorf("write %s: delete %s: %w %q", source, k, ErrOwnedByOtherSource, old.Source)
			}
			if keep[old.ID] {
				return fmt.Errorf("write %s: %s both written and deleted", source, k)
			}
			stale = append(stale, old)
		}
	}
	for _, r := range stale {
		if err := txn.Delete(tableObjects, r); err != nil {
			return fmt.Errorf("write %s: delete %s: %w", source, r.Obj.Key, err)
		}
		changed = true
	}
	if !changed {
		return nil
	}
	if err := bumpVersion(txn); err != nil {
		return fmt.Errorf("write %s: %w", source, err)
	}
	txn.Commit()
	s.notify()
	return nil
}

// upsert inserts r unless the same content is stored; content hashes are
// only computed when a different pointer is stored under the key.
func upsert(txn *memdb.Txn, source string, o *Object) (bool, error) {
	raw, err := txn.First(tableObjects, indexID, objectID(o.Key))
	if err != nil {
		return false, fmt.Errorf("write %s: look up %s: %w", source, o.Key, err)
	}
	old, _ := raw.(*record)
	if old != nil && old.Source != source {
		return false, fmt.Errorf("write %s: %s%s: %w %q%s", source, o.Key, at(o.Origin),
			ErrOwnedByOtherSource, old.Source, at(old.Obj.Origin))
	}
	if old != nil && old.Obj == o {
		return false, nil
	}
	r := newRecord(source, o)
	if old != nil {
		// Hashes are only needed to compare with a stored object, so a new
		// key costs no hashing.
		newHash, err := r.hash()
		if err != nil {
			return false, fmt.Errorf("write %s: %w", source, err)
		}
		if oldHash, err := old.hash(); err == nil && oldHash == newHash {
			return false, nil
		}
	}
	if err := txn.Insert(tableObjects, r); err != nil {
		return false, fmt.Errorf("write %s: insert %s: %w", source, r.Obj.Key, err)
	}
	return true, nil
}

// staleRecords returns the records of source whose IDs are not in keep.
func staleRecords(txn *memdb.Txn, source string, keep map[string]bool) ([]*record, error) {
	it, err := txn.Get(tableObjects, indexSource, source)
	if err != nil {
		return nil, fmt.Errorf("write %s: list source: %w", source, err)
	}
	var stale []*record
	for raw := it.Next(); raw != nil; raw = it.Next() {
		if r := raw.(*record); !keep[r.ID] {
			stale = append(stale, r)
		}
	}
	return stale, nil
}

func bumpVersion(txn *memdb.Txn) error {
	raw, err := txn.First(tableMeta, indexID, metaVersionID)
	if err != nil || raw == nil {
		return fmt.Errorf("read version: %v", err)
	}
	next := &metaRecord{ID: metaVersionID, Version: raw.(*metaRecord).Version + 1}
	if err := txn.Insert(tableMeta, next); err != nil {
		return fmt.Errorf("write version: %w", err)
	}
	return nil
}

// prepare validates objs and returns the set of their IDs.
func prepare(source string, objs []*Object) (map[string]bool, error) {
	keep := make(map[string]bool, len(objs))
	for i, o := range objs {
		if err := validObject(o); err != nil {
			return nil, fmt.Errorf("write %s: object %d: %w", source, i, err)
		}
		id := objectID(o.Key)
		if keep[id] {
			return nil, fmt.Errorf("write %s: duplicate object %s%s", source, o.Key, at(o.Origin))
		}
		keep[id] = true
	}
	return keep, nil
}

// at formats an origin for an error message: " (file:line)", or nothing.
func at(o Origin) string {
	if s := o.String(); s != "" {
		return " (" + s + ")"
	}
	return ""
}

// validObject checks what the store and its readers rely on.
func validObject(o *Object) error {
	switch {
	case o == nil:
		return errors.New("nil object")
	case o.Kind == "" || o.Name == "":
		return fmt.Errorf("%s: kind and name are required", o.Key)
	case o.Kind.Namespaced() != (o.Namespace != ""):
		return fmt.Errorf("%s: namespace must be set exactly for namespaced kinds", o.Key)
	}
	if want, ok := specTypes[o.Kind]; ok && reflect.TypeOf(o.Spec) != want {
		return fmt.Errorf("%s: spec is %T, want %v", o.Key, o.Spec, want)
	}
	if v := reflect.ValueOf(o.Spec); v.Kind() == reflect.Pointer && v.IsNil() {
		return fmt.Errorf("%s: nil spec", o.Key)
	}
	return nil
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
