// Package inboundauthz joins translate/authz to the node proxy's inbound
// listeners. It is a pure post-translation pass, run after translate/secure
// (or after translate when secure is off):
//
//	config.Snapshot ─► translate ─► secure.Apply ─► inboundauthz.Apply ─► check ─► xds
//
// For every local pod of a SharedEnvoy node that some AuthorizationPolicy,
// RequestAuthentication or SMI TrafficTarget selects (authz.Build returns
// filters), the pod's filter chains on its namespace's listener
// "inbound_<ns>" get the policy:
//   - chains shared by several pods (translate's plain chain) are split so
//     that the pod has chains of its own, matched on its IP
//     (prefix_ranges); secure's per-pod chains are used as they are, their
//     transport socket (mTLS) and match untouched;
//   - on each HTTP or gRPC target port of the pod (a port of a Service
//     selecting it, by Istio's port naming or appProtocol) its tcp_proxy
//     becomes an HTTP connection manager: http_filters = authz's filters
//     (jwt_authn, AUDIT, CUSTOM, DENY, ALLOW, SMI) then the router, routes
//     from RDS "inbound|<ns>" (one virtual host "*" to the original
//     destination cluster "inbound|<ns>");
//   - on every other port authz's network RBAC filters go right before
//     tcp_proxy.
//
// Envoy selects a chain by destination port before address and never falls
// back, so a port-specific chain added for one pod is added, unchanged, for
// every other address the listener serves on any port: their behaviour does
// not change. Pods no policy selects keep their chains as they were. The
// JWKS clusters jwt_authn fetches through are added; the original
// destination cluster "inbound|<ns>" speaks the downstream's protocol
// upstream (HTTP/1.1 or HTTP/2 for gRPC).
//
// Apply never mutates resources of its input (they may be shared between
// nodes): it replaces what it changes with copies. Check is translate.Check
// for NodeConfigs with authz's network filters, which translate.Check does
// not know (see check.go).
package inboundauthz
