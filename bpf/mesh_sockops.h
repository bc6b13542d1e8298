/* sockops: records the original destination of redirected sockets under
 * their 4-tuple once the source port is bound, and inserts accelerated
 * same-node sockets into sock_hash. sk_msg: short-circuits sends between two
 * accelerated local sockets. cgroup/getsockopt: answers SO_ORIGINAL_DST on
 * the proxy's accepted socket. Included by mesh.c. */

/* remote_port in sock_ops/sk_msg holds the network-order port in the upper
 * 16 bits on little-endian kernels; older kernels used the lower 16. */
static __always_inline __u16 remote_port16(__u32 rp)
{
	return (__u16)((rp >> 16) | (rp & 0xffff));
}

static __always_inline void ops_tuple(struct bpf_sock_ops *skops, struct tuple *t)
{
	if (skops->family == AF_INET) {
		addr_from4(&t->src, LOAD(skops->local_ip4));
		addr_from4(&t->dst, LOAD(skops->remote_ip4));
	} else {
		t->src.a[0] = LOAD(skops->local_ip6[0]);
		t->src.a[1] = LOAD(skops->local_ip6[1]);
		t->src.a[2] = LOAD(skops->local_ip6[2]);
		t->src.a[3] = LOAD(skops->local_ip6[3]);
		t->dst.a[0] = LOAD(skops->remote_ip6[0]);
		t->dst.a[1] = LOAD(skops->remote_ip6[1]);
		t->dst.a[2] = LOAD(skops->remote_ip6[2]);
		t->dst.a[3] = LOAD(skops->remote_ip6[3]);
	}
	t->sport = bpf_htons((__u16)skops->local_port);
	t->dport = remote_port16(skops->remote_port);
}

static __always_inline int local_accelerated(struct addr *ip)
{
	struct endpoint_info *ei = bpf_map_lookup_elem(&workloads, ip);
	struct ns_info *ns;
	__u32 id;

	if (!ei || !(ei->flags & EP_F_LOCAL) || !ei->ns)
		return 0;
	id = ei->ns;
	ns = bpf_map_lookup_elem(&namespaces, &id);
	return ns && (ns->flags & NS_F_ACCELERATE);
}

static __always_inline void maybe_accelerate(struct bpf_sock_ops *skops, struct tuple *t)
{
	/* Both ends must be local workloads of accelerated namespaces: a
	 * socket whose peer is elsewhere would have its sends dropped. */
	__u8 one = 1;

	if (!local_accelerated(&t->src) || !local_accelerated(&t->dst))
		return;
	if (bpf_sock_hash_update(skops, &sock_hash, t, BPF_NOEXIST) == 0) {
		bpf_map_update_elem(&accel_peers, t, &one, BPF_ANY);
		bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
	}
}

SEC("sockops")
int sock_ops(struct bpf_sock_ops *skops)
{
	struct tuple t = {};
	__u64 cookie;
	struct rev_value *ov;

	if (skops->family != AF_INET && skops->family != AF_INET6)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		ops_tuple(skops, &t);
		cookie = bpf_get_socket_cookie(skops);
		ov = bpf_map_lookup_elem(&orig_by_cookie, &cookie);
		if (ov) {
			struct rev_value v = *ov;

			bpf_map_update_elem(&orig_by_tuple, &t, &v, BPF_ANY);
			bpf_map_delete_elem(&orig_by_cookie, &cookie);
		}
		maybe_accelerate(skops, &t);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		ops_tuple(skops, &t);
		maybe_accelerate(skops, &t);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE) {
			ops_tuple(skops, &t);
			bpf_map_delete_elem(&accel_peers, &t);
		}
		break;
	}
	return 1;
}

