package ads

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
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
	// unknown) from its namespace, name and UID (Workload.pod_uid; "" when
	// the control plane did not send one); the kernel identifies connecting
	// clients by cgroup. nil means identities by IP only.
	PodCgroup func(namespace, pod, uid string) string
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
