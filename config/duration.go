package config

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// normalizeDurations rewrites google.protobuf.Duration values written as Go
// durations ("1m", "1h30m", "500ms"), which Istio accepts (its jsonpb
// decoder uses time.ParseDuration), into the seconds form protojson requires
// ("60s"). Anything it does not understand is left for protojson to report.
// It returns spec unchanged when there was nothing to rewrite.
func normalizeDurations(spec []byte, md protoreflect.MessageDescriptor) []byte {
	dec := json.NewDecoder(bytes.NewReader(spec))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return spec
	}
	if !walkDurations(v, md) {
		return spec
	}
	out, err := json.Marshal(v)
	if err != nil {
		return spec
	}
	return out
}

const durationName = "google.protobuf.Duration"

// walkDurations rewrites Duration strings in the JSON value v of message md
// in place and reports whether it changed anything.
func walkDurations(v any, md protoreflect.MessageDescriptor) bool {
	obj, ok := v.(map[string]any)
	if !ok || strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
		return false
	}
	changed := false
	for k, val := range obj {
		fd := md.Fields().ByJSONName(k)
		if fd == nil {
			fd = md.Fields().ByTextName(k)
		}
		if fd == nil {
			continue // protojson reports it
		}
		var elem protoreflect.MessageDescriptor
		switch {
		case fd.IsMap():
			elem = fd.MapValue().Message()
		default:
			elem = fd.Message()
		}
		if elem == nil {
			continue
		}
		each := func(x any, set func(any)) {
			if elem.FullName() == durationName {
				if s, ok := x.(string); ok {
					if d, ok := durationString(s); ok && d != s {
						set(d)
						changed = true
					}
				}
				return
			}
			if walkDurations(x, elem) {
				changed = true
			}
		}
		switch {
		case fd.IsMap():
			if m, ok := val.(map[string]any); ok {
				for mk, mv := range m {
					each(mv, func(n any) { m[mk] = n })
				}
			}
		case fd.IsList():
			if l, ok := val.([]any); ok {
				for i := range l {
					each(l[i], func(n any) { l[i] = n })
				}
			}
		default:
			each(val, func(n any) { obj[k] = n })
		}
	}
	return changed
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
