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
// Wiring (translate's inbound listener): for each local workload that some
// policy selects, call Build(snap, Workload{...}, opts) and give the
// workload its own filter chains on its namespace's inbound listener,
// matched on its pod IPs (prefix_ranges; the original_dst listener filter
// restores the destination): for each HTTP port a chain whose HCM has
// http_filters = Filters.HTTP followed by the router; for each other port a
// chain with Filters.TCP followed by tcp_proxy. The chains must terminate
// mTLS with the workload's SVID and require a client certificate, or
// principal and namespace rules never match (DENY rules would not fire).
// Filters.JWKSClusters must be added as clusters. Workloads no policy
// selects keep the shared chain.
//
// Files: model.go (model, Split), istio.go (AuthorizationPolicy -> model),
// selector.go (which policies apply to a workload), matcher.go, principal.go,
// permission.go (model -> Envoy RBAC), rbac.go (BuildHTTP, BuildTCP),
// jwt.go (BuildJWT), smi.go (SMIPolicies, TrafficSplitWeights), build.go
// (Build: everything for one workload from a snapshot).
package authz
