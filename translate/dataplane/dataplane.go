package dataplane

import (
	"strconv"

	"google.golang.org/protobuf/proto"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/config"
)

// DefaultTrustDomain is the SPIFFE trust domain used when Options leaves it
// empty, as in Istio.
const DefaultTrustDomain = "cluster.local"

// Options tune the translation. The zero value is ready to use.
type Options struct {
	// TrustDomain of the workloads' SPIFFE IDs and of the principals
	// AuthorizationPolicies name; DefaultTrustDomain when empty.
	TrustDomain string
}

func (o Options) trustDomain() string {
	if o.TrustDomain == "" {
		return DefaultTrustDomain
	}
	return o.TrustDomain
}

// Resources is everything one node agent programs into its kernel. Each
// slice is sorted by ResourceName. Messages may be shared between the
// Resources of one Mesh: treat them as read-only.
type Resources struct {
	Services    []*dataplanev1.Service
	Workloads   []*dataplanev1.Workload
	Policies    []*dataplanev1.Policy
	Listeners   []*dataplanev1.NamespaceListener
	Diagnostics []config.Diagnostic
}

// Translate builds the dataplane resources of one node with the default
// Options. It is pure and deterministic. Translating many nodes of one
// snapshot is cheaper with Prepare(snap, opts).Translate(node).
func Translate(snap *config.Snapshot, node string) *Resources {
	return Options{}.Translate(snap, node)
}

// Translate is the package function with these options.
func (o Options) Translate(snap *config.Snapshot, node string) *Resources {
	if snap == nil {
		return &Resources{}
	}
	return Prepare(snap, o).Translate(node)
}

// ResourceName returns the name a dataplane resource is served under (the
// names documented in api/dataplane/v1/dataplane.proto), or "" for any other
// message:
//
//	Service            "<namespace>/<name>:<port>/<protocol>"  e.g. "default/reviews:9080/TCP"
//	Workload           "<namespace>/<pod>"
//	Policy             "<namespace>/<policy name>"
//	NamespaceListener  "<namespace>"
func ResourceName(m proto.Message) string {
	switch r := m.(type) {
	case *dataplanev1.Service:
		return r.GetNamespace() + "/" + r.GetName() + ":" + strconv.FormatUint(uint64(r.GetPort()), 10) + "/" + protocolName(r.GetProtocol())
	case *dataplanev1.Workload:
		return r.GetNamespace() + "/" + r.GetName()
	case *dataplanev1.Policy:
		return r.GetNamespace() + "/" + r.GetName()
	case *dataplanev1.NamespaceListener:
		return r.GetNamespace()
	}
	return ""
}

// protocolName is TCP, UDP, or the enum's name for anything else.
func protocolName(p dataplanev1.Protocol) string {
	switch p {
	case dataplanev1.Protocol_TCP, dataplanev1.Protocol_UDP:
		return p.String()
	}
	return "ANY"
}
