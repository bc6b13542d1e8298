package ads

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"slices"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/bpf"
	"github.com/nodemesh/nodemesh/nodeagent"
)

// DefaultL7Port marks an L7 service whose own namespace has no listener on
// this node. Only the marker matters to the kernel: the port used is the
// Redirect of the client's namespace.
const DefaultL7Port = 15001

// StateConfig says how the node's resources become a kernel State.
type StateConfig struct {
	// Node is this node's name: workloads with this node are Local.
	Node string
	// ProxyIP is the address the node's shared Envoy listens on, as seen
	// from pods (the node IP); L7 connects are redirected to it. Required
	// when any NamespaceListener is present.
	ProxyIP netip.Addr
	// PodCgroup returns the cgroup v2 directory of a local pod ("" when
	// unknown); the kernel identifies connecting clients by cgroup. nil
	// means identities by IP only.
	PodCgroup func(namespace, pod string) string
}

// ToState converts the node's dataplane resources into the kernel half's
// State. Its errors name the resource and field ("service shop/web:80/TCP:
// vips[1]: ..."), are the same for the same input (resources are then
// visited in name order), and the ADS client sends them as the NACK. The
// order of the State's slices is unspecified (the kernel half sorts what it
// needs; compare with State.Canonical).
func ToState(res *Resources, cfg StateConfig) (nodeagent.State, error) {
	return NewConverter(cfg).Convert(res)
}

// Converter is ToState with memory: it keeps the conversion of each service
// (the bulk of a node's state: VIPs and backends) and redoes only those
// whose resource or namespace listener port changed, so that one endpoint
// change costs little more than assembling the State. Not safe for
// concurrent use.
type Converter struct {
	cfg      StateConfig
	services map[string]serviceEntry
}

type serviceEntry struct {
	msg *dataplanev1.Service // the client replaces messages on update, never mutates them
	l7  uint16
	out []nodeagent.Service
}

// NewConverter returns a Converter for cfg.
func NewConverter(cfg StateConfig) *Converter {
	return &Converter{cfg: cfg, services: map[string]serviceEntry{}}
}

// Convert is ToState, reusing earlier service conversions.
func (c *Converter) Convert(res *Resources) (nodeagent.State, error) {
	// Fast path in map order; on an error, again in name order so that the
	// message (which resource clashes with which) is deterministic.
	st, err := c.convert(res, false)
	if err != nil {
		_, err = c.convert(res, true)
		return nodeagent.State{}, err
	}
	return st, nil
}

func (c *Converter) convert(res *Resources, sorted bool) (nodeagent.State, error) {
	var st nodeagent.State
	var errs []error
	listeners := map[string]string{} // namespace -> resource name
	for _, name := range keysOf(res.Listeners, sorted) {
		errs = append(errs, addListener(&st, c.cfg, listeners, name, res.Listeners[name]))
	}
	ips := map[netip.Addr]string{}
	for _, name := range keysOf(res.Workloads, sorted) {
		errs = append(errs, addWorkload(&st, c.cfg, ips, name, res.Workloads[name]))
	}
	l7Ports := map[string]uint16{}
	for _, r := range st.Redirects {
		l7Ports[r.Namespace] = r.ProxyPort
	}
	keys := make(map[nodeagent.ServiceKey]string, len(res.Services))
	st.Services = make([]nodeagent.Service, 0, len(res.Services))
	for _, name := range keysOf(res.Services, sorted) {
		errs = append(errs, c.addService(&st, keys, l7Ports, name, res.Services[name]))
	}
	for name := range c.services {
		if _, ok := res.Services[name]; !ok {
			delete(c.services, name)
		}
	}
	rules := map[policyKey]nodeagent.Verdict{}
	for _, name := range keysOf(res.Policies, sorted) {
		errs = append(errs, addPolicy(rules, name, res.Policies[name]))
	}
	st.Policies = sortedRules(rules)
	if err := errors.Join(errs...); err != nil {
		return nodeagent.State{}, err
	}
	return st, nil
}

// addService appends the kernel services of one resource (one per VIP),
// converting it only when it changed since the last Convert.
func (c *Converter) addService(st *nodeagent.State, keys map[nodeagent.ServiceKey]string, l7Ports map[string]uint16, name string, s *dataplanev1.Service) error {
	var l7 uint16
	if s.GetL7() {
		l7 = l7Ports[s.GetNamespace()]
		if l7 == 0 {
			l7 = DefaultL7Port
		}
	}
	e, ok := c.services[name]
	if !ok || e.msg != s || e.l7 != l7 {
		out, err := convertService(name, s, l7)
		if err != nil {
			delete(c.services, name)
			return err
		}
		e = serviceEntry{msg: s, l7: l7, out: out}
		c.services[name] = e
	}
	for _, svc := range e.out {
		if other, ok := keys[svc.Key()]; ok {
			return fmt.Errorf("service %s: %s is also served by service %s", name, svc.Key(), other)
		}
		keys[svc.Key()] = name
	}
	st.Services = append(st.Services, e.out...)
	return nil
}

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
		cgroup = cfg.PodCgroup(w.GetNamespace(), w.GetName())
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

