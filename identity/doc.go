// Package identity gives every workload of the mesh a SPIFFE identity,
// spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>, and issues the
// short-lived X.509-SVIDs that prove it.
//
// It sits beside the translation pipeline: config -> translate -> xds ->
// nodeagent carries listeners and policy, identity carries keys. The control
// plane (cmd/meshd) runs a CA and the Istio certificate API; the xds package
// will serve the SVIDs of a node's pods over SDS, and the node agent proves
// who it is with its own SVID over mTLS.
//
// Three issuers implement the same Source interface (SVIDFor, TrustBundle):
//   - CA, the built-in certificate authority in the control plane: a
//     self-signed ECDSA P-256 root generated on first start and persisted,
//     or a plugged-in root and intermediate in Istio's cacerts layout; root
//     rotation keeps the old root in the trust bundle during the overlap;
//   - CertClient, the node side of the built-in CA: a local key, a CSR, and
//     Istio's certificate API over mTLS;
//   - SPIRE, a SPIRE agent used as the upstream: the process's own SVID
//     through the Workload API and the SVIDs of the node's workloads through
//     SPIRE's Delegated Identity API. In SPIRE mode (meshd and mesh-agent
//     --spire-socket) meshd runs no CA: its own SVID and the bundle come
//     from its SPIRE agent, each node agent gets its own SVID (the node
//     name as the entry's first DNS name, see agent.go) and its workloads'
//     SVIDs from the SPIRE agent of its node and serves them locally.
//
// CertService serves Istio's IstioCertificateService.CreateCertificate over
// mTLS; an Authorizer decides which caller gets which identity (by default,
// only its own; a node agent is identified by AgentID and the node named in
// its certificate, see AgentNode). Rotator keeps one workload's SVID fresh,
// renewing before half of its lifetime has passed (or following SPIRE's own
// renewals), and hands every new SVID to every subscriber.
//
// AgentCert is a node agent's own credentials for its mTLS connection to
// meshd (an x509svid.Source and x509bundle.Source, so every handshake uses
// the current ones): certificate files re-read when they change, or a
// certificate bootstrapped from meshd's CreateCertificate with a bearer
// token (no client certificate yet) and renewed at half its lifetime over
// mTLS with the still-valid one (and the token: where tokens are in use,
// CertService renews the agent identity only for a valid token of the same
// node), the token alone once it has expired. The roots file is re-read
// when it changes.
//
// The package does not log: errors are returned, wrapped with %w, and
// long-running parts report through callbacks. The CA reads time through
// CAConfig.Now; the Rotator's tests run in a testing/synctest bubble. Both
// keep the tests deterministic.
package identity
