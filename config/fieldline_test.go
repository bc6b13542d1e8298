package config

import "testing"

func TestFieldLines(t *testing.T) {
	doc := splitDocuments([]byte("a: 1\n---\n# comment\nmetadata:\n  labels:\n    app.kubernetes.io/name: x\n    app: y\nspec:\n  http:\n  - name: a\n  - name: b\n    route: &r\n      x: 1\n  copy: *r\n"))[1]
	tests := map[string]int{
		"metadata":                               4,
		"metadata.labels.app.kubernetes.io/name": 6,
		"metadata.labels.app":                    7,
		"spec.http[1].name":                      11,
		"spec.http[1].route.x":                   13,
		"spec.copy.x":                            13, // through the alias
		"spec.http[1].missing":                   11, // the deepest part found: the list item
		"spec.http[7]":                           9,
		"nothing":                                0,
		"":                                       0,
	}
	lines := fieldLines{doc: doc}
	for field, want := range tests {
		if got := lines.line(field); got != want {
			t.Errorf("line(%q) = %d, want %d", field, got, want)
		}
	}
}
