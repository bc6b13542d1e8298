// Package xds is the fourth stage of the nodemesh pipeline:
//
//	sources -> config -> translate -> xds -> nodeagent / proxyless gRPC
//
// It serves Envoy v3 resources, and the node agent's dataplane resources
// (api/dataplane/v1), over ADS (State of the World and Delta on one gRPC
// server) from go-control-plane's SnapshotCache. For every connected node
// it asks a Source (config store + translators, wired in by meshd) for a
// NodeConfig, checks it, hashes each resource type into a content version
// (so versions survive a restart), and sets a snapshot only when a version
// changed: an unchanged node is never pushed. A snapshot that fails its
// check is not set: the node keeps the previous one and the error shows in
// sync status and metrics. Changes are debounced, and nodes are rebuilt on
// a small worker pool, translating once per distinct proxy.
//
// It tracks, per node and type URL, the version sent, the version ACKed and
// the last NACK (a *NACKError carrying the proxy's error detail), and serves
// them on debug HTTP endpoints (/debug/syncz, /debug/config_dump,
// /debug/diagnostics, /metrics, /healthz, /readyz). A NACKed SotW version
// is not sent again; the next push is the next new version.
//
// Node identity (the xDS Node message a client sends):
//
//   - the shared Envoy and the node agent of a Kubernetes node send
//     node.id = the node name and no NODEMESH_PROXY metadata (or
//     NODEMESH_PROXY=envoy); they share one snapshot and each subscribes to
//     its own types;
//   - a proxyless gRPC client sends any unique node.id with metadata
//     NODEMESH_PROXY=grpc and NAMESPACE=<its namespace>, and optionally
//     NODE_NAME=<the Kubernetes node it runs on>.
//
// ControlPlane (controlplane.go) is the whole of meshd: file source ->
// config store -> xds server, with the gRPC and debug listeners.
package xds