// convertService builds the kernel services of one resource, one per VIP;
// l7 is the L7ProxyPort marker (0 for a plain L4 service).
func convertService(name string, s *dataplanev1.Service, l7 uint16) ([]nodeagent.Service, error) {
	errf := func(format string, args ...any) error {
		return fmt.Errorf("service %s: "+format, append([]any{name}, args...)...)
	}
	port, err := port16(s.GetPort())
	if err != nil || port == 0 {
		return nil, errf("port: %d is not a port", s.GetPort())
	}
	proto, err := protocol(s.GetProtocol(), nodeagent.TCP)
	if err != nil {
		return nil, errf("protocol: %w", err)
	}
	if len(s.GetVips()) == 0 {
		return nil, errf("vips: empty")
	}
	if n := len(s.GetBackends()); n > bpf.MaxSlots {
		return nil, errf("backends: %d is more than %d", n, bpf.MaxSlots)
	}
	backends := make([]nodeagent.Backend, 0, len(s.GetBackends()))
	seenBackend := make(map[netip.AddrPort]bool, len(s.GetBackends()))
	var total [2]uint64 // weight sums per family (IPv4, IPv6)
	for i, b := range s.GetBackends() {
		ip, err := netip.ParseAddr(b.GetIp())
		if err != nil {
			return nil, errf("backends[%d].ip: %q is not an IP address", i, b.GetIp())
		}
		bport, err := port16(b.GetPort())
		if err != nil || bport == 0 {
			return nil, errf("backends[%d].port: %d is not a port", i, b.GetPort())
		}
		weight := b.GetWeight()
		if weight == 0 {
			weight = 1 // the API's "0 means 1"; the kernel's 0 means never
		}
		ip = ip.Unmap()
		ap := netip.AddrPortFrom(ip, bport)
		if seenBackend[ap] {
			continue // the same endpoint listed twice (two EndpointSlices): once is enough
		}
		seenBackend[ap] = true
		fam := 0
		if !ip.Is4() {
			fam = 1
		}
		if total[fam] += uint64(weight); total[fam] > math.MaxUint32 {
			return nil, errf("backends[%d].weight: the total weight overflows 32 bits", i)
		}
		backends = append(backends, nodeagent.Backend{IP: ip, Port: bport, Weight: weight})
	}
	out := make([]nodeagent.Service, 0, len(s.GetVips()))
	seen := map[netip.Addr]int{}
	for i, v := range s.GetVips() {
		vip, err := netip.ParseAddr(v)
		if err != nil {
			return nil, errf("vips[%d]: %q is not an IP address", i, v)
		}
		vip = vip.Unmap()
		if j, dup := seen[vip]; dup {
			return nil, errf("vips[%d]: %s duplicates vips[%d]", i, vip, j)
		}
		seen[vip] = i
		svc := nodeagent.Service{VIP: vip, Port: port, Proto: proto, L7ProxyPort: l7}
		// A dual-stack service: each VIP gets the backends of its family.
		for _, b := range backends {
			if b.IP.Is4() == vip.Is4() {
				svc.Backends = append(svc.Backends, b)
			}
		}
		out = append(out, svc)
	}
	return out, nil
}

type policyKey struct {
	dst, src uint32
	port     uint16
	proto    nodeagent.Proto
}

