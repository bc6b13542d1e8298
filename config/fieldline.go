package config

import (
	"strconv"
	"strings"

	yaml3 "go.yaml.in/yaml/v3"
)

// fieldLines finds the line of a field (a path like "spec.http[0].rout")
// in a YAML document, for diagnostics. It parses the document only when
// first asked, since it is only needed on the error path.
type fieldLines struct {
	doc    document
	parsed bool
	root   *yaml3.Node
}

// line returns the 1-based file line of field, or 0 if it cannot be found.
func (f *fieldLines) line(field string) int {
	if !f.parsed {
		f.parsed = true
		var n yaml3.Node
		if yaml3.Unmarshal(f.doc.data, &n) == nil && n.Kind == yaml3.DocumentNode && len(n.Content) == 1 {
			f.root = n.Content[0]
		}
	}
	if f.root == nil || field == "" {
		return 0
	}
	if n := findField(f.root, field); n != nil {
		return n.Line + f.doc.start - 1
	}
	return 0
}

// findField follows a dotted path with [i] indexes through YAML nodes and
// returns the node of the deepest part it could match (the key node for a
// mapping key). Keys may hold dots (label keys): the longest key that fits
// the rest of the path wins.
func findField(n *yaml3.Node, path string) *yaml3.Node {
	var last *yaml3.Node
	for path != "" && n != nil {
		for n.Kind == yaml3.AliasNode && n.Alias != nil {
			n = n.Alias
		}
		if strings.HasPrefix(path, "[") {
			end := strings.IndexByte(path, ']')
			i, err := strconv.Atoi(path[1:max(end, 1)])
			if end < 0 || err != nil || n.Kind != yaml3.SequenceNode || i < 0 || i >= len(n.Content) {
				return last
			}
			n, last = n.Content[i], n.Content[i]
			path = strings.TrimPrefix(path[end+1:], ".")
			continue
		}
		if n.Kind != yaml3.MappingNode {
			return last
		}
		best := -1
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i].Value
			fits := path == k || strings.HasPrefix(path, k+".") || strings.HasPrefix(path, k+"[")
			if fits && (best < 0 || len(k) > len(n.Content[best].Value)) {
				best = i
			}
		}
		if best < 0 {
			return last
		}
		last = n.Content[best]
		path = strings.TrimPrefix(path[len(last.Value):], ".")
		n = n.Content[best+1]
	}
	return last
}
