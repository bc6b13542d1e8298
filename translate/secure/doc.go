// Package secure adds workload identity and mutual TLS to what translate
// built. It is a pure post-translation pass: config snapshot + the
// NodeConfig of one proxy in, the same NodeConfig with TLS out.
//
//	config.Snapshot ─► translate.Translate ─► secure.Apply ─► xds (LDS/RDS/CDS/EDS + SDS)
//
// On a SharedEnvoy node (the one Envoy per node, per-namespace listeners):
//   - outbound: every filter chain of a namespace's outbound listener is
//     split by the source pod IPs of each service account of that namespace
//     on the node (filter_chain_match.source_prefix_ranges). A split chain
//     first stores its account's SPIFFE ID in filter state
//     (SourceIdentityKey, set_filter_state on_new_connection, factory
//     envoy.hashable_string, shared with the upstream connection) and then
//     runs the original filters: the route configurations and clusters are
//     not copied. Every mesh cluster some account reaches over mTLS gets
//     one transport_socket_matches entry per such account ("<ns>/<sa>",
//     UpstreamTlsContext presenting that account's SVID over SDS, secret
//     named after its SPIFFE ID, and checking the server's SPIFFE ID against
//     the service accounts of the destination service's pods) and a
//     transport_socket_matcher mapping the filter state value (exact match
//     on the SPIFFE ID) to the account's entry; accounts whose namespace
//     reaches the destination in plaintext (a DestinationRule) map to a
//     raw_buffer entry "plaintext". No value, or an unknown one, selects
//     the cluster's default socket: TLS checking the server but presenting
//     no certificate, which mesh servers refuse. So a workload's traffic is
//     never sent under another workload's identity; traffic from an address
//     that is no known pod matches no split chain and leaves as plaintext
//     passthrough, under no identity at all.
//   - inbound: one filter chain per local pod IP (and per overridden port)
//     terminates mTLS with the pod's own SVID, requires a client certificate
//     of the trust domain (SDS trust bundle secret named after the trust
//     domain, spiffe://<td>) and keeps the filters that follow (RBAC sees
//     the verified peer certificate, so principals work).
//   - PeerAuthentication decides per pod and port: STRICT (mTLS only),
//     PERMISSIVE (tls_inspector; transport_protocol "tls" -> mTLS,
//     "raw_buffer" -> plaintext on the same port) or DISABLE (plaintext),
//     with Istio's precedence: workload (selector) over namespace over mesh
//     (root namespace), UNSET inheriting, portLevelMtls on workload
//     policies; PERMISSIVE when nothing says otherwise. Clients follow the
//     server (Istio's auto mTLS): a destination whose pods all DISABLE the
//     port is reached in plaintext, unless the client's DestinationRule
//     says otherwise (tls.mode DISABLE: plaintext; ISTIO_MUTUAL: mTLS;
//     subset and port-level settings first; SIMPLE and MUTUAL with
//     certificates of the user's own are not supported).
//
// A ProxylessGRPC client is the workload itself, one identity: its
// clusters get UpstreamTlsContexts naming gRPC certificate provider
// instances (CertificateProviderPluginInstance, from the client's
// bootstrap, e.g. file_watcher) instead of SDS, which gRPC does not speak
// (nor transport_socket_matcher; gRPC reads a cluster's transport_socket
// only, gRFC A29).
//
// # Why selecting the socket in Envoy is safe, and which Envoy it needs
//
// Envoy chooses the transport socket per upstream connection, after load
// balancing, from the downstream filter state explicitly shared with the
// upstream (Cluster.transport_socket_matcher, input
// envoy.matching.inputs.transport_socket_filter_state, action
// envoy.matching.action.transport_socket.name; added in Envoy 1.37.0 with
// the fix "transport socket matcher to correctly use downstream connection
// filter state", envoyproxy/envoy#42739, changelogs/1.37.0.yaml;
// source/common/upstream/transport_socket_match_impl.cc resolveUsingMatcher
// copies TransportSocketOptions::downstreamSharedFilterStateObjects() into
// the matching data; EDS hosts re-resolve per connection when the matcher
// reads filter state, LOGICAL_DNS hosts since envoyproxy/envoy#42788). Both
// upstream kinds pass that filter state: the TCP
// proxy builds its TransportSocketOptions from the downstream connection's
// filter state, the router from the stream's, whose parent is the
// connection's (FilterStateImpl::objectsSharedWithUpstreamConnection walks
// the parent), both via TransportSocketOptionsUtility::fromFilterState.
//
// Choosing the socket per connection is not enough: HTTP upstream
// connections are pooled, and a pooled connection opened with account A's
// certificate must never carry account B's request. The pool key is built
// in source/common/upstream/cluster_manager_impl.cc
// (ClusterEntry::httpConnPoolImpl and tcpConnPoolImpl alike) from
// host->transportSocketFactory().hashKey(key, options), the host's default
// socket factory;
// both the raw_buffer and the TLS client factory inherit
// CommonUpstreamTransportSocketFactory::hashKey
// (source/common/network/transport_socket_options_impl.cc), which adds
// each shared filter state object ONLY if it is Hashable
// (dynamic_cast<const Hashable*>, then hash()). set_filter_state's
// envoy.string factory builds Router::StringAccessorImpl, which does not
// implement hash(): with it, the identity would select the certificate but
// not the pool, and two accounts calling the same host could share a
// connection (the bug reported in envoyproxy/envoy#35711). The
// envoy.hashable_string factory (envoyproxy/envoy#43208, merged 2026-01-31,
// so in Envoy 1.38.0 and later; it has no changelog entry) builds a string
// whose hash() is xxHash64(value): one pool per (host, account). This
// package therefore needs Envoy >= 1.38. CheckSecrets rejects an identity
// that is not a shared envoy.hashable_string, and
// TestNoTrafficUnderAnotherIdentity evaluates the generated selection for
// every chain and cluster. For older Envoys, Options.PerAccountClusters
// keeps the per-account copies below.
//
// # Cost
//
// BenchmarkSecureCost, DESIGN.md mesh without Sidecar scoping (1,000
// services x 10 endpoints, 50 namespaces, 50 nodes: about 200 service
// accounts per node, 1,000 services visible to each), one node, 2 cores:
//
//	                      clusters  routes  MB/node  TLS sockets  pass
//	per-account copies     240,212     400    175.2      240,000  7.4 s
//	socket selection         1,412      11    131.3      241,200  2.0 s
//
// Selection removes the cluster and route copies, not the TLS sockets: one
// per account and destination either way, because the sockets differ in
// the certificate they present and the server identities they accept
// (each an SSL context in Envoy). Sidecar egress scoping shrinks both.
// Envoy's upstream certificate selectors (on_demand_secret with the
// filter_state_override mapper: one socket per cluster, the certificate
// named by the filter state) would remove the per-account sockets too;
// not done here.
//
// With Options.PerAccountClusters the split chain instead reaches clusters
// and route configurations copied per account ("<cluster>~<ns>/<sa>"),
// each presenting that account's SVID: safe on any Envoy version, at the
// cost above.
//
// The package does not log and never reads the clock, the network or the
// file system (deps_test.go enforces it, as for translate).
package secure
