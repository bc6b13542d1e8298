/* cgroup_skb/ingress: L4 identity policy at the destination for clients the
 * connect hook did not see (other nodes, the host). Attached to the cgroup
 * of the pods: it checks a TCP SYN (so a denied connection never reaches
 * accept) and UDP datagrams from peers the receiving socket does not talk
 * to yet: udp_peers {socket cookie, peer} holds the peers it sent to
 * (recorded by cgroup_skb/egress) and those already allowed in, since UDP
 * has no handshake that tells replies apart. Included by mesh.c. */

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

/* udp_peer builds the udp_peers key of the socket the skb belongs to and
 * the peer at off: the source (ingress) or destination (egress) port. */
static __always_inline int udp_peer(struct __sk_buff *skb, struct rev_key *k, struct addr *peer, __u32 port_off)
{
	k->cookie = bpf_get_socket_cookie(skb);
	k->ip = *peer;
	return k->cookie && bpf_skb_load_bytes(skb, port_off, &k->port, sizeof(k->port)) == 0;
}

static __always_inline void remember_udp_peer(struct rev_key *k)
{
	__u8 one = 1;

	if (!bpf_map_lookup_elem(&udp_peers, k))
		bpf_map_update_elem(&udp_peers, k, &one, BPF_ANY);
}

/* udp_check: a datagram from a peer this socket already talks to (it sent
 * to it, or an earlier datagram from it was allowed) passes; otherwise the
 * policy decides, and an allowed peer is remembered. */
static __always_inline int udp_check(struct __sk_buff *skb, __u32 off, struct addr *src, struct addr *dst, __u16 dport)
{
	struct rev_key k = {};
	int known = udp_peer(skb, &k, src, off);

	if (known && bpf_map_lookup_elem(&udp_peers, &k))
		return 1;
	if (!ingress_check(src, dst, dport, IPPROTO_UDP))
		return 0;
	if (known)
		remember_udp_peer(&k);
	return 1;
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
		if (ip.protocol == IPPROTO_UDP)
			return udp_check(skb, ip.ihl * 4, &src, &dst, dport);
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
		if (ip6.nexthdr == IPPROTO_UDP)
			return udp_check(skb, sizeof(ip6), &src, &dst, dport);
		return ingress_check(&src, &dst, dport, ip6.nexthdr);
	}
	return 1;
}

/* cgroup_skb/egress: remembers the peers local UDP sockets send to, so that
 * ingress_policy lets their replies in. Never drops. */
SEC("cgroup_skb/egress")
int egress_flows(struct __sk_buff *skb)
{
	struct rev_key k = {};
	struct addr peer = {};
	__u32 off;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) < 0 || ip.protocol != IPPROTO_UDP)
			return 1;
		addr_from4(&peer, ip.daddr);
		off = ip.ihl * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)) < 0 || ip6.nexthdr != IPPROTO_UDP)
			return 1;
		__builtin_memcpy(&peer, &ip6.daddr, sizeof(peer));
		off = sizeof(ip6);
	} else {
		return 1;
	}
	if (udp_peer(skb, &k, &peer, off + 2))
		remember_udp_peer(&k);
	return 1;
}
