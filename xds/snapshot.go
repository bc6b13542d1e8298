package xds

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/translate"
)

// EnvoyTypeURLs are the Envoy resource types nodemesh serves.
var EnvoyTypeURLs = []string{
	resourcev3.ClusterType,
	resourcev3.EndpointType,
	resourcev3.ListenerType,
	resourcev3.RouteType,
}

// TypeURLs are all the types nodemesh serves: Envoy's, then the node
// agent's dataplane types (api/dataplane/v1).
var TypeURLs = append(append([]string(nil), EnvoyTypeURLs...), dataplanev1.Types...)

// typeShort names a type URL in status tables and metrics labels.
func typeShort(typeURL string) string {
	switch typeURL {
	case resourcev3.ClusterType:
		return "CDS"
	case resourcev3.EndpointType:
		return "EDS"
	case resourcev3.ListenerType:
		return "LDS"
	case resourcev3.RouteType:
		return "RDS"
	case resourcev3.SecretType:
		return "SDS"
	default:
		// nodemesh.dataplane.v1.Workload -> Workload
		return typeURL[strings.LastIndex(typeURL, ".")+1:]
	}
}

// Versions holds the content version of each type URL of a snapshot.
type Versions map[string]string

// Equal reports whether v and o hold the same versions.
func (v Versions) Equal(o Versions) bool {
	if len(v) != len(o) {
		return false
	}
	for k, x := range v {
		if o[k] != x {
			return false
		}
	}
	return true
}

// namedResource is a resource and the name it is served under.
type namedResource struct {
	name string
	res  types.Resource
}

// TypedResources are resources of one type URL, served along a node's
// Envoy configuration (the node agent's dataplane types).
type TypedResources struct {
	TypeURL string
	Names   []string         // Names[i] is the name of Items[i]
	Items   []types.Resource // proto messages
}

// envoyResources lists a NodeConfig's resources by type URL.
func envoyResources(nc *translate.NodeConfig) map[string][]namedResource {
	out := make(map[string][]namedResource, len(EnvoyTypeURLs))
	add := func(typeURL string, n int, at func(int) types.Resource) {
		rs := make([]namedResource, 0, n)
		for i := range n {
			r := at(i)
			rs = append(rs, namedResource{cachev3.GetResourceName(r), r})
		}
		out[typeURL] = rs
	}
	add(resourcev3.ListenerType, len(nc.Listeners), func(i int) types.Resource { return nc.Listeners[i] })
	add(resourcev3.RouteType, len(nc.Routes), func(i int) types.Resource { return nc.Routes[i] })
	add(resourcev3.ClusterType, len(nc.Clusters), func(i int) types.Resource { return nc.Clusters[i] })
	add(resourcev3.EndpointType, len(nc.Endpoints), func(i int) types.Resource { return nc.Endpoints[i] })
	return out
}

// contentVersion hashes resources (sorted by name, deterministic proto
// encoding) into a short version string; it returns the resources sorted
// by name and, for each, its hash and the message to serve for it (see
// premarshaled). Each resource is marshalled once per generation. Equal
// content gives equal versions whatever the order of the input.
func contentVersion(rs []namedResource, memo *hashMemo) (string, []namedResource, []memoEntry, error) {
	byName := func(a, b namedResource) int { return strings.Compare(a.name, b.name) }
	if !slices.IsSortedFunc(rs, byName) { // translate sorts; extra resources may not be
		rs = slices.SortedStableFunc(slices.Values(rs), byName)
	}
	entries := make([]memoEntry, len(rs))
	h := sha256.New()
	var lenBuf [8]byte
	opts := proto.MarshalOptions{Deterministic: true}
	for i, n := range rs {
		e, ok := memo.get(n.res)
		if !ok {
			b, err := opts.Marshal(n.res)
			if err != nil {
				return "", nil, nil, fmt.Errorf("marshal %q: %w", n.name, err)
			}
			e = memoEntry{sum: sha256.Sum256(b), serve: premarshaled(n.res, b)}
			memo.put(n.res, e)
		}
		entries[i] = e
		binary.BigEndian.PutUint64(lenBuf[:], uint64(len(n.name)))
		h.Write(lenBuf[:])
		h.Write([]byte(n.name))
		h.Write(e.sum[:])
	}
	return hex.EncodeToString(h.Sum(nil)[:8]), rs, entries, nil
}

// typeMaps are what a snapshot serves for one type URL. Nodes whose
// resources of a type hash alike (most nodes, for CDS, EDS and RDS) share
// one typeMaps.
type typeMaps struct {
	withTTL    map[string]types.ResourceWithTTL
	plain      map[string]types.Resource
	versionMap map[string]string // per-resource versions, for Delta
}

func newTypeMaps(typeURL string, rs []namedResource, entries []memoEntry) (*typeMaps, error) {
	tm := &typeMaps{
		withTTL:    make(map[string]types.ResourceWithTTL, len(rs)),
		plain:      make(map[string]types.Resource, len(rs)),
		versionMap: make(map[string]string, len(rs)),
	}
	for i, r := range rs {
		if _, dup := tm.plain[r.name]; dup {
			return nil, fmt.Errorf("%s: duplicate name %q", typeShort(typeURL), r.name)
		}
		tm.withTTL[r.name] = types.ResourceWithTTL{Resource: entries[i].serve}
		tm.plain[r.name] = entries[i].serve
		tm.versionMap[r.name] = hex.EncodeToString(entries[i].sum[:8])
	}
	return tm, nil
}

