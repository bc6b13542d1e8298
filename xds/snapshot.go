package xds

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"sort"
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/nodemesh/nodemesh/translate"
)

// TypeURLs are the resource types nodemesh serves, in push order.
var TypeURLs = []string{
	resourcev3.ClusterType,
	resourcev3.EndpointType,
	resourcev3.ListenerType,
	resourcev3.RouteType,
}

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
		return typeURL
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

// nodeResources lists a NodeConfig's resources by type URL.
func nodeResources(nc *translate.NodeConfig) map[string][]types.Resource {
	out := make(map[string][]types.Resource, len(TypeURLs))
	add := func(typeURL string, n int, at func(int) types.Resource) {
		rs := make([]types.Resource, 0, n)
		for i := range n {
			rs = append(rs, at(i))
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
// encoding) into a short version string, and returns each resource's own
// version (for Delta). Each resource is marshalled once. Equal content
// gives equal versions whatever the order of the input.
func contentVersion(rs []types.Resource, memo *hashMemo) (string, map[string]string, error) {
	type named struct {
		name string
		res  types.Resource
	}
	sorted := make([]named, 0, len(rs))
	for _, r := range rs {
		sorted = append(sorted, named{cachev3.GetResourceName(r), r})
	}
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].name < sorted[j].name })
	perResource := make(map[string]string, len(sorted))
	h := sha256.New()
	var lenBuf [8]byte
	opts := proto.MarshalOptions{Deterministic: true}
	var buf []byte
	for _, n := range sorted {
		sum, ok := memo.get(n.res)
		if !ok {
			var err error
			buf, err = opts.MarshalAppend(buf[:0], n.res)
			if err != nil {
				return "", nil, fmt.Errorf("marshal %q: %w", n.name, err)
			}
			sum = sha256.Sum256(buf)
			memo.put(n.res, sum)
		}
		perResource[n.name] = hex.EncodeToString(sum[:8])
		binary.BigEndian.PutUint64(lenBuf[:], uint64(len(n.name)))
		h.Write(lenBuf[:])
		h.Write([]byte(n.name))
		h.Write(sum[:])
	}
	return hex.EncodeToString(h.Sum(nil)[:8]), perResource, nil
}

// buildSnapshot turns a NodeConfig into a go-control-plane snapshot whose
// per-type versions are content hashes.
func buildSnapshot(nc *translate.NodeConfig, memo *hashMemo) (*cachev3.Snapshot, Versions, error) {
	// The per-resource version map is built here, before the snapshot is
	// shared between nodes and streams (go-control-plane would build it
	// lazily, without a lock, marshalling everything a second time).
	snap := &cachev3.Snapshot{VersionMap: make(map[string]map[string]string, len(TypeURLs))}
	versions := make(Versions, len(TypeURLs))
	for typeURL, rs := range nodeResources(nc) {
		v, perResource, err := contentVersion(rs, memo)
		if err != nil {
			return nil, nil, fmt.Errorf("hash %s: %w", typeShort(typeURL), err)
		}
		idx := cachev3.GetResponseType(typeURL)
		if idx == types.UnknownType {
			return nil, nil, fmt.Errorf("unknown type url %q", typeURL)
		}
		snap.Resources[idx] = cachev3.NewResources(v, rs)
		snap.VersionMap[typeURL] = perResource
		versions[typeURL] = v
	}
	return snap, versions, nil
}

// hashMemo remembers resource hashes by message identity for one
// configuration generation: NodeConfigs translated from one prepared
// snapshot share their messages, so each is marshalled and hashed once,
// not once per node. Messages are read-only, so a pointer always has the
// content it was hashed with. A nil memo remembers nothing.
type hashMemo struct {
	generation uint64
	sums       sync.Map // types.Resource -> [sha256.Size]byte
}

func (m *hashMemo) get(r types.Resource) ([sha256.Size]byte, bool) {
	if m == nil {
		return [sha256.Size]byte{}, false
	}
	v, ok := m.sums.Load(r)
	if !ok {
		return [sha256.Size]byte{}, false
	}
	return v.([sha256.Size]byte), true
}

func (m *hashMemo) put(r types.Resource, sum [sha256.Size]byte) {
	if m != nil {
		m.sums.Store(r, sum)
	}
}
