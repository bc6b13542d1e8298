package ads

import (
	"fmt"
	"net/netip"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/bpf"
	"github.com/nodemesh/nodemesh/nodeagent"
)

// addListener adds the Redirect of one namespace (where the node proxy
// listens for it) and its opt-in Acceleration; seen maps each namespace to
// its listener resource, to catch two listeners for one namespace.
func addListener(st *nodeagent.State, cfg StateConfig, seen map[string]string, name string, l *dataplanev1.NamespaceListener) error {
	errf := func(format string, args ...any) error {
		return fmt.Errorf("namespace listener %s: "+format, append([]any{name}, args...)...)
	}
	if other, ok := seen[l.GetNamespace()]; ok {
		return errf("namespace %q also has namespace listener %s", l.GetNamespace(), other)
	}
	seen[l.GetNamespace()] = name
	switch {
	case l.GetNamespace() == "":
		return errf("namespace: empty")
	case len(l.GetNamespace()) >= bpf.MaxNamespaceName:
		return errf("namespace: longer than %d bytes", bpf.MaxNamespaceName-1)
	case !cfg.ProxyIP.IsValid():
		return errf("no node proxy address configured for L7 redirects")
	}
	port, err := port16(l.GetOutboundPort())
	if err != nil || port == 0 {
		return errf("outbound_port: %d is not a port", l.GetOutboundPort())
	}
	st.Redirects = append(st.Redirects, nodeagent.Redirect{Namespace: l.GetNamespace(), ProxyIP: cfg.ProxyIP, ProxyPort: port})
	if l.GetAccelerate() {
		// The control plane sets accelerate only from the operator's
		// per-namespace opt-in, which is the statement that the
		// namespace's workloads do not splice(2) from TCP sockets.
		st.Accelerate = append(st.Accelerate, nodeagent.Acceleration{Namespace: l.GetNamespace(), SpliceSafe: true})
	}
	return nil
}

// addWorkload adds one kernel workload per IP of a pod; ips maps each IP to
// its resource, to catch two pods claiming one IP.
func addWorkload(st *nodeagent.State, cfg StateConfig, ips map[netip.Addr]string, name string, w *dataplanev1.Workload) error {
	errf := func(format string, args ...any) error {
		return fmt.Errorf("workload %s: "+format, append([]any{name}, args...)...)
	}
	switch w.GetIdentity() {
	case nodeagent.IdentityUnknown, nodeagent.IdentityHost:
		return errf("identity: %d is reserved", w.GetIdentity())
	}
	if len(w.GetIps()) == 0 {
		return errf("ips: empty")
	}
	if len(w.GetNamespace()) >= bpf.MaxNamespaceName {
		return errf("namespace: longer than %d bytes", bpf.MaxNamespaceName-1)
	}
	local := w.GetNode() == cfg.Node
	cgroup := ""
	if local && cfg.PodCgroup != nil {
		cgroup = cfg.PodCgroup(w.GetNamespace(), w.GetName(), w.GetPodUid())
	}
	for i, s := range w.GetIps() {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return errf("ips[%d]: %q is not an IP address", i, s)
		}
		ip = ip.Unmap()
		if other, ok := ips[ip]; ok {
			return errf("ips[%d]: %s is also the IP of workload %s", i, ip, other)
		}
		ips[ip] = name
		st.Workloads = append(st.Workloads, nodeagent.Workload{
			IP: ip, Identity: w.GetIdentity(), Namespace: w.GetNamespace(), Local: local, Cgroup: cgroup,
		})
	}
	return nil
}
