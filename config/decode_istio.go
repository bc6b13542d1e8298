package config

import (
	"encoding/json"
	"regexp"
	"slices"
	"strconv"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// istioTopLevel are the fields an Istio resource may have.
var istioTopLevel = []string{"apiVersion", "kind", "metadata", "spec", "status"}

// decodeIstio decodes an Istio resource: metadata strictly as Kubernetes
// ObjectMeta, spec with protojson (unknown fields are errors) into the
// istio.io/api message. status is ignored. Diagnostics carry Object and Field
// but no Origin.
func decodeIstio(info kindInfo, top map[string]json.RawMessage) (*Object, []Diagnostic) {
	var diags []Diagnostic
	for _, f := range slices.Sorted(mapKeys(top)) {
		if !slices.Contains(istioTopLevel, f) {
			diags = append(diags, Diagnostic{Severity: SeverityError, Field: f, Message: "unknown field"})
		}
	}
	var meta metav1.ObjectMeta
	if raw, ok := top["metadata"]; ok {
		diags = append(diags, strictUnmarshal(raw, &meta, "metadata")...)
	}
	key, kd := objectKey(info.kind, meta.Namespace, meta.Name)
	diags = append(diags, kd...)
	spec := info.newIstio()
	if raw, ok := top["spec"]; ok && string(raw) != "null" {
		raw, unknown := prepareSpec(raw, spec.ProtoReflect().Descriptor())
		for _, f := range unknown {
			diags = append(diags, Diagnostic{Severity: SeverityError, Field: joinField("spec", f), Message: "unknown field"})
		}
		if len(unknown) == 0 {
			if err := (protojson.UnmarshalOptions{}).Unmarshal(raw, spec); err != nil {
				diags = append(diags, protojsonDiagnostic(raw, err))
			}
		}
	}
	for i := range diags {
		diags[i].Object = key
	}
	if HasErrors(diags) {
		return nil, diags
	}
	return &Object{Key: key, Labels: meta.Labels, Annotations: meta.Annotations, Spec: spec}, diags
}

// protojson errors look like `proto: (line 1:45): unknown field "rout"`,
// where the column counts runes.
var protojsonPosRE = regexp.MustCompile(`\(line (\d+):(\d+)\): (.*)$`)

func protojsonDiagnostic(spec []byte, err error) Diagnostic {
	d := Diagnostic{Severity: SeverityError, Field: "spec", Message: err.Error()}
	m := protojsonPosRE.FindStringSubmatch(err.Error())
	if m == nil {
		return d
	}
	d.Message = m[3]
	line, _ := strconv.Atoi(m[1])
	col, _ := strconv.Atoi(m[2])
	if off, ok := byteOffset(spec, line, col); ok {
		d.Field = joinField("spec", pathAtOffset(spec, int64(off)))
	}
	if len(m[3]) > len("unknown field") && m[3][:len("unknown field")] == "unknown field" {
		d.Message = "unknown field"
	}
	return d
}

// byteOffset converts a 1-based line and rune column into a byte offset.
func byteOffset(data []byte, line, col int) (int, bool) {
	off := 0
	for l := 1; l < line; l++ {
		i := slices.Index(data[off:], '\n')
		if i < 0 {
			return 0, false
		}
		off += i + 1
	}
	for c := 1; c < col; c++ {
		if off >= len(data) {
			return 0, false
		}
		_, n := utf8.DecodeRune(data[off:])
		off += n
	}
	return off, true
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}
