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
//     only reaches clusters and route configurations of its own service
//     account ("<cluster>~<ns>/<sa>"), whose UpstreamTlsContext presents that
//     service account's SVID (SDS secret named after its SPIFFE ID) and
//     checks the server's SPIFFE ID against the service accounts of the
//     destination service's pods. So a workload's traffic is never sent
//     under another workload's identity; traffic from an address that is no
//     known pod matches no split chain and leaves as plaintext passthrough,
//     under no identity at all.
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
// A ProxylessGRPC client is the workload itself: its clusters get
// UpstreamTlsContexts naming gRPC certificate provider instances
// (CertificateProviderPluginInstance, from the client's bootstrap, e.g.
// file_watcher) instead of SDS, which gRPC does not speak.
//
// Cost: the split multiplies the clusters (and the route configurations
// that name them) by the service accounts of the node that can reach them.
// On the DESIGN.md mesh without Sidecar scoping (about 200 service
// accounts per node, 1,000 services visible to each) that is about
// 240,000 clusters per node: ~4.4 s of CPU for one node alone, ~1.5 s per
// node when all 50 share one Prepared (BenchmarkApplyMesh, 2 cores);
// Sidecar egress scoping shrinks it. Envoy's transport_socket_matcher on
// downstream filter state (one cluster per service, one TLS socket per
// account) would avoid the cluster and route copies; it needs an Envoy
// binary to prove and is not done here.
//
// The package does not log and never reads the clock, the network or the
// file system (deps_test.go enforces it, as for translate).
package secure
