package bpf

import (
	"encoding/binary"
	"net/netip"
	"unsafe"

	"github.com/cilium/ebpf"
)

// SchemaVersion is the layout version of the maps (SCHEMA_VERSION in
// mesh.h). The node agent stores it in the "meta" map and migrates pinned
// maps written by another version.
const SchemaVersion = 2

// Values mirrored from mesh.h (C #defines do not reach BTF). The kernel tests
// exercise each of them, so a drift fails a test.
const (
	SvcWeighted         = 0x1 // svc_value.flags: pick by cumulative weight
	EndpointLocal       = 0x1 // endpoint_info.flags: workload runs on this node
	NamespaceAccelerate = 0x1 // ns_info.flags: same-node sk_msg short-circuit

	VerdictAllow = 1
	VerdictDeny  = 2

	ModeDefaultAllow = 0
	ModeDefaultDeny  = 1

	IdentityUnknown = 0 // the source is not a known workload ("world")
	IdentityHost    = 1 // the node itself (its proxy): bypasses L4 policy

	// MaxSlots is the largest number of backends one (VIP, port, proto) holds.
	MaxSlots = 65535

	// MaxNamespaceName is the size of ns_info.name, NUL included.
	MaxNamespaceName = 64

	ServicesMax  = 1 << 21
	BackendsMax  = 1 << 20
	WorkloadsMax = 1 << 18
	PolicyMax    = 1 << 18
)

// Hooks index verdict_stats: hook*2 for allowed, hook*2+1 for denied.
const (
	HookConnect = 0
	HookSendmsg = 1
	HookIngress = 2
	HookMax     = 3
)

// Protocol numbers used in keys.
const (
	ProtoTCP = 6
	ProtoUDP = 17
)

// Addr converts an address to its map form (IPv4 is IPv4-mapped).
func Addr(ip netip.Addr) MeshAddr {
	var a MeshAddr
	// The map words hold the address bytes in memory order.
	*(*[16]byte)(unsafe.Pointer(&a.A)) = ip.As16()
	return a
}

// Netip converts back; IPv4-mapped addresses become plain IPv4.
func (a MeshAddr) Netip() netip.Addr {
	return netip.AddrFrom16(*(*[16]byte)(unsafe.Pointer(&a.A))).Unmap()
}

// NetPort turns a host-order port into the network-order value stored in a
// __u16 map field (and back: the conversion is its own inverse).
func NetPort(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

// ServiceKey builds the key of slot `slot` of a service.
func ServiceKey(vip netip.Addr, port uint16, proto uint8, slot uint16) MeshSvcKey {
	return MeshSvcKey{Vip: Addr(vip), Port: NetPort(port), Proto: proto, Slot: slot}
}

// Backend builds a backends map value.
func Backend(ip netip.Addr, port uint16) MeshBackend {
	return MeshBackend{Ip: Addr(ip), Port: NetPort(port)}
}

// AddrPort returns the backend as an address and host-order port.
func (b MeshBackend) AddrPort() netip.AddrPort {
	return netip.AddrPortFrom(b.Ip.Netip(), NetPort(b.Port))
}

// Redirect builds a redirects map value.
func Redirect(ip netip.Addr, port uint16) MeshRedirect {
	return MeshRedirect{Ip: Addr(ip), Port: NetPort(port)}
}

// AddrPort returns the redirect target; the port is 0 when the service's
// L7 proxy port is used.
func (r MeshRedirect) AddrPort() netip.AddrPort {
	return netip.AddrPortFrom(r.Ip.Netip(), NetPort(r.Port))
}

// AddrPort returns a reverse-NAT or original-destination value.
func (v MeshRevValue) AddrPort() netip.AddrPort {
	return netip.AddrPortFrom(v.Ip.Netip(), NetPort(v.Port))
}

// NamespaceInfo builds a namespaces map value; names longer than 63 bytes
// are truncated (nodeagent refuses them before they get here).
func NamespaceInfo(name string, flags uint32) MeshNsInfo {
	v := MeshNsInfo{Flags: flags}
	for i := 0; i < len(name) && i < MaxNamespaceName-1; i++ {
		v.Name[i] = int8(name[i])
	}
	return v
}

// NameString returns the namespace name stored in the value.
func (v MeshNsInfo) NameString() string {
	b := make([]byte, 0, len(v.Name))
	for _, c := range v.Name {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

// Attachment says how one program is attached.
type Attachment struct {
	Program string          // MeshProg* name
	Type    ebpf.AttachType // kernel attach type
	Map     string          // for sk_msg: the SOCKHASH it is attached to; "" for cgroup programs
}

// Attachments lists every program and where it goes: all but sk_msg attach
// to a cgroup v2 directory, sk_msg to sock_hash.
var Attachments = []Attachment{
	{Program: MeshProgConnect4, Type: ebpf.AttachCGroupInet4Connect},
	{Program: MeshProgConnect6, Type: ebpf.AttachCGroupInet6Connect},
	{Program: MeshProgSendmsg4, Type: ebpf.AttachCGroupUDP4Sendmsg},
	{Program: MeshProgSendmsg6, Type: ebpf.AttachCGroupUDP6Sendmsg},
	{Program: MeshProgRecvmsg4, Type: ebpf.AttachCGroupUDP4Recvmsg},
	{Program: MeshProgRecvmsg6, Type: ebpf.AttachCGroupUDP6Recvmsg},
	{Program: MeshProgGetpeername4, Type: ebpf.AttachCgroupInet4GetPeername},
	{Program: MeshProgGetpeername6, Type: ebpf.AttachCgroupInet6GetPeername},
	{Program: MeshProgGetsockoptOrigdst, Type: ebpf.AttachCGroupGetsockopt},
	{Program: MeshProgSockOps, Type: ebpf.AttachCGroupSockOps},
	{Program: MeshProgIngressPolicy, Type: ebpf.AttachCGroupInetIngress},
	{Program: MeshProgEgressFlows, Type: ebpf.AttachCGroupInetEgress},
	{Program: MeshProgSkMsgRedirect, Type: ebpf.AttachSkMsgVerdict, Map: MeshMapSockHash},
}
