package dataplane

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/nodemesh/nodemesh/config"
)

// diagnostics collects problems found in user objects while translating.
type diagnostics struct {
	list []config.Diagnostic
}

func (d *diagnostics) add(sev config.Severity, o *config.Object, field, format string, args ...any) {
	diag := config.Diagnostic{Severity: sev, Field: field, Message: fmt.Sprintf(format, args...)}
	if o != nil {
		diag.Origin = o.Origin
		diag.Object = o.Key
	}
	d.list = append(d.list, diag)
}

func (d *diagnostics) errorf(o *config.Object, field, format string, args ...any) {
	d.add(config.SeverityError, o, field, format, args...)
}

func (d *diagnostics) warnf(o *config.Object, field, format string, args ...any) {
	d.add(config.SeverityWarning, o, field, format, args...)
}

func (d *diagnostics) infof(o *config.Object, field, format string, args ...any) {
	d.add(config.SeverityInfo, o, field, format, args...)
}

// sorted returns the diagnostics sorted by object, field and message,
// without duplicates.
func (d *diagnostics) sorted() []config.Diagnostic {
	out := slices.Clone(d.list)
	slices.SortFunc(out, compareDiagnostics)
	return slices.CompactFunc(out, func(a, b config.Diagnostic) bool { return compareDiagnostics(a, b) == 0 })
}

func compareDiagnostics(a, b config.Diagnostic) int {
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

func fieldf(format string, args ...any) string { return fmt.Sprintf(format, args...) }
