package config

// SMI (Service Mesh Interface, smi-spec.io) kinds. Their specs are small Go
// structs decoded strictly from JSON (unknown fields are errors naming the
// field). All versions of a kind share one Go type: later versions only added
// optional fields (TrafficSplit.matches, TCPRoute.matches.ports).
const (
	KindTrafficSplit   Kind = "TrafficSplit"   // *TrafficSplit
	KindTrafficTarget  Kind = "TrafficTarget"  // *TrafficTarget
	KindHTTPRouteGroup Kind = "HTTPRouteGroup" // *HTTPRouteGroup
	KindTCPRoute       Kind = "TCPRoute"       // *TCPRoute
	KindUDPRoute       Kind = "UDPRoute"       // *UDPRoute
)

// TrafficSplit (split.smi-spec.io v1alpha2-v1alpha4) shifts the traffic of a
// root service between backend services of the same namespace.
type TrafficSplit struct {
	// Service is the root service clients connect to (a name or FQDN).
	Service  string                `json:"service"`
	Backends []TrafficSplitBackend `json:"backends"`
	// Matches (v1alpha3+) restricts the split to requests matching these
	// HTTPRouteGroups.
	Matches []TypedLocalObjectReference `json:"matches,omitempty"`
}

// TrafficSplitBackend is one backend service and its relative weight.
type TrafficSplitBackend struct {
	Service string `json:"service"`
	Weight  int    `json:"weight"`
}

// TypedLocalObjectReference names an object of a kind in the same namespace.
type TypedLocalObjectReference struct {
	APIGroup string `json:"apiGroup,omitempty"`
	Kind     string `json:"kind"`
	Name     string `json:"name"`
}

// TrafficTarget (access.smi-spec.io v1alpha2, v1alpha3) allows source service
// accounts to reach a destination service account on the traffic described
// by its rules. Access control is additive: what no TrafficTarget allows is
// denied.
type TrafficTarget struct {
	Destination IdentityBindingSubject   `json:"destination"`
	Rules       []TrafficTargetRule      `json:"rules"`
	Sources     []IdentityBindingSubject `json:"sources"`
}

// IdentityBindingSubject is a service account. Port (v1alpha2 destinations
// only) restricts the target to one port.
type IdentityBindingSubject struct {
	Kind      string `json:"kind"`
	Name      string `json:"name"`
	Namespace string `json:"namespace,omitempty"`
	Port      *int   `json:"port,omitempty"`
}

// TrafficTargetRule references a route object (HTTPRouteGroup, TCPRoute,
// UDPRoute) in the TrafficTarget's namespace; Matches names the
// HTTPRouteGroup matches that apply (all when empty).
type TrafficTargetRule struct {
	Kind    string   `json:"kind"`
	Name    string   `json:"name"`
	Matches []string `json:"matches,omitempty"`
}

// HTTPRouteGroup (specs.smi-spec.io v1alpha2-v1alpha4) names HTTP matches.
type HTTPRouteGroup struct {
	Matches []HTTPMatch `json:"matches"`
}

// HTTPMatch matches a request: PathRegex is anchored at the start of the
// path; Methods may hold "*"; every header's value regex must match.
type HTTPMatch struct {
	Name      string            `json:"name"`
	PathRegex string            `json:"pathRegex,omitempty"`
	Methods   []string          `json:"methods,omitempty"`
	Headers   map[string]string `json:"headers,omitempty"`
}

// TCPRoute (specs.smi-spec.io v1alpha2-v1alpha4) describes TCP traffic; no
// ports means every port of the destination.
type TCPRoute struct {
	Matches *L4Match `json:"matches,omitempty"`
}

// UDPRoute (specs.smi-spec.io v1alpha4) describes UDP traffic.
type UDPRoute struct {
	Matches *L4Match `json:"matches,omitempty"`
}

// L4Match lists ports.
type L4Match struct {
	Ports []int `json:"ports"`
}

// Ports returns the ports of a TCPRoute, nil meaning all.
func (r *TCPRoute) Ports() []int {
	if r == nil || r.Matches == nil {
		return nil
	}
	return r.Matches.Ports
}
