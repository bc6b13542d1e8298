// Package translate is the pure heart of nodemesh:
//
//	config snapshot + proxy -> NodeConfig (Envoy v3 resources, diagnostics)
//
// It sits between config (typed objects in a store snapshot) and xds (which
// serves NodeConfigs over ADS). It is deterministic (same input, same bytes:
// everything that leaves a map is sorted) and it never imports gRPC,
// cilium/ebpf, net or os, and never reads the clock; deps_test.go enforces
// that.
//
// # Pipeline
//
// mesh.go, services.go, workloads.go, destinationrule.go and visibility.go
// build a model without Envoy types (model.go): services (Kubernetes
// Services and ServiceEntry hosts) with VIPs, ports, protocols and
// endpoints, DestinationRule subsets and policies, Sidecar egress scopes and
// exportTo. scope.go and virtualservice.go view the model from one client
// namespace and turn VirtualServices into routes. One builder per xDS type
// then makes Envoy resources: listener.go, route.go, cluster.go,
// endpoint.go, and grpc.go for proxyless gRPC API listeners. check.go
// verifies a NodeConfig before it is served.
//
// Translate(snap, proxy) does all of it for one proxy. Prepare(snap) returns
// a Mesh whose Translate shares the per-namespace work (outbound listener,
// route configurations, clusters) between all proxies of that snapshot;
// use it when translating many nodes, and Mesh.Check, which validates
// shared resources once. PrepareNext(prev, snap) also reuses prev's
// listeners, routes and clusters when only endpoints changed
// (incremental.go).
//
// # Names and ports on the shared node Envoy
//
//   - Listeners "outbound_<ns>" and "inbound_<ns>" on the ports of
//     AllocateNamespacePorts (ports.go: FNV-1a of the namespace name into
//     4096 slots from port 20000, linear probing over the sorted namespaces
//     of the mesh; the same on every node). Stat prefixes are the listener
//     names.
//   - The outbound listener has the original_dst listener filter; HTTP
//     service ports match destination port + VIPs (or the port alone for
//     services without VIP) and go to an HttpConnectionManager with RDS
//     "outbound_<ns>_<port>"; TCP ports match port + VIPs and go to
//     tcp_proxy; anything else goes to PassthroughCluster.
//   - The inbound listener matches the namespace's local pod IPs and
//     forwards to their original destination (cluster "inbound|<ns>").
//   - Clusters are named as Istio does, "outbound|<port>|<subset>|<host>";
//     EDS over ADS, except ServiceEntries with DNS resolution.
//
// Problems in user objects never fail a translation: they become
// config.Diagnostics naming object, origin and field, and only the broken
// part (a route, a host, an object) is left out.
package translate