// premarshaled returns a message of res's type holding b, res's
// deterministic encoding, as unknown fields: go-control-plane marshals it
// by copying b. The ADS server marshals every resource for every response
// it sends; served this way, a resource shared by many nodes is encoded
// once, not once per node. Only go-control-plane reads these messages (it
// takes resource names from the snapshot's maps, not from the messages).
func premarshaled(res types.Resource, b []byte) types.Resource {
	m := res.ProtoReflect().Type().New()
	m.SetUnknown(b)
	return m.Interface()
}

// resourceSnapshot is a go-control-plane ResourceSnapshot for any type
// URL (cachev3.Snapshot knows Envoy's types only), with content versions
// per type and per resource computed up front: it is immutable and shared
// by every node and stream it is served to.
type resourceSnapshot struct {
	versions   Versions
	withTTL    map[string]map[string]types.ResourceWithTTL
	plain      map[string]map[string]types.Resource
	versionMap map[string]map[string]string
}

var _ cachev3.ResourceSnapshot = (*resourceSnapshot)(nil)

func (s *resourceSnapshot) GetVersion(typeURL string) string { return s.versions[typeURL] }
func (s *resourceSnapshot) GetResourcesAndTTL(typeURL string) map[string]types.ResourceWithTTL {
	return s.withTTL[typeURL]
}
func (s *resourceSnapshot) GetResources(typeURL string) map[string]types.Resource {
	return s.plain[typeURL]
}
func (s *resourceSnapshot) ConstructVersionMap() error { return nil } // built by buildSnapshot
func (s *resourceSnapshot) GetVersionMap(typeURL string) map[string]string {
	return s.versionMap[typeURL]
}

// buildSnapshot turns a NodeConfig (and any extra typed resources) into a
// snapshot whose versions are content hashes.
func buildSnapshot(nc *translate.NodeConfig, extra []TypedResources, memo *hashMemo) (*resourceSnapshot, error) {
	byType := envoyResources(nc)
	for _, e := range extra {
		if len(e.Names) != len(e.Items) {
			return nil, fmt.Errorf("%s: %d names for %d resources", typeShort(e.TypeURL), len(e.Names), len(e.Items))
		}
		rs := make([]namedResource, len(e.Items))
		for i := range e.Items {
			rs[i] = namedResource{e.Names[i], e.Items[i]}
		}
		byType[e.TypeURL] = append(byType[e.TypeURL], rs...)
	}
	snap := &resourceSnapshot{
		versions:   make(Versions, len(byType)),
		withTTL:    make(map[string]map[string]types.ResourceWithTTL, len(byType)),
		plain:      make(map[string]map[string]types.Resource, len(byType)),
		versionMap: make(map[string]map[string]string, len(byType)),
	}
	for typeURL, rs := range byType {
		v, sorted, entries, err := contentVersion(rs, memo)
		if err != nil {
			return nil, fmt.Errorf("hash %s: %w", typeShort(typeURL), err)
		}
		tm, err := memo.typeMaps(typeURL, v, func() (*typeMaps, error) { return newTypeMaps(typeURL, sorted, entries) })
		if err != nil {
			return nil, err
		}
		snap.versions[typeURL] = v
		snap.withTTL[typeURL], snap.plain[typeURL], snap.versionMap[typeURL] = tm.withTTL, tm.plain, tm.versionMap
	}
	return snap, nil
}

// hashMemo remembers resource hashes by message identity for one
// configuration generation: NodeConfigs translated from one prepared
// snapshot share their messages, so each is marshalled and hashed once,
// not once per node. Messages are read-only, so a pointer always has the
// content it was hashed with. A nil memo remembers nothing.
//
// prev is the memo of the previous generation: translate.PrepareNext
// reuses the messages that an endpoint change left alone, so their hashes
// are found there and carried over.
type hashMemo struct {
	generation uint64
	sums       sync.Map // types.Resource -> memoEntry
	maps       sync.Map // type URL and version -> *typeMaps
	prev       atomic.Pointer[hashMemo]
}

// typeMaps returns the maps of a type URL's resources at version, built
// once per generation (or taken from the previous one).
func (m *hashMemo) typeMaps(typeURL, version string, build func() (*typeMaps, error)) (*typeMaps, error) {
	if m == nil {
		return build()
	}
	key := typeURL + "\x00" + version
	if v, ok := m.maps.Load(key); ok {
		return v.(*typeMaps), nil
	}
	if p := m.prev.Load(); p != nil {
		if v, ok := p.maps.Load(key); ok {
			m.maps.Store(key, v)
			return v.(*typeMaps), nil
		}
	}
	tm, err := build()
	if err != nil {
		return nil, err
	}
	v, _ := m.maps.LoadOrStore(key, tm)
	return v.(*typeMaps), nil
}

// memoEntry is a resource's hash and the message served for it.
type memoEntry struct {
	sum   [sha256.Size]byte
	serve types.Resource // premarshaled
}

func (m *hashMemo) get(r types.Resource) (memoEntry, bool) {
	if m == nil {
		return memoEntry{}, false
	}
	if v, ok := m.sums.Load(r); ok {
		return v.(memoEntry), true
	}
	if p := m.prev.Load(); p != nil {
		if v, ok := p.sums.Load(r); ok {
			m.sums.Store(r, v)
			return v.(memoEntry), true
		}
	}
	return memoEntry{}, false
}

func (m *hashMemo) put(r types.Resource, e memoEntry) {
	if m != nil {
		m.sums.Store(r, e)
	}
}
