package config

import (
	"reflect"
	"strings"

	kjson "sigs.k8s.io/json"
)

// decodeCore decodes a whole Kubernetes core object strictly (unknown and
// duplicate fields are errors, field names are case-sensitive) into its
// k8s.io/api type. Diagnostics carry Object and Field but no Origin.
func decodeCore(info kindInfo, js []byte) (*Object, []Diagnostic) {
	o := info.newCore()
	if diags := strictUnmarshal(js, o, ""); len(diags) > 0 {
		return nil, diags
	}
	key, diags := objectKey(info.kind, o.GetNamespace(), o.GetName())
	if len(diags) > 0 {
		return nil, diags
	}
	o.SetNamespace(key.Namespace) // the default namespace, or none when cluster-scoped
	return &Object{Key: key, Labels: o.GetLabels(), Annotations: o.GetAnnotations(), Spec: o}, nil
}

// strictUnmarshal decodes js into v the way the Kubernetes API server does
// and turns every problem into a diagnostic naming the field (prefixed by
// prefix).
func strictUnmarshal(js []byte, v any, prefix string) []Diagnostic {
	strictErrs, err := kjson.UnmarshalStrict(js, v)
	if err != nil {
		field := ""
		if off, ok := errorOffset(err); ok && off > 0 {
			// The offset is just after the offending value.
			field = pathAtOffset(js, off-1)
		}
		msg := strings.TrimPrefix(err.Error(), "json: ")
		return []Diagnostic{{Severity: SeverityError, Field: joinField(prefix, field), Message: msg}}
	}
	var diags []Diagnostic
	for _, e := range strictErrs {
		d := Diagnostic{Severity: SeverityError, Message: e.Error()}
		if fe, ok := e.(kjson.FieldError); ok {
			d.Field = joinField(prefix, fe.FieldPath())
			switch msg := e.Error(); {
			case strings.HasPrefix(msg, "unknown field"):
				d.Message = "unknown field"
			case strings.HasPrefix(msg, "duplicate field"):
				d.Message = "duplicate field"
			}
		}
		diags = append(diags, d)
	}
	return diags
}

// errorOffset returns the byte offset of a JSON decoding error. The
// sigs.k8s.io/json error types are internal, so their exported Offset field
// is read by reflection.
func errorOffset(err error) (int64, bool) {
	v := reflect.ValueOf(err)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return 0, false
	}
	f := v.Elem().FieldByName("Offset")
	if !f.IsValid() || f.Kind() != reflect.Int64 {
		return 0, false
	}
	return f.Int(), true
}