// addPolicy expands a policy into kernel rules: every selected identity x
// source x port. A DENY wins over an ALLOW with the same key. An ALLOW
// policy with no rules allows nothing (Istio semantics): it becomes an
// ALLOW for the host identity only, which turns on default deny for the
// selected workloads while matching no workload.
func addPolicy(rules map[policyKey]nodeagent.Verdict, name string, p *dataplanev1.Policy) error {
	errf := func(format string, args ...any) error {
		return fmt.Errorf("policy %s: "+format, append([]any{name}, args...)...)
	}
	var verdict nodeagent.Verdict
	switch p.GetAction() {
	case dataplanev1.Action_ALLOW:
		verdict = nodeagent.Allow
	case dataplanev1.Action_DENY:
		verdict = nodeagent.Deny
	default:
		return errf("action: %s is not ALLOW or DENY", p.GetAction())
	}
	for i, dst := range p.GetSelected() {
		if dst == nodeagent.IdentityUnknown {
			return errf("selected[%d]: identity 0 is reserved", i)
		}
	}
	add := func(k policyKey) {
		if old, ok := rules[k]; !ok || old != nodeagent.Deny {
			rules[k] = verdict
		}
	}
	if n := policySize(p); n > MaxPolicyRules {
		return errf("expands to %d kernel rules (selected x sources x ports), more than %d", n, MaxPolicyRules)
	}
	if len(p.GetRules()) == 0 && verdict == nodeagent.Allow {
		for _, dst := range p.GetSelected() {
			add(policyKey{dst: dst, src: nodeagent.IdentityHost})
		}
		return nil
	}
	for ri, r := range p.GetRules() {
		proto, err := protocol(r.GetProtocol(), nodeagent.ProtoAny)
		if err != nil {
			return errf("rules[%d].protocol: %w", ri, err)
		}
		srcs := r.GetSources()
		if len(srcs) == 0 {
			srcs = []uint32{0}
		}
		ports := make([]uint16, 0, len(r.GetPorts()))
		for pi, pv := range r.GetPorts() {
			port, err := port16(pv)
			if err != nil || port == 0 {
				return errf("rules[%d].ports[%d]: %d is not a port", ri, pi, pv)
			}
			ports = append(ports, port)
		}
		if len(ports) == 0 {
			ports = []uint16{0}
		}
		for _, dst := range p.GetSelected() {
			for _, src := range srcs {
				for _, port := range ports {
					add(policyKey{dst: dst, src: src, port: port, proto: proto})
				}
			}
		}
	}
	return nil
}

// MaxPolicyRules bounds the kernel rules one policy may expand to, so that
// a broken resource cannot make the agent build an unbounded rule set.
const MaxPolicyRules = 1 << 20

// policySize is the number of kernel rules p expands to.
func policySize(p *dataplanev1.Policy) int {
	n := 0
	for _, r := range p.GetRules() {
		n += max(len(r.GetSources()), 1) * max(len(r.GetPorts()), 1)
		if n > MaxPolicyRules {
			return n * len(p.GetSelected())
		}
	}
	return n * len(p.GetSelected())
}

func sortedRules(rules map[policyKey]nodeagent.Verdict) []nodeagent.PolicyRule {
	keys := slices.SortedFunc(maps.Keys(rules), func(a, b policyKey) int {
		return cmp.Or(cmp.Compare(a.dst, b.dst), cmp.Compare(a.src, b.src), cmp.Compare(a.port, b.port), cmp.Compare(a.proto, b.proto))
	})
	out := make([]nodeagent.PolicyRule, 0, len(keys))
	for _, k := range keys {
		out = append(out, nodeagent.PolicyRule{DstIdentity: k.dst, SrcIdentity: k.src, Port: k.port, Proto: k.proto, Verdict: rules[k]})
	}
	return out
}

func protocol(p dataplanev1.Protocol, unspecified nodeagent.Proto) (nodeagent.Proto, error) {
	switch p {
	case dataplanev1.Protocol_PROTOCOL_UNSPECIFIED:
		return unspecified, nil
	case dataplanev1.Protocol_TCP:
		return nodeagent.TCP, nil
	case dataplanev1.Protocol_UDP:
		return nodeagent.UDP, nil
	}
	return 0, fmt.Errorf("%d is not TCP or UDP", int32(p))
}

func port16(p uint32) (uint16, error) {
	if p > 65535 {
		return 0, fmt.Errorf("port %d out of range", p)
	}
	return uint16(p), nil
}

func keysOf[V any](m map[string]V, sorted bool) []string {
	if sorted {
		return slices.Sorted(maps.Keys(m))
	}
	return slices.AppendSeq(make([]string, 0, len(m)), maps.Keys(m))
}

// Dataplane is the kernel half as the ADS client needs it
// (*nodeagent.Dataplane).
type Dataplane interface {
	Apply(ctx context.Context, s nodeagent.State) (nodeagent.Stats, error)
}

// DataplaneApplier is the Applier that programs the kernel: it converts the
// resources with ToState and applies the State. Either error is NACKed; the
// kernel writes nothing when the State does not validate.
type DataplaneApplier struct {
	dataplane Dataplane
	conv      *Converter
}

// NewDataplaneApplier returns the Applier that programs dp.
func NewDataplaneApplier(dp Dataplane, cfg StateConfig) *DataplaneApplier {
	return &DataplaneApplier{dataplane: dp, conv: NewConverter(cfg)}
}

// Apply converts and applies res. The ADS client calls it from one
// goroutine.
func (a *DataplaneApplier) Apply(ctx context.Context, res *Resources) error {
	st, err := a.conv.Convert(res)
	if err != nil {
		return err
	}
	if _, err := a.dataplane.Apply(ctx, st); err != nil {
		return fmt.Errorf("applying dataplane state: %w", err)
	}
	return nil
}
