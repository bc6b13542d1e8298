package nodeagent

import (
	"fmt"
	"net/netip"
	"strings"
)

// State is the desired in-kernel state of one node: what the ADS client
// (nodeagent/ads) or a YAML file (mesh-agent --state) hands to
// Dataplane.Apply. It is plain data; its JSON/YAML names are the field tags.
// Order of the slices does not matter: Apply sorts what it needs.
type State struct {
	Services   []Service      `json:"services,omitempty"`
	Workloads  []Workload     `json:"workloads,omitempty"`
	Policies   []PolicyRule   `json:"policies,omitempty"`
	Redirects  []Redirect     `json:"redirects,omitempty"`
	Accelerate []Acceleration `json:"accelerate,omitempty"`
}

// Service is one (VIP, port, protocol) with its backends.
type Service struct {
	VIP      netip.Addr `json:"vip"`
	Port     uint16     `json:"port"`
	Proto    Proto      `json:"proto"`
	Backends []Backend  `json:"backends,omitempty"`
	// L7ProxyPort != 0 marks the service as L7: a TCP connect from a
	// workload is redirected to the node proxy instead of a backend. The
	// target is the Redirect of the client's namespace; when that namespace
	// has none, the node default Redirect (Namespace "") with this port.
	// With no Redirect at all the connect is load balanced as usual.
	L7ProxyPort uint16 `json:"l7ProxyPort,omitempty"`
}

// Backend is one endpoint of a service. When any backend of a service has a
// Weight, backends are picked in proportion to their weights (0 = never);
// when all are 0, evenly.
type Backend struct {
	IP     netip.Addr `json:"ip"`
	Port   uint16     `json:"port"`
	Weight uint32     `json:"weight,omitempty"`
}

// Workload is a pod (or the node itself) known to the policy engine.
//
// The kernel finds the identity of a connecting client by its cgroup first
// (Cgroup or CgroupID: a pod's socket has no source address yet at connect
// time), or the nearest ancestor of it that is a workload's (a process in a
// container cgroup below the pod's counts as the pod), then by the socket's
// bound source address; the destination, and the source of packets arriving
// at a local pod, are found by IP. Give local pods their cgroup, never one
// that holds other workloads' cgroups (such as the node's); give remote pods
// only IP, Identity and Namespace.
type Workload struct {
	IP        netip.Addr `json:"ip"`
	Identity  uint32     `json:"identity"` // 0 and 1 are reserved (unknown, host)
	Namespace string     `json:"namespace,omitempty"`
	// Local is true for pods running on this node (required for
	// acceleration).
	Local bool `json:"local,omitempty"`
	// Cgroup is the pod's cgroup v2 directory (absolute path); Apply
	// resolves it to CgroupID. A cgroup that no longer exists is skipped
	// with a warning.
	Cgroup   string `json:"cgroup,omitempty"`
	CgroupID uint64 `json:"cgroupID,omitempty"`
}

// Reserved identities.
const (
	IdentityUnknown uint32 = 0 // a source that is not a known workload
	IdentityHost    uint32 = 1 // the node (its proxy); bypasses L4 policy
)

// PolicyRule is one L4 rule on a destination identity. SrcIdentity 0, Port 0
// and Proto 0 are wildcards. Semantics per destination identity: no rule ->
// everything allowed; at least one Allow rule -> default deny, only matching
// Allow rules pass; a matching Deny rule always wins.
type PolicyRule struct {
	DstIdentity uint32  `json:"dstIdentity"`
	SrcIdentity uint32  `json:"srcIdentity,omitempty"`
	Port        uint16  `json:"port,omitempty"`
	Proto       Proto   `json:"proto,omitempty"`
	Verdict     Verdict `json:"verdict"`
}

// Redirect is the node proxy listener of a namespace: L7 services reached
// by workloads of that namespace connect here. Namespace "" is the node
// default; its ProxyPort may be 0 to mean "the service's L7ProxyPort".
type Redirect struct {
	Namespace string     `json:"namespace,omitempty"`
	ProxyIP   netip.Addr `json:"proxyIP"`
	ProxyPort uint16     `json:"proxyPort,omitempty"`
}

// Acceleration enables the same-node sk_msg short-circuit for connections
// between two local workloads whose namespaces are BOTH accelerated.
//
// SpliceSafe must be true, or Apply refuses: it is the operator's statement
// that no workload of the namespace reads from a TCP socket with splice(2) -
// data redirected by sk_msg never reaches splice, so such a reader hangs.
// Go's io.Copy between two TCP connections (tcp proxies, port forwarders),
// HAProxy/nginx with splicing enabled and anything using sendfile/splice
// from a socket are NOT safe; ordinary request/response servers and clients
// (net/http, gRPC) are.
type Acceleration struct {
	Namespace  string `json:"namespace"`
	SpliceSafe bool   `json:"spliceSafe"`
}

// Proto is an IP protocol number.
type Proto uint8

// Protocols.
const (
	ProtoAny Proto = 0 // policy wildcard
	TCP      Proto = 6
	UDP      Proto = 17
)

func (p Proto) String() string {
	switch p {
	case ProtoAny:
		return "ANY"
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// MarshalText writes TCP, UDP or ANY.
func (p Proto) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads TCP, UDP, ANY or "" (case-insensitive).
func (p *Proto) UnmarshalText(b []byte) error {
	switch strings.ToUpper(string(b)) {
	case "", "ANY":
		*p = ProtoAny
	case "TCP":
		*p = TCP
	case "UDP":
		*p = UDP
	default:
		return fmt.Errorf("unknown protocol %q (want TCP or UDP)", b)
	}
	return nil
}

// Verdict is what a PolicyRule decides.
type Verdict uint8

// Verdicts.
const (
	Allow Verdict = 1
	Deny  Verdict = 2
)

func (v Verdict) String() string {
	switch v {
	case Allow:
		return "ALLOW"
	case Deny:
		return "DENY"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// MarshalText writes ALLOW or DENY.
func (v Verdict) MarshalText() ([]byte, error) { return []byte(v.String()), nil }

// UnmarshalText reads ALLOW or DENY (case-insensitive).
func (v *Verdict) UnmarshalText(b []byte) error {
	switch strings.ToUpper(string(b)) {
	case "ALLOW":
		*v = Allow
	case "DENY":
		*v = Deny
	default:
		return fmt.Errorf("unknown verdict %q (want ALLOW or DENY)", b)
	}
	return nil
}

// ServiceKey names a service in counters.
type ServiceKey struct {
	VIP   netip.Addr
	Port  uint16
	Proto Proto
}

func (k ServiceKey) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(k.VIP, k.Port), k.Proto)
}

// Key returns the service's counter key.
func (s Service) Key() ServiceKey { return ServiceKey{VIP: s.VIP, Port: s.Port, Proto: s.Proto} }
