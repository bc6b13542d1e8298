/* Shared definitions of the nodemesh data plane. Every address is 16 bytes:
 * IPv4 is stored IPv4-mapped (::ffff:a.b.c.d), exactly what Go's
 * netip.Addr.As16 returns, so v4 and v6 share every map. Ports are stored in
 * network byte order unless a field says otherwise. */
#ifndef NODEMESH_MESH_H
#define NODEMESH_MESH_H

#include <linux/types.h>

/* Bump when any map layout or meaning changes (see nodeagent migration). */
#define SCHEMA_VERSION 2

#define SERVICES_MAX (1 << 21)  /* 100k (VIP,port,proto) masters + ~2M slots */
#define BACKENDS_MAX (1 << 20)  /* 1,048,576 backends */
#define SVC_STATS_MAX (1 << 17)
#define WORKLOADS_MAX (1 << 18)
#define CGROUPS_MAX (1 << 16)
#define POLICY_MAX (1 << 18)
#define POLICY_MODE_MAX (1 << 16)
#define NAMESPACES_MAX (1 << 14)
#define SOCK_LRU_MAX (1 << 18)
#define SOCKHASH_MAX (1 << 16)
#define MAX_SLOTS 65535
#define SEARCH_STEPS 17 /* binary search over up to 2^16 slots */

/* svc_value.flags (master slot 0 only). */
#define SVC_F_WEIGHTED 0x1

/* endpoint_info.flags */
#define EP_F_LOCAL 0x1 /* runs on this node */

/* ns_info.flags */
#define NS_F_ACCELERATE 0x1

/* policy verdicts */
#define VERDICT_NONE 0
#define VERDICT_ALLOW 1
#define VERDICT_DENY 2

/* policy_mode values */
#define MODE_DEFAULT_ALLOW 0
#define MODE_DEFAULT_DENY 1

/* indexes into verdict_stats: hook * 2 + (denied ? 1 : 0) */
#define HOOK_CONNECT 0
#define HOOK_SENDMSG 1
#define HOOK_INGRESS 2
#define HOOK_MAX 3

struct addr {
	__u32 a[4];
};

/* services: (VIP, port, proto, slot). Slot 0 is the master entry; slots
 * 1..count point at backends. */
struct svc_key {
	struct addr vip;
	__u16 port; /* network order */
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
	__u16 slot;
	__u16 pad2;
};

/* Master (slot 0): count = number of slots, weight = total weight,
 * flags, l7_proxy_port. Slot n: backend_id and the cumulative weight of
 * slots 1..n. */
struct svc_value {
	__u32 backend_id;
	__u32 count;
	__u32 weight;
	__u16 l7_proxy_port; /* host order; != 0 redirects to the node proxy */
	__u8 flags;
	__u8 pad;
};

struct backend {
	struct addr ip;
	__u16 port; /* network order */
	__u16 pad;
};

struct svc_stats {
	__u64 connects;
	__u64 redirects;
	__u64 no_backend;
};

/* reverse NAT for getpeername/recvmsg: keyed by the socket cookie and the
 * backend it was sent to. */
struct rev_key {
	__u64 cookie;
	struct addr ip;
	__u16 port; /* network order */
	__u16 pad[3];
};

struct rev_value {
	struct addr ip;
	__u16 port; /* network order */
	__u16 pad;
};

/* workloads (by IP) and cgroup_workloads (by cgroup id). */
struct endpoint_info {
	__u32 identity; /* 0 = unknown (world), 1 = host (bypasses L4 policy) */
	__u32 ns;       /* namespace id; 0 = none */
	__u32 flags;    /* EP_F_* */
};

struct redirect {
	struct addr ip;
	__u16 port; /* network order; 0 = use the service's l7_proxy_port */
	__u16 pad;
};

struct ns_info {
	__u32 flags;
	char name[64];
};

struct policy_key {
	__u32 dst_identity;
	__u32 src_identity; /* 0 = any */
	__u16 port;         /* host order; 0 = any */
	__u8 proto;         /* 0 = any */
	__u8 pad;
};

struct policy_value {
	__u32 verdict;
};

/* A TCP 4-tuple seen from the client: src = client, dst = server. */
struct tuple {
	struct addr src;
	struct addr dst;
	__u16 sport; /* network order */
	__u16 dport; /* network order */
	__u32 pad;
};

struct meta_value {
	__u32 schema_version;
	__u32 pad;
};

#endif
