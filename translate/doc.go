// Package translate is the pure heart of nodemesh:
//
//	config snapshot + node -> NodeConfig (Envoy v3 resources, dataplane entries, diagnostics)
//
// It is deterministic (same input, same bytes: everything that leaves a map is
// sorted) and it never imports gRPC, cilium/ebpf, net or os, and never reads
// the clock; deps_test.go enforces that. It goes through a model without
// Envoy types first (model.go), then one builder per xDS type
// (listener.go, route.go, cluster.go, endpoint.go).
package translate
