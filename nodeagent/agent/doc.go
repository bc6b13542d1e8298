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
// where each local pod's cgroup is. Config.PodCgroup answers that from the
// pod's namespace, name and UID (Workload.pod_uid, meshd's copy of the
// pod's metadata.uid). By default (CgroupLayout) it is looked for below the
// node's CgroupPath where a kubelet puts it, named after the UID (systemd
// or cgroupfs cgroup driver, every QoS class: e.g.
// kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice
// or kubepods/besteffort/pod<uid>), then as a directory right below
// CgroupPath named "<namespace>_<pod>", or "<pod>", with no cgroup below
// it (the e2e cluster's layout, whose pods are named after their cgroup).
// A pod whose cgroup is not found is identified by its IP. The kernel
// matches the connecting process's cgroup or its nearest mapped ancestor:
// the e2e pods' processes are in the pod's cgroup, a kubelet's in
// container cgroups below it.
//
// Envoy. With Config.EnvoySocket set, the agent writes the Envoy bootstrap
// (nodeagent/envoy.Bootstrap), serves the xDS socket, and starts Envoy
// through the supervisor when the binary is on PATH; otherwise it logs that
// Envoy is absent and keeps the socket, so an Envoy started by other means
// can connect.
//
// Workload SVIDs. With Config.WorkloadSVIDs (an identity.Source: the
// built-in CA through identity.CertClient, or SPIRE's Delegated Identity
// API through identity.SPIRE) the agent keeps one SVID per service account
// with pods on the node: the Workloads of each applied resource set whose
// node is this node (a set is taken only once it is in the kernel).
// Workloads in the mesh's own namespace (identity.AgentNamespace: meshd's
// and the agents' identities) never get one, whatever they claim. How a
// service account's SVID is asked for is Config.WorkloadSVIDsBy:
//
//   - SVIDByID (the built-in CA): Workload{ID: spiffe://<td>/ns/<ns>/sa/<sa>};
//     meshd issues it only to the node of one of the account's pods.
//   - SVIDByPID (the default for identity.SPIRE): Workload{ID, PID} with
//     the PID of a live process of one of the account's pods on this node,
//     read from the pod's cgroup.procs (Config.PodCgroup, and the cgroups
//     below it: containers). SPIRE's agent attests that process itself
//     (with the k8s workload attestor: pod UID, namespace, service
//     account) and issues only entries matching it, so a node gets only
//     what its own pods may have; only an SVID with the account's ID is
//     taken. The subscription is renewed with another process when the
//     process leaves the pod's cgroup, the pod leaves the node, or no SVID
//     came for it within 30s. With no process yet (pod starting) it is
//     retried and reported in /status (lastError; process names the one
//     attested). It never falls back to selectors. The agent must see the
//     node's PIDs (hostPID), as SPIRE's agent does.
//   - SVIDBySelectors (opt-in, mesh-agent --spire-workload-selectors):
//     selectors k8s:ns:<ns> and k8s:sa:<sa>, no process. SPIRE then checks
//     nothing about the node: with entries that match on every node, every
//     node's agent can get every service account's SVID.
//
// Each SVID is renewed by an identity.Rotator before half its lifetime
// (SPIRE pushes its renewals; a failed fetch keeps the current SVID and is
// retried after WorkloadSVIDRetry, doubling up to 20s; fetches of one
// service account are never closer than WorkloadSVIDRetry); the trust
// bundle comes with each SVID and is re-read every WorkloadBundleRefresh.
// A service account's files are written by one writer at a time, always
// with its newest SVID. When the last pod of a service account leaves, its
// SVID is dropped. They go to:
//
//   - Config.WorkloadCertsDir: <dir>/<namespace>/<serviceaccount>/
//     {cert-chain.pem,key.pem,root-cert.pem} (directories 0700, key 0600),
//     each file replaced by rename on renewal and bundle change, removed on
//     drop; files of service accounts no longer on the node (left by a
//     previous run) are removed after the first applied set. These are the
//     files gRPC's file_watcher certificate provider of a proxyless
//     workload reads (translate/secure.DefaultCertProviderInstance). A pod
//     mounts its own service account's directory (hostPath); like any
//     hostPath, whoever may mount other directories of the host can take
//     the identities there. Files stay on shutdown, so pods keep valid
//     certificates while the agent restarts.
//   - Config.LocalSDS: the Envoy proxy answers the node Envoy's SDS itself
//     (envoy.SecretProvider): the SVIDs named by SPIFFE ID and the bundle as
//     a validation context named spiffe://<td>, as meshd names them. For
//     SPIRE mode, where meshd holds no keys; with the built-in CA meshd
//     serves SDS itself.
//
// Status. With Config.StatusAddr set, the agent serves /status (JSON: ADS
// per-type ACK/NACK and versions, the last apply, kernel counters, Envoy
// proxy and process, workload SVIDs per service account: serial,
// validity, renewals, last error), /debug/ads, /debug/dataplane (a map dump),
// /healthz and /readyz (200 once the first full set was applied).
package agent
