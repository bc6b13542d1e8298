// Package bpf holds nodemesh's in-kernel data plane: the eBPF C programs
// (mesh.c and the headers next to it), the Go bindings bpf2go generates from
// them (mesh_bpfel.go and mesh_bpfel.o, committed so that a machine without
// clang still builds), and small typed helpers to build map keys and values
// from netip types.
//
// It sits at the bottom of the pipeline: nodeagent turns the desired
// dataplane state it receives from the control plane into writes to these
// maps. This package imports only cilium/ebpf and the standard library, and
// does not log.
//
// Programs (all attached to a cgroup v2 directory, usually the node's):
//   - connect4/6, sendmsg4/6: service VIP:port -> backend (TCP and UDP),
//     weighted or even selection, L7 redirect to the node proxy, L4 policy at
//     connect (refused connects fail with EPERM);
//   - getpeername4/6, recvmsg4/6: show the VIP, not the backend;
//   - sock_ops + getsockopt_origdst: SO_ORIGINAL_DST for redirected sockets;
//   - sock_ops + sk_msg_redirect: opt-in same-node acceleration (SOCKHASH);
//   - ingress_policy (cgroup_skb/ingress): L4 policy at the destination;
//   - egress_flows (cgroup_skb/egress): remembers UDP peers for replies.
//
// All addresses in the maps are 16 bytes, IPv4 stored IPv4-mapped as
// netip.Addr.As16 returns it, so IPv4 and IPv6 share every map.
//
// Maps (written by the agent): services (VIP, port, proto, slot) -> slot 0
// {count, total weight, flags, L7 proxy port} and slots 1..count {backend
// id, cumulative weight}, 2M entries; backends id -> {ip, port}, 1M;
// workloads ip -> {identity, namespace id, flags}; cgroup_workloads cgroup
// id -> the same; namespaces id -> {flags, name}; redirects namespace id ->
// proxy {ip, port}; policy {dst identity, src identity, port, proto} ->
// verdict; policy_mode dst identity -> default deny; meta -> schema version.
// Written by the programs: service_stats and verdict_stats (per CPU),
// rev_nat {cookie, backend} -> VIP, orig_by_cookie and orig_by_tuple (LRU),
// udp_peers {cookie, peer} (LRU), sock_hash and accel_peers.
//
// Choices worth knowing:
//   - The client of a connect is identified by its cgroup (cgroup_workloads)
//     or, failing that, its nearest ancestor there (levels 1..16: a
//     kubelet's container cgroups sit below the mapped pod cgroup), then by
//     the socket's bound source address: a pod's socket has no source
//     address yet when connect4 runs.
//   - Weighted selection: bpf_get_prandom_u32 % total weight, then a binary
//     search over the cumulative weights of the slots (bpf_loop, 17 steps).
//   - L7 redirect: a TCP connect to a service with l7_proxy_port != 0 goes to
//     redirects[client namespace] (or redirects[0] with the service's port).
//     connect4 records the VIP under the socket cookie; sock_ops, at
//     ACTIVE_ESTABLISHED (before the proxy can accept), moves it under the
//     4-tuple {client ip:port, proxy ip:port}; getsockopt(SO_ORIGINAL_DST) on
//     the proxy's accepted socket looks that tuple up (peer = client).
//     Redirected connects skip L4 policy (the proxy enforces L7 policy).
//   - Policy: for the destination identity, any matching DENY wins (source,
//     port and protocol each exact or wildcard 0: 8 lookups); else a
//     matching ALLOW passes; else the destination's mode decides (default
//     deny once it has an ALLOW rule). Identity 1 (the host, its proxy) is
//     never refused. ingress_policy checks TCP SYNs and UDP datagrams only:
//     established flows are not cut when a policy changes. UDP has no
//     handshake, so udp_peers remembers, per socket, the peers it sent to
//     (egress_flows, cgroup_skb/egress) and those allowed in: datagrams
//     between them skip the policy both at ingress and at sendmsg (a
//     server's reply to a default-deny client); a policy change reaches
//     such a conversation only once the LRU forgets it.
//   - Acceleration: both ends must be local workloads of namespaces flagged
//     NS_F_ACCELERATE; sk_msg redirects only when the peer is already in
//     sock_hash (accel_peers shadows it, since sk_msg cannot release a
//     socket it looked up). Data redirected by sk_msg never reaches splice(2).
package bpf
