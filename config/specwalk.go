package config

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// prepareSpec walks an Istio spec (JSON) along its protobuf descriptor
// before protojson decodes it, to do two things protojson does not:
//
//   - report every unknown field with its path (protojson stops at the
//     first), sorted by path;
//   - rewrite google.protobuf.Duration values written as Go durations ("1m",
//     "1h30m", "500ms"), which Istio accepts (its jsonpb decoder uses
//     time.ParseDuration), into the seconds form protojson requires ("60s").
//
// Anything else it does not understand is left for protojson to report. It
// returns spec itself when there was nothing to rewrite.
func prepareSpec(spec []byte, md protoreflect.MessageDescriptor) (out []byte, unknown []string) {
	dec := json.NewDecoder(bytes.NewReader(spec))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return spec, nil
	}
	w := &specWalker{}
	w.message(v, md, "")
	slices.Sort(w.unknown)
	if !w.changed {
		return spec, w.unknown
	}
	out, err := json.Marshal(v)
	if err != nil {
		return spec, w.unknown
	}
	return out, w.unknown
}

type specWalker struct {
	changed bool
	unknown []string
}

const durationName = "google.protobuf.Duration"

// message walks the JSON value v of a message md found at path.
func (w *specWalker) message(v any, md protoreflect.MessageDescriptor, path string) {
	obj, ok := v.(map[string]any)
	if !ok || strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
		return // a wrong type is protojson's to report; well-known types have their own JSON
	}
	for k, val := range obj {
		fd := md.Fields().ByJSONName(k)
		if fd == nil {
			fd = md.Fields().ByTextName(k)
		}
		if fd == nil {
			w.unknown = append(w.unknown, joinField(path, k))
			continue
		}
		fieldPath := joinField(path, k)
		elem := fd.Message()
		if fd.IsMap() {
			elem = fd.MapValue().Message()
		}
		if elem == nil || val == nil {
			continue
		}
		switch {
		case fd.IsMap():
			if m, ok := val.(map[string]any); ok {
				for mk, mv := range m {
					w.value(mv, elem, joinField(fieldPath, mk), func(n any) { m[mk] = n })
				}
			}
		case fd.IsList():
			if l, ok := val.([]any); ok {
				for i := range l {
					w.value(l[i], elem, fieldPath+"["+strconv.Itoa(i)+"]", func(n any) { l[i] = n })
				}
			}
		default:
			w.value(val, elem, fieldPath, func(n any) { obj[k] = n })
		}
	}
}

// value walks one value of message type md, replacing it through set when
// it is a Duration to rewrite.
func (w *specWalker) value(v any, md protoreflect.MessageDescriptor, path string, set func(any)) {
	if md.FullName() != durationName {
		w.message(v, md, path)
		return
	}
	if s, ok := v.(string); ok {
		if d, ok := durationString(s); ok && d != s {
			set(d)
			w.changed = true
		}
	}
}

// durationString converts a Go duration string into protojson's form.
func durationString(s string) (string, bool) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return "", false
	}
	sign := ""
	if d < 0 {
		sign, d = "-", -d
	}
	out := sign + strconv.FormatInt(int64(d/time.Second), 10)
	if ns := int64(d % time.Second); ns != 0 {
		out += strings.TrimRight("."+strconv.FormatInt(ns+1e9, 10)[1:], "0")
	}
	return out + "s", true
}
