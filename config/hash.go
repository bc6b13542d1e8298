package config

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash"
	"slices"

	"google.golang.org/protobuf/proto"
)

// contentHash returns a hash of everything in o, used by the store to skip
// writes of unchanged objects. Protobuf specs are marshaled
// deterministically, Kubernetes types with their generated protobuf
// marshalers (which sort map keys), anything else as JSON.
func contentHash(o *Object) ([sha256.Size]byte, error) {
	h := sha256.New()
	writeStrings(h, string(o.Kind), o.Namespace, o.Name, o.APIVersion,
		o.Origin.File, fmt.Sprint(o.Origin.Doc), fmt.Sprint(o.Origin.Line))
	writeMap(h, o.Labels)
	writeMap(h, o.Annotations)
	var spec []byte
	var err error
	switch s := o.Spec.(type) {
	case nil:
	case proto.Message:
		spec, err = proto.MarshalOptions{Deterministic: true}.Marshal(s)
	case interface{ Marshal() ([]byte, error) }:
		// Kubernetes API types: generated protobuf, map keys sorted.
		spec, err = s.Marshal()
	default:
		spec, err = json.Marshal(s)
	}
	if err != nil {
		return [sha256.Size]byte{}, fmt.Errorf("hash %s: marshal spec: %w", o.Key, err)
	}
	writeStrings(h, fmt.Sprintf("%T", o.Spec), string(spec))
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum, nil
}

// writeStrings writes length-prefixed strings, so that ("ab","c") and
// ("a","bc") hash differently.
func writeStrings(h hash.Hash, ss ...string) {
	var n [8]byte
	for _, s := range ss {
		binary.LittleEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
}

func writeMap(h hash.Hash, m map[string]string) {
	keys := slices.Sorted(mapKeys(m))
	writeStrings(h, fmt.Sprint(len(keys)))
	for _, k := range keys {
		writeStrings(h, k, m[k])
	}
}
