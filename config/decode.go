package config

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// header is what the decoder reads of every document before it knows the
// kind; it is decoded leniently so that diagnostics can name the object.
type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

// value decodes one object (a document, or an item of a List) given as JSON.
// field is the path of the object inside the document ("" or "items[3]").
func (d *decoder) value(origin Origin, field string, js []byte) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(js, &top); err != nil {
		d.errorf(origin, Key{}, field, "document is not a mapping (object)")
		return
	}
	var h header
	_ = json.Unmarshal(js, &h) // best effort: only used to name the object
	key := Key{Kind: Kind(h.Kind), Namespace: h.Metadata.Namespace, Name: h.Metadata.Name}
	for _, f := range []string{"apiVersion", "kind"} {
		var s string
		if raw, ok := top[f]; !ok || json.Unmarshal(raw, &s) != nil || s == "" {
			d.errorf(origin, key, joinField(field, f), "%s is required and must be a string", f)
			return
		}
	}
	if h.Kind == "List" || strings.HasSuffix(h.Kind, "List") && top["items"] != nil {
		d.list(origin, field, top["items"])
		return
	}
	group, version := splitAPIVersion(h.APIVersion)
	info, ok := kindTable[groupKind{group, h.Kind}]
	if !ok {
		d.diags = append(d.diags, Diagnostic{Severity: SeverityInfo, Origin: origin, Object: key, Field: field,
			Message: fmt.Sprintf("unsupported kind %s %s: ignored", h.APIVersion, h.Kind)})
		return
	}
	if !slices.Contains(info.versions, version) {
		d.errorf(origin, key, joinField(field, "apiVersion"), "unsupported apiVersion %q for kind %s (supported: %s)",
			h.APIVersion, h.Kind, strings.Join(qualify(group, info.versions), ", "))
		return
	}
	key, _ = objectKey(info.kind, key.Namespace, key.Name) // the default namespace, for diagnostics
	var obj *Object
	var diags []Diagnostic
	switch {
	case info.newCore != nil:
		obj, diags = decodeCore(info, js)
	case info.newSMI != nil:
		obj, diags = decodeSMI(info, top)
	default:
		obj, diags = decodeIstio(info, top)
	}
	for i := range diags {
		diags[i].Origin = origin
		diags[i].Field = joinField(field, diags[i].Field)
		if diags[i].Object.Kind == "" {
			diags[i].Object = key
		}
	}
	d.diags = append(d.diags, diags...)
	if obj == nil || HasErrors(diags) {
		return
	}
	obj.APIVersion = h.APIVersion
	obj.Origin = origin
	d.objs = append(d.objs, obj)
}

func (d *decoder) list(origin Origin, field string, raw json.RawMessage) {
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		d.errorf(origin, Key{Kind: "List"}, joinField(field, "items"), "items must be a list of objects")
		return
	}
	for i, it := range items {
		d.value(origin, joinField(field, fmt.Sprintf("items[%d]", i)), it)
	}
}

func (d *decoder) errorf(origin Origin, key Key, field, format string, args ...any) {
	d.diags = append(d.diags, Diagnostic{Severity: SeverityError, Origin: origin, Object: key, Field: field,
		Message: fmt.Sprintf(format, args...)})
}

func qualify(group string, versions []string) []string {
	out := make([]string, len(versions))
	for i, v := range versions {
		if group == "" {
			out[i] = v
		} else {
			out[i] = group + "/" + v
		}
	}
	return out
}

// objectKey checks the name and namespace read from metadata and fills in
// the default namespace. It returns a diagnostic (without origin) when they
// cannot be used.
func objectKey(kind Kind, namespace, name string) (Key, []Diagnostic) {
	k := Key{Kind: kind, Namespace: namespace, Name: name}
	if !kind.Namespaced() {
		k.Namespace = ""
	} else if k.Namespace == "" {
		k.Namespace = "default"
	}
	var diags []Diagnostic
	bad := func(field string, msgs []string) {
		value := name
		if field == "metadata.namespace" {
			value = namespace
		}
		for _, m := range msgs {
			if value != "" {
				m = fmt.Sprintf("invalid value %q: %s", value, m)
			}
			diags = append(diags, Diagnostic{Severity: SeverityError, Object: k, Field: field, Message: m})
		}
	}
	// The API server's rules: a Service name is a DNS-1035 label (it becomes
	// a DNS name), a Namespace name a DNS-1123 label, other names DNS-1123
	// subdomains.
	switch {
	case name == "":
		bad("metadata.name", []string{"name is required"})
	case kind == KindService:
		bad("metadata.name", validation.IsDNS1035Label(name))
	case kind == KindNamespace:
		bad("metadata.name", validation.IsDNS1123Label(name))
	default:
		bad("metadata.name", validation.IsDNS1123Subdomain(name))
	}
	if kind.Namespaced() && namespace != "" {
		bad("metadata.namespace", validation.IsDNS1123Label(namespace))
	}
	return k, diags
}
