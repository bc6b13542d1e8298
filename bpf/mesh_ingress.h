/* cgroup_skb/ingress: L4 identity policy at the destination for clients the
 * connect hook did not see (other nodes, the host). Attached to the cgroup
 * of the pods: it checks a TCP SYN (so a denied connection never reaches
 * accept) and every UDP datagram that is not a reply to a flow the local
 * socket opened: cgroup_skb/egress records those in udp_flows (UDP has no
 * handshake to tell replies apart). Included by mesh.c. */

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

static __always_inline int ingress_check(struct addr *src, struct addr *dst, __u16 dport, __u8 proto)
{
	struct endpoint_info *server = bpf_map_lookup_elem(&workloads, dst);
	struct endpoint_info *client;
	int denied;

	if (!server)
		return 1;
	client = bpf_map_lookup_elem(&workloads, src);
	denied = policy_verdict(server->identity, client ? client->identity : 0,
				bpf_ntohs(dport), proto) == VERDICT_DENY;
	count_verdict(HOOK_INGRESS, denied);
	return !denied;
}

/* udp_ports loads the source and destination ports of a UDP header. */
static __always_inline int udp_ports(struct __sk_buff *skb, __u32 off, __u16 *sport, __u16 *dport)
{
	if (bpf_skb_load_bytes(skb, off, sport, sizeof(*sport)) < 0)
		return 0;
	return bpf_skb_load_bytes(skb, off + 2, dport, sizeof(*dport)) == 0;
}

/* is_udp_reply says whether a datagram from src:sport to dst:dport answers
 * one that the local socket sent (dst:dport -> src:sport). */
static __always_inline int is_udp_reply(struct __sk_buff *skb, __u32 off, struct addr *src, struct addr *dst)
{
	struct tuple t = {};

	if (!udp_ports(skb, off, &t.dport, &t.sport))
		return 0;
	t.src = *dst;
	t.dst = *src;
	return bpf_map_lookup_elem(&udp_flows, &t) != 0;
}

/* l4_wanted loads the destination port and says whether this packet opens
 * a flow (TCP SYN without ACK, or any UDP datagram). */
static __always_inline int l4_wanted(struct __sk_buff *skb, __u32 off, __u8 proto, __u16 *dport)
{
	__u8 flags;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0;
	if (bpf_skb_load_bytes(skb, off + 2, dport, sizeof(*dport)) < 0)
		return 0;
	if (proto == IPPROTO_UDP)
		return 1;
	if (bpf_skb_load_bytes(skb, off + 13, &flags, 1) < 0)
		return 0;
	return (flags & TCP_FLAG_SYN) && !(flags & TCP_FLAG_ACK);
}

SEC("cgroup_skb/ingress")
int ingress_policy(struct __sk_buff *skb)
{
	struct addr src = {}, dst = {};
	__u16 dport = 0;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) < 0)
			return 1;
		if (!l4_wanted(skb, ip.ihl * 4, ip.protocol, &dport))
			return 1;
		addr_from4(&src, ip.saddr);
		addr_from4(&dst, ip.daddr);
		if (ip.protocol == IPPROTO_UDP && is_udp_reply(skb, ip.ihl * 4, &src, &dst))
			return 1;
		return ingress_check(&src, &dst, dport, ip.protocol);
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)) < 0)
			return 1;
		if (!l4_wanted(skb, sizeof(ip6), ip6.nexthdr, &dport))
			return 1;
		__builtin_memcpy(&src, &ip6.saddr, sizeof(src));
		__builtin_memcpy(&dst, &ip6.daddr, sizeof(dst));
		if (ip6.nexthdr == IPPROTO_UDP && is_udp_reply(skb, sizeof(ip6), &src, &dst))
			return 1;
		return ingress_check(&src, &dst, dport, ip6.nexthdr);
	}
	return 1;
}

/* cgroup_skb/egress: remembers the UDP flows local sockets open, so that
 * ingress_policy lets their replies in. Never drops. */
SEC("cgroup_skb/egress")
int egress_flows(struct __sk_buff *skb)
{
	struct tuple t = {};
	__u8 one = 1;
	__u32 off;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) < 0 || ip.protocol != IPPROTO_UDP)
			return 1;
		addr_from4(&t.src, ip.saddr);
		addr_from4(&t.dst, ip.daddr);
		off = ip.ihl * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)) < 0 || ip6.nexthdr != IPPROTO_UDP)
			return 1;
		__builtin_memcpy(&t.src, &ip6.saddr, sizeof(t.src));
		__builtin_memcpy(&t.dst, &ip6.daddr, sizeof(t.dst));
		off = sizeof(ip6);
	} else {
		return 1;
	}
	if (!udp_ports(skb, off, &t.sport, &t.dport))
		return 1;
	if (!bpf_map_lookup_elem(&udp_flows, &t))
		bpf_map_update_elem(&udp_flows, &t, &one, BPF_ANY);
	return 1;
}
