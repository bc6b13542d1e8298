package config

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// API groups of the SMI kinds.
const (
	groupSMISplit  = "split.smi-spec.io"
	groupSMIAccess = "access.smi-spec.io"
	groupSMISpecs  = "specs.smi-spec.io"
)

var (
	smiSplitVersions  = []string{"v1alpha2", "v1alpha3", "v1alpha4"}
	smiAccessVersions = []string{"v1alpha2", "v1alpha3"}
	smiSpecsVersions  = []string{"v1alpha2", "v1alpha3", "v1alpha4"}
)

// smiKinds are registered in kindTable (kinds.go).
var smiKinds = map[groupKind]kindInfo{
	{groupSMISplit, "TrafficSplit"}: {kind: KindTrafficSplit, versions: smiSplitVersions,
		newSMI: func() smiSpec { return new(TrafficSplit) }},
	{groupSMIAccess, "TrafficTarget"}: {kind: KindTrafficTarget, versions: smiAccessVersions,
		newSMI: func() smiSpec { return new(TrafficTarget) }},
	{groupSMISpecs, "HTTPRouteGroup"}: {kind: KindHTTPRouteGroup, versions: smiSpecsVersions,
		newSMI: func() smiSpec { return new(HTTPRouteGroup) }},
	{groupSMISpecs, "TCPRoute"}: {kind: KindTCPRoute, versions: smiSpecsVersions,
		newSMI: func() smiSpec { return new(TCPRoute) }},
	{groupSMISpecs, "UDPRoute"}: {kind: KindUDPRoute, versions: []string{"v1alpha4"},
		newSMI: func() smiSpec { return new(UDPRoute) }},
}

// smiSpec is an SMI spec struct that checks itself after decoding.
type smiSpec interface {
	// validate returns diagnostics (Field relative to spec, no Object).
	validate() []Diagnostic
}

// decodeSMI decodes an SMI resource: metadata strictly as ObjectMeta, spec
// strictly into the kind's struct, then validates the spec.
func decodeSMI(info kindInfo, top map[string]json.RawMessage) (*Object, []Diagnostic) {
	var diags []Diagnostic
	if legacyTopLevelMatches(info, top) {
		// specs.smi-spec.io/v1alpha2 HTTPRouteGroup kept matches at the top
		// level (no spec); v1alpha3 moved them under spec.
		top["spec"] = json.RawMessage(`{"matches":` + string(top["matches"]) + `}`)
		delete(top, "matches")
	}
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
	spec := info.newSMI()
	if raw, ok := top["spec"]; ok && string(raw) != "null" {
		if sd := strictUnmarshal(raw, spec, "spec"); len(sd) > 0 {
			diags = append(diags, sd...)
		} else {
			for _, d := range spec.validate() {
				d.Field = joinField("spec", d.Field)
				diags = append(diags, d)
			}
		}
	} else if info.kind != KindTCPRoute && info.kind != KindUDPRoute { // no spec: every port
		diags = append(diags, Diagnostic{Severity: SeverityError, Field: "spec", Message: "spec is required"})
	}
	for i := range diags {
		diags[i].Object = key
	}
	if HasErrors(diags) {
		return nil, diags
	}
	return &Object{Key: key, Labels: meta.Labels, Annotations: meta.Annotations, Spec: spec}, diags
}

func legacyTopLevelMatches(info kindInfo, top map[string]json.RawMessage) bool {
	if info.kind != KindHTTPRouteGroup || top["matches"] == nil || top["spec"] != nil {
		return false
	}
	var apiVersion string
	_ = json.Unmarshal(top["apiVersion"], &apiVersion)
	_, version := splitAPIVersion(apiVersion)
	return version == "v1alpha2"
}

func smiErr(field, format string, args ...any) Diagnostic {
	return Diagnostic{Severity: SeverityError, Field: field, Message: fmt.Sprintf(format, args...)}
}

