// Package envoy runs the node's shared Envoy, the L7 half of the node agent
// in the nodemesh pipeline:
//
//	sources -> config -> translate -> xds -> nodeagent/ads -> nodeagent (bpf maps)
//	                                     \-> nodeagent/envoy (shared Envoy)
//
// One Envoy per node serves every namespace with pods on the node, through
// listeners of each namespace's own (LDS/RDS/CDS/EDS/SDS from the control
// plane, including per-namespace connection limits and stat prefixes). This
// package gives it:
//
//   - Bootstrap (bootstrap.go): node id = node name, ADS (Delta) to the agent
//     over a unix socket, admin on 127.0.0.1, overload manager (heap monitor
//     and actions, global downstream connection limit), layered runtime.
//   - Proxy (proxy.go): the agent's local xDS server on that unix socket. It
//     forwards each Envoy ADS stream (SotW or Delta) to the control plane
//     over the agent's own gRPC connection, so Envoy needs no credentials and
//     the node has one authenticated identity towards the control plane.
//   - Supervisor (supervisor.go): starts `envoy -c <bootstrap>` when envoy is
//     on PATH, restarts it with backoff when it exits, stops it on shutdown.
//   - RunNodeProxy (nodeproxy.go): the three together, as mesh-agent runs
//     them; without an Envoy binary only the xDS socket runs.
//
// Per-namespace connection limits and stat prefixes are not in the
// bootstrap: they come with each namespace's listeners from the control
// plane. Neither are secrets: SDS flows over the same ADS stream, from the
// control plane, or, with ProxyConfig.Secrets (a SecretProvider: the node
// agent's workload SVIDs), answered by the proxy itself (secrets.go, SotW
// and Delta): Secret requests then never reach the control plane, a
// change of the provider's secrets is pushed, a secret the provider does
// not have is never served, and every other type is still forwarded. The
// local answers share the Envoy stream, so they stop when the control
// plane stream does (Envoy reconnects and keeps its secrets meanwhile).
package envoy
