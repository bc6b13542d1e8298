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
//   - ingress_policy (cgroup_skb/ingress): L4 policy at the destination.
//
// All addresses in the maps are 16 bytes, IPv4 stored IPv4-mapped as
// netip.Addr.As16 returns it, so IPv4 and IPv6 share every map.
package bpf
