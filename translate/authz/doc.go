// Package authz translates the policy half of the configuration users already
// have — Istio AuthorizationPolicy and RequestAuthentication, SMI
// TrafficTarget with HTTPRouteGroup/TCPRoute — into Envoy filters for a
// workload's inbound listener on the node proxy:
//
//	config snapshot -> translate (listeners) -> inbound listener http_filters:
//	    jwt_authn (BuildJWT), then BuildHTTP's filters
//	    [AUDIT rbac (log), CUSTOM rbac shadow + ext_authz, DENY rbac,
//	     ALLOW rbac, SMI ALLOW rbac], then the router (Build returns them all)
//	                  -> inbound TCP filter chains: BuildTCP's network rbac
//	                     filters before tcp_proxy
//
// It is pure, like the rest of translate: no gRPC, eBPF, network, files or
// clock. Output is deterministic.
//
// Every policy is first turned into a small model with no Envoy types
// (model.go: a Policy is a list of Rules, each an OR of principal clauses and
// an OR of permission clauses, each clause an AND of attributes keyed like
// Istio's conditions). Istio AuthorizationPolicy (istio.go) and SMI
// TrafficTarget (smi.go) both produce that model, so both paths share the
// Envoy builders (principal.go, permission.go, rbac.go).
//
// Split decides which policies the kernel can enforce: a policy whose every
// attribute is L4 (peer identity, namespace, source IP, destination port) is
// enforced by translate/dataplane with eBPF entries; any other attribute needs
// the node proxy. The Envoy filters are built for every policy regardless, so
// a workload routed through the proxy gets the same decision there.
//
// Istio's evaluation order holds: CUSTOM, then DENY, then ALLOW. With no
// ALLOW policy a request is allowed; with ALLOW policies and no matching rule
// it is denied. AUDIT never changes a decision. Rule names follow Istio:
// ns[<namespace>]-policy[<name>]-rule[<index>].
//
// SMI and Istio together: TrafficTarget and AuthorizationPolicy both apply,
// and a request must be allowed by both. SMI targets become ALLOW policies
// in their own RBAC filter after Istio's ALLOW filter: Istio's DENY still
// wins, Istio's ALLOW policies (if any) must allow, and, when a
// TrafficTarget selects the workload (its destination service account), one
// of the TrafficTargets must allow too — SMI access control is additive and
// deny-by-default. For traffic splitting, an Istio VirtualService for the
// root service's host wins over a TrafficSplit (TrafficSplitWeights reports
// a Warning diagnostic).
//
// Wiring: translate/inboundauthz (a post-pass after translate/secure,
// which imports both translate and this package, so that this package
// never imports translate) calls Build for each local pod and gives the
// pods some policy selects their own chains on their namespace's inbound
// listener: an HTTP connection manager with Filters.HTTP and the router on
// HTTP/gRPC ports, Filters.TCP before tcp_proxy on the others, keeping
// secure's mTLS (without a verified peer certificate principal and
// namespace rules never match, so DENY rules on them would not fire). It
// adds Filters.JWKSClusters as clusters. Pods no policy selects keep their
// chains.
//
// Files: model.go (model, Split), istio.go (AuthorizationPolicy -> model),
// selector.go (which policies apply to a workload), matcher.go, principal.go,
// permission.go (model -> Envoy RBAC), rbac.go (BuildHTTP, BuildTCP),
// jwt.go (BuildJWT), smi.go (SMIPolicies, TrafficSplitWeights), build.go
// (Build: everything for one workload from a snapshot).
package authz