func (s *TrafficSplit) validate() []Diagnostic {
	var d []Diagnostic
	if s.Service == "" {
		d = append(d, smiErr("service", "service is required"))
	}
	if len(s.Backends) == 0 {
		d = append(d, smiErr("backends", "at least one backend is required"))
	}
	for i, b := range s.Backends {
		if b.Service == "" {
			d = append(d, smiErr(fmt.Sprintf("backends[%d].service", i), "service is required"))
		}
		if b.Weight < 0 {
			d = append(d, smiErr(fmt.Sprintf("backends[%d].weight", i), "weight %d must not be negative", b.Weight))
		}
	}
	for i, m := range s.Matches {
		if m.Kind != string(KindHTTPRouteGroup) {
			d = append(d, smiErr(fmt.Sprintf("matches[%d].kind", i), "kind %q is not supported (want HTTPRouteGroup)", m.Kind))
		}
		if m.Name == "" {
			d = append(d, smiErr(fmt.Sprintf("matches[%d].name", i), "name is required"))
		}
	}
	return d
}

func (t *TrafficTarget) validate() []Diagnostic {
	var d []Diagnostic
	d = append(d, t.Destination.check("destination")...)
	if len(t.Sources) == 0 {
		d = append(d, smiErr("sources", "at least one source is required"))
	}
	for i, s := range t.Sources {
		d = append(d, s.check(fmt.Sprintf("sources[%d]", i))...)
		if s.Port != nil {
			d = append(d, smiErr(fmt.Sprintf("sources[%d].port", i), "port is only allowed on the destination"))
		}
	}
	if len(t.Rules) == 0 {
		d = append(d, smiErr("rules", "at least one rule is required"))
	}
	for i, r := range t.Rules {
		f := fmt.Sprintf("rules[%d]", i)
		switch Kind(r.Kind) {
		case KindHTTPRouteGroup:
		case KindTCPRoute, KindUDPRoute:
			if len(r.Matches) > 0 {
				d = append(d, smiErr(f+".matches", "matches is only allowed for HTTPRouteGroup rules"))
			}
		default:
			d = append(d, smiErr(f+".kind", "kind %q is not supported (want HTTPRouteGroup, TCPRoute or UDPRoute)", r.Kind))
		}
		if r.Name == "" {
			d = append(d, smiErr(f+".name", "name is required"))
		}
	}
	return d
}

func (s IdentityBindingSubject) check(field string) []Diagnostic {
	var d []Diagnostic
	if s.Kind != string(KindServiceAccount) {
		d = append(d, smiErr(field+".kind", "kind %q is not supported (want ServiceAccount)", s.Kind))
	}
	if s.Name == "" {
		d = append(d, smiErr(field+".name", "name is required"))
	}
	if s.Port != nil && (*s.Port < 1 || *s.Port > 65535) {
		d = append(d, smiErr(field+".port", "port %d out of range 1-65535", *s.Port))
	}
	return d
}

// methodRE is an HTTP token (RFC 9110) or "*".
var methodRE = regexp.MustCompile("^([!#$%&'*+.^_`|~0-9A-Za-z-]+)$")

func (g *HTTPRouteGroup) validate() []Diagnostic {
	var d []Diagnostic
	seen := map[string]bool{}
	for i, m := range g.Matches {
		f := fmt.Sprintf("matches[%d]", i)
		switch {
		case m.Name == "":
			d = append(d, smiErr(f+".name", "name is required"))
		case seen[m.Name]:
			d = append(d, smiErr(f+".name", "duplicate match name %q", m.Name))
		}
		seen[m.Name] = true
		if _, err := regexp.Compile(m.PathRegex); err != nil {
			d = append(d, smiErr(f+".pathRegex", "invalid regular expression: %v", err))
		}
		for j, meth := range m.Methods {
			if !methodRE.MatchString(meth) {
				d = append(d, smiErr(fmt.Sprintf("%s.methods[%d]", f, j), "invalid method %q", meth))
			}
		}
		for _, h := range slices.Sorted(mapKeys(m.Headers)) {
			if _, err := regexp.Compile(m.Headers[h]); err != nil {
				d = append(d, smiErr(fmt.Sprintf("%s.headers.%s", f, h), "invalid regular expression: %v", err))
			}
		}
	}
	return d
}

func checkPorts(m *L4Match) []Diagnostic {
	if m == nil {
		return nil
	}
	var d []Diagnostic
	for i, p := range m.Ports {
		if p < 1 || p > 65535 {
			d = append(d, smiErr(fmt.Sprintf("matches.ports[%d]", i), "port %d out of range 1-65535", p))
		}
	}
	return d
}

func (r *TCPRoute) validate() []Diagnostic { return checkPorts(r.Matches) }
func (r *UDPRoute) validate() []Diagnostic { return checkPorts(r.Matches) }
