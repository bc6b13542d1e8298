// Package agent is the whole node agent, as mesh-agent runs it. It sits at
// the node end of the nodemesh pipeline and wires the node agent's parts:
//
//	xds (meshd) ==ADS==> nodeagent/ads (Client) -> Applier -> nodeagent (bpf maps)
//	            <=ADS==  nodeagent/envoy (Proxy) <- unix socket <- Envoy
//
// One gRPC connection per node goes to the control plane. On it the agent's
// ADS client holds one Delta stream for the dataplane types
// (api/dataplane/v1), and the local xDS proxy forwards the shared Envoy's
// own stream. The Applier converts each complete resource set into a
// nodeagent.State (ads.Converter), adds the node itself as a host workload
// (identity nodeagent.IdentityHost, so the node proxy reaches pods behind a
// default-deny policy) and writes it with Dataplane.Apply; the client ACKs
// only after Apply returned, and NACKs with the error otherwise.
//
// While the control plane is away the maps are left alone: the kernel keeps
// forwarding with the last applied state, and a restarted agent adopts the
// pinned maps and programs (nodeagent.Open) before its first resync. Run
// never uninstalls anything.
//
// Pod cgroups. The kernel identifies a connecting client by its cgroup (a
// socket has no source address at connect time), so the agent must know
// where each local pod's cgroup is. Config.PodCgroup answers that; by
// default (CgroupLayout) a pod's cgroup is a directory right below the
// node's CgroupPath named "<namespace>_<pod>", or, when that does not
// exist, "<pod>" (the e2e cluster's layout, whose pods are named after
// their cgroup). A pod whose cgroup is not found is identified by its IP.
//
// Envoy. With Config.EnvoySocket set, the agent writes the Envoy bootstrap
// (nodeagent/envoy.Bootstrap), serves the xDS socket, and starts Envoy
// through the supervisor when the binary is on PATH; otherwise it logs that
// Envoy is absent and keeps the socket, so an Envoy started by other means
// can connect.
//
// Status. With Config.StatusAddr set, the agent serves /status (JSON: ADS
// per-type ACK/NACK and versions, the last apply, kernel counters, Envoy
// proxy and process), /debug/ads, /debug/dataplane (a map dump),
// /healthz and /readyz (200 once the first full set was applied).
package agent
