package config

import (
	"cmp"
	"fmt"
	"slices"
)

// Diagnostics collects the problems found in user objects while they are
// translated. The zero value is ready to use.
type Diagnostics struct {
	list []Diagnostic
}

// Add records a problem with field (a dotted path) of o; o may be nil.
func (d *Diagnostics) Add(sev Severity, o *Object, field, format string, args ...any) {
	diag := Diagnostic{Severity: sev, Field: field, Message: fmt.Sprintf(format, args...)}
	if o != nil {
		diag.Origin = o.Origin
		diag.Object = o.Key
	}
	d.list = append(d.list, diag)
}

func (d *Diagnostics) Errorf(o *Object, field, format string, args ...any) {
	d.Add(SeverityError, o, field, format, args...)
}

func (d *Diagnostics) Warnf(o *Object, field, format string, args ...any) {
	d.Add(SeverityWarning, o, field, format, args...)
}

func (d *Diagnostics) Infof(o *Object, field, format string, args ...any) {
	d.Add(SeverityInfo, o, field, format, args...)
}

// Sorted returns the diagnostics sorted by object, field and message, with
// duplicates (the same problem found twice, e.g. from two namespaces)
// removed.
func (d *Diagnostics) Sorted() []Diagnostic {
	out := slices.Clone(d.list)
	slices.SortFunc(out, CompareDiagnostics)
	return slices.CompactFunc(out, func(a, b Diagnostic) bool { return CompareDiagnostics(a, b) == 0 })
}

// CompareDiagnostics orders diagnostics by object, field, severity (most
// severe first), message and origin.
func CompareDiagnostics(a, b Diagnostic) int {
	return cmp.Or(
		cmp.Compare(a.Object.Kind, b.Object.Kind),
		cmp.Compare(a.Object.Namespace, b.Object.Namespace),
		cmp.Compare(a.Object.Name, b.Object.Name),
		cmp.Compare(a.Field, b.Field),
		cmp.Compare(b.Severity, a.Severity),
		cmp.Compare(a.Message, b.Message),
		cmp.Compare(a.Origin.File, b.Origin.File),
		cmp.Compare(a.Origin.Doc, b.Origin.Doc),
		cmp.Compare(a.Origin.Line, b.Origin.Line),
	)
}

// List returns a copy of the diagnostics in the order they were recorded.
func (d *Diagnostics) List() []Diagnostic { return slices.Clone(d.list) }

// Append records diagnostics found elsewhere.
func (d *Diagnostics) Append(ds ...Diagnostic) { d.list = append(d.list, ds...) }
