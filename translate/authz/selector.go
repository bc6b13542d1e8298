package authz

import (
	"fmt"

	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"

	"github.com/nodemesh/nodemesh/config"
)

// Workload is the destination whose inbound traffic the filters guard.
type Workload struct {
	Namespace      string
	Name           string // for diagnostics only
	Labels         map[string]string
	ServiceAccount string // for SMI TrafficTargets ("default" when empty)
}

func (w Workload) serviceAccount() string {
	if w.ServiceAccount == "" {
		return "default"
	}
	return w.ServiceAccount
}

// selects reports whether an Istio security object (AuthorizationPolicy,
// RequestAuthentication) with this selector and these targetRefs applies to
// the workload: a policy in the root namespace applies mesh-wide, one in the
// workload's namespace applies there; then the selector's labels must all
// match, or one of the targetRefs must name a Service whose selector matches.
func selects(o *config.Object, sel *typev1beta1.WorkloadSelector, refs []*typev1beta1.PolicyTargetReference,
	w Workload, opts Options) (bool, []config.Diagnostic) {
	if o.Namespace != w.Namespace && o.Namespace != opts.rootNamespace() {
		return false, nil
	}
	if len(refs) > 0 {
		if sel != nil {
			return false, []config.Diagnostic{diag(config.SeverityError, o, "spec.targetRefs",
				"selector and targetRefs are mutually exclusive: the policy is ignored")}
		}
		var diags []config.Diagnostic
		for i, r := range refs {
			field := fmt.Sprintf("spec.targetRefs[%d]", i)
			if r.GetKind() != "Service" || (r.GetGroup() != "" && r.GetGroup() != "core") {
				diags = append(diags, diag(config.SeverityInfo, o, field,
					"targetRef %s/%s %s is not a Service: nodemesh applies it to no workload", r.GetGroup(), r.GetKind(), r.GetName()))
				continue
			}
			ns := r.GetNamespace()
			if ns == "" {
				ns = o.Namespace
			}
			if ns != w.Namespace || opts.ServiceSelector == nil {
				continue
			}
			if svcSel, ok := opts.ServiceSelector(ns, r.GetName()); ok && len(svcSel) > 0 && labelsMatch(svcSel, w.Labels) {
				return true, diags
			}
		}
		return false, diags
	}
	return labelsMatch(sel.GetMatchLabels(), w.Labels), nil
}

// labelsMatch: every pair of sel is in labels (an empty selector matches).
func labelsMatch(sel, labels map[string]string) bool {
	for k, v := range sel {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// targetRefs merges the deprecated targetRef into targetRefs.
func targetRefs(one *typev1beta1.PolicyTargetReference, many []*typev1beta1.PolicyTargetReference) []*typev1beta1.PolicyTargetReference {
	if one != nil {
		return append([]*typev1beta1.PolicyTargetReference{one}, many...)
	}
	return many
}

// SelectAuthorizationPolicies returns, in model form, the
// AuthorizationPolicies among objs (other kinds are skipped) that apply to
// the workload, in input order (a snapshot lists them by namespace and name).
func SelectAuthorizationPolicies(objs []*config.Object, w Workload, opts Options) ([]*Policy, []config.Diagnostic) {
	var out []*Policy
	var diags []config.Diagnostic
	for _, o := range objs {
		spec, ok := o.Spec.(*securityv1beta1.AuthorizationPolicy)
		if !ok || o.Kind != config.KindAuthorizationPolicy {
			continue
		}
		ok, d := selects(o, spec.GetSelector(), targetRefs(spec.GetTargetRef(), spec.GetTargetRefs()), w, opts)
		diags = append(diags, d...)
		if !ok {
			continue
		}
		p, d := FromAuthorizationPolicy(o, opts)
		diags = append(diags, d...)
		if p != nil {
			out = append(out, p)
		}
	}
	return out, diags
}
