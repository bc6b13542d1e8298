// Package xds is the fourth stage of the nodemesh pipeline:
//
//	sources -> config -> translate -> xds -> nodeagent / proxyless gRPC
//
// It serves Envoy v3 resources over ADS (State of the World and Delta on one
// gRPC server) from go-control-plane's SnapshotCache. For every connected
// node it asks a Source (config store + translator, wired in by meshd) for a
// NodeConfig, checks it, hashes each resource type into a content version,
// and sets a snapshot only when a version changed; so an unchanged node is
// never pushed. A snapshot that fails its check is not set: the node keeps
// the previous one and the error shows in sync status and metrics.
//
// It tracks, per node and type URL, the version sent, the version ACKed and
// the last NACK (a *NACKError carrying the proxy's error detail), and serves
// them on debug HTTP endpoints (/debug/syncz, /debug/config_dump,
// /debug/diagnostics, /metrics, /healthz, /readyz).
//
// Node identity (the xDS Node message a client sends):
//
//   - the shared Envoy / node agent of a Kubernetes node sends node.id = the
//     node name and no NODEMESH_PROXY metadata (or NODEMESH_PROXY=envoy);
//   - a proxyless gRPC client sends any unique node.id with metadata
//     NODEMESH_PROXY=grpc and NAMESPACE=<its namespace>, and optionally
//     NODE_NAME=<the Kubernetes node it runs on>.
//
// ControlPlane (controlplane.go) is the whole of meshd: file source ->
// config store -> xds server, with the gRPC and debug listeners.
package xds