SEC("sk_msg")
int sk_msg_redirect(struct sk_msg_md *msg)
{
	struct tuple peer = {};

	/* The peer's own key is our tuple reversed. */
	if (msg->family == AF_INET) {
		addr_from4(&peer.src, LOAD(msg->remote_ip4));
		addr_from4(&peer.dst, LOAD(msg->local_ip4));
	} else {
		peer.src.a[0] = LOAD(msg->remote_ip6[0]);
		peer.src.a[1] = LOAD(msg->remote_ip6[1]);
		peer.src.a[2] = LOAD(msg->remote_ip6[2]);
		peer.src.a[3] = LOAD(msg->remote_ip6[3]);
		peer.dst.a[0] = LOAD(msg->local_ip6[0]);
		peer.dst.a[1] = LOAD(msg->local_ip6[1]);
		peer.dst.a[2] = LOAD(msg->local_ip6[2]);
		peer.dst.a[3] = LOAD(msg->local_ip6[3]);
	}
	peer.sport = remote_port16(msg->remote_port);
	peer.dport = bpf_htons((__u16)msg->local_port);
	/* Redirect only once the peer is in the hash (it may not be yet during
	 * the handshake): a failed redirect would drop the data. sk_msg cannot
	 * release a socket looked up in sock_hash, so accel_peers shadows it. */
	if (!bpf_map_lookup_elem(&accel_peers, &peer))
		return SK_PASS;
	return bpf_msg_redirect_hash(msg, &sock_hash, &peer, BPF_F_INGRESS);
}

SEC("cgroup/getsockopt")
int getsockopt_origdst(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct tuple t = {};
	struct rev_value *v;

	if (ctx->optname != SO_ORIGINAL_DST || (ctx->level != SOL_IP && ctx->level != SOL_IPV6))
		return 1;
	if (!sk)
		return 1;
	/* This is the proxy's accepted socket: its peer is the client. */
	if (sk->family == AF_INET) {
		addr_from4(&t.src, LOAD(sk->dst_ip4));
		addr_from4(&t.dst, LOAD(sk->src_ip4));
	} else {
		t.src.a[0] = LOAD(sk->dst_ip6[0]);
		t.src.a[1] = LOAD(sk->dst_ip6[1]);
		t.src.a[2] = LOAD(sk->dst_ip6[2]);
		t.src.a[3] = LOAD(sk->dst_ip6[3]);
		t.dst.a[0] = LOAD(sk->src_ip6[0]);
		t.dst.a[1] = LOAD(sk->src_ip6[1]);
		t.dst.a[2] = LOAD(sk->src_ip6[2]);
		t.dst.a[3] = LOAD(sk->src_ip6[3]);
	}
	t.sport = sk->dst_port;
	t.dport = bpf_htons((__u16)sk->src_port);
	v = bpf_map_lookup_elem(&orig_by_tuple, &t);
	if (!v)
		return 1;
	if (ctx->level == SOL_IP) {
		struct sockaddr_in *sa = ctx->optval;

		if (!addr_is4(&v->ip) || (void *)(sa + 1) > ctx->optval_end)
			return 1;
		__builtin_memset(sa, 0, sizeof(*sa));
		sa->sin_family = AF_INET;
		sa->sin_port = v->port;
		sa->sin_addr.s_addr = v->ip.a[3];
		ctx->optlen = sizeof(*sa);
	} else {
		struct sockaddr_in6 *sa6 = ctx->optval;

		if ((void *)(sa6 + 1) > ctx->optval_end)
			return 1;
		__builtin_memset(sa6, 0, sizeof(*sa6));
		sa6->sin6_family = AF_INET6;
		sa6->sin6_port = v->port;
		sa6->sin6_addr.in6_u.u6_addr32[0] = v->ip.a[0];
		sa6->sin6_addr.in6_u.u6_addr32[1] = v->ip.a[1];
		sa6->sin6_addr.in6_u.u6_addr32[2] = v->ip.a[2];
		sa6->sin6_addr.in6_u.u6_addr32[3] = v->ip.a[3];
		ctx->optlen = sizeof(*sa6);
	}
	ctx->retval = 0;
	return 1;
}
