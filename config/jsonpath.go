package config

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
)

// pathAtOffset returns the dotted path (e.g. "http[0].route") of the JSON
// value or object key that ends after byte offset off in data, so that a
// decoder error reported at an offset can name the field. It returns "" for
// the root or when data cannot be tokenized that far.
func pathAtOffset(data []byte, off int64) string {
	type frame struct {
		obj     bool
		wantKey bool
		key     string
		idx     int
	}
	var stack []frame
	path := func() string {
		var b strings.Builder
		for _, f := range stack {
			if f.obj {
				if f.wantKey {
					continue
				}
				if b.Len() > 0 {
					b.WriteByte('.')
				}
				b.WriteString(f.key)
			} else {
				b.WriteString("[" + strconv.Itoa(f.idx) + "]")
			}
		}
		return b.String()
	}
	valueDone := func() {
		if n := len(stack); n > 0 {
			if stack[n-1].obj {
				stack[n-1].wantKey = true
			} else {
				stack[n-1].idx++
			}
		}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if err != nil {
			return path()
		}
		end := dec.InputOffset()
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{', '[':
				if end > off {
					return path()
				}
				stack = append(stack, frame{obj: d == '{', wantKey: d == '{'})
			default:
				stack = stack[:len(stack)-1]
				if end > off {
					return path()
				}
				valueDone()
			}
			continue
		}
		if n := len(stack); n > 0 && stack[n-1].obj && stack[n-1].wantKey {
			stack[n-1].key, _ = tok.(string)
			stack[n-1].wantKey = false
			if end > off {
				return path()
			}
			continue
		}
		if end > off {
			return path()
		}
		valueDone()
	}
}

// joinField joins a field prefix and a sub-path: ("spec", "http[0].x") ->
// "spec.http[0].x", ("items[1]", "[0]") -> "items[1][0]".
func joinField(prefix, sub string) string {
	switch {
	case prefix == "":
		return sub
	case sub == "":
		return prefix
	case sub[0] == '[':
		return prefix + sub
	default:
		return prefix + "." + sub
	}
}
