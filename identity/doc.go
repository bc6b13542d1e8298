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
// Two issuers implement the same Source interface:
//   - CA, the built-in certificate authority: a self-signed ECDSA P-256 root
//     generated on first start and persisted, or a plugged-in root and
//     intermediate in Istio's cacerts layout; root rotation keeps the old root
//     in the trust bundle during the overlap;
//   - SPIRE, a SPIRE agent used as the upstream: the agent's own SVID through
//     the Workload API and the SVIDs of the node's workloads through SPIRE's
//     Delegated Identity API.
//
// CertService serves Istio's IstioCertificateService.CreateCertificate over
// mTLS with a pluggable Authorizer; Rotator re-issues an SVID before half of
// its lifetime has passed and hands every new one to its subscribers.
//
// The package does not log: errors are returned, wrapped with %w. Time is
// read through Config.Now where a Config has one, so tests are deterministic.
package identity
