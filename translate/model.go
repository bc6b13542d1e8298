package translate

import (
	"time"

	"github.com/nodemesh/nodemesh/config"
)

// The model is what the builders read: services, their ports and endpoints,
// DestinationRule subsets and VirtualService routes, with no Envoy types.
// It is built from a snapshot (mesh.go) and then viewed per client
// namespace (scope.go).

// DomainSuffix is the cluster DNS domain of Kubernetes services.
const DomainSuffix = "cluster.local"

// protocol is the application protocol of a service port.
type protocol int

const (
	protoTCP   protocol = iota // anything we cannot parse as HTTP
	protoHTTP                  // HTTP/1.1
	protoHTTP2                 // HTTP/2 and gRPC (upstream speaks h2)
)

func (p protocol) isHTTP() bool { return p == protoHTTP || p == protoHTTP2 }

// service is a Kubernetes Service or one host of a ServiceEntry.
type service struct {
	obj       *config.Object // the Service or ServiceEntry it came from
	Hostname  string         // FQDN, e.g. reviews.default.svc.cluster.local
	Name      string         // Kubernetes name; empty for ServiceEntry hosts
	Namespace string
	VIPs      []string // cluster IPs or ServiceEntry addresses (IPs or CIDRs), sorted
	Ports     []servicePort
	ExportTo  exportSet
	// Selector selects pods when the service has no EndpointSlices
	// (Kubernetes services only).
	Selector map[string]string
	// Static holds ServiceEntry endpoints (STATIC resolution).
	Static       []staticEndpoint
	ServiceEntry bool
	// DNS: Static addresses are host names resolved by the proxy (a
	// ServiceEntry with DNS resolution); its clusters are not EDS.
	DNS bool
}

// servicePort is one port of a service.
type servicePort struct {
	Name     string
	Port     uint32
	Protocol protocol
	// TargetPort is the endpoint port as a number; TargetName is a
	// container port name to resolve per pod. Both empty: same as Port.
	TargetPort uint32
	TargetName string
}

// port looks a service port up by number.
func (s *service) port(n uint32) (servicePort, bool) {
	for _, p := range s.Ports {
		if p.Port == n {
			return p, true
		}
	}
	return servicePort{}, false
}

// staticEndpoint is a ServiceEntry workload entry.
type staticEndpoint struct {
	Address string
	Ports   map[string]uint32 // port name -> endpoint port
	Labels  map[string]string
}

// endpoint is one backend of a service port.
type endpoint struct {
	Address string
	Port    uint32
	Labels  map[string]string
}

// destinationRule is the part of a DestinationRule the builders use.
type destinationRule struct {
	obj     *config.Object
	export  exportSet
	Host    string
	Policy  trafficPolicy
	Subsets []subset
}

// subset is a DestinationRule subset; its policy is already merged with the
// rule's top-level policy.
type subset struct {
	Name   string
	Labels map[string]string
	Policy trafficPolicy
}

func (dr *destinationRule) subset(name string) (subset, bool) {
	if dr == nil {
		return subset{}, false
	}
	for _, s := range dr.Subsets {
		if s.Name == name {
			return s, true
		}
	}
	return subset{}, false
}

// lbPolicy is a simple load balancer choice.
type lbPolicy int

const (
	lbDefault lbPolicy = iota // round robin
	lbRoundRobin
	lbLeastRequest
	lbRandom
)

// trafficPolicy is the supported subset of an Istio TrafficPolicy. Zero
// values mean "not set".
type trafficPolicy struct {
	LB                    lbPolicy
	ConnectTimeout        time.Duration
	MaxConnections        uint32
	MaxPendingRequests    uint32
	MaxRequests           uint32
	MaxRetries            uint32
	MaxRequestsPerConnect uint32
	Outlier               *outlierDetection
	Hash                  *consistentHash // set: balance with a hash ring
}

// outlierDetection ejects failing endpoints (Istio's outlierDetection).
type outlierDetection struct {
	Consecutive5xx     *uint32
	ConsecutiveGateway *uint32
	Interval           time.Duration
	BaseEjectionTime   time.Duration
	MaxEjectionPercent uint32
}

// merge returns p with every unset field taken from base.
func (p trafficPolicy) merge(base trafficPolicy) trafficPolicy {
	if p.LB == lbDefault {
		p.LB = base.LB
	}
	if p.ConnectTimeout == 0 {
		p.ConnectTimeout = base.ConnectTimeout
	}
	if p.MaxConnections == 0 {
		p.MaxConnections = base.MaxConnections
	}
	if p.MaxPendingRequests == 0 {
		p.MaxPendingRequests = base.MaxPendingRequests
	}
	if p.MaxRequests == 0 {
		p.MaxRequests = base.MaxRequests
	}
	if p.MaxRetries == 0 {
		p.MaxRetries = base.MaxRetries
	}
	if p.MaxRequestsPerConnect == 0 {
		p.MaxRequestsPerConnect = base.MaxRequestsPerConnect
	}
	if p.Outlier == nil {
		p.Outlier = base.Outlier
	}
	if p.LB == lbDefault && p.Hash == nil {
		p.Hash = base.Hash
	}
	return p
}

// matchKind is how a string is compared.
type matchKind int

const (
	matchExact matchKind = iota
	matchPrefix
	matchRegex
)

type stringMatch struct {
	Kind  matchKind
	Value string
}

type headerMatch struct {
	Name string
	stringMatch
}

// routeMatch is one match clause of a route; nil Path matches every path.
type routeMatch struct {
	Path    *stringMatch
	Headers []headerMatch // sorted by name
}

// weightedCluster is one destination of a route.
type weightedCluster struct {
	Cluster string
	Weight  uint32
}

// httpRoute is one route of a virtual host. A route with several Matches
// becomes one Envoy route per match, in order.
type httpRoute struct {
	Name             string
	Matches          []routeMatch // empty: match everything
	Clusters         []weightedCluster
	Timeout          *time.Duration
	PrefixRewrite    string
	AuthorityRewrite string
	Retry            *retryPolicy
	Fault            *faultPolicy
	Request          headerOps
	Response         headerOps
	// Redirect or Direct answer the request instead of Clusters.
	Redirect *redirect
	Direct   *directResponse
	// Hash is the consistent hash of the destination cluster(s), if any.
	Hash *consistentHash
}

// virtualHost is one service port as seen by a client namespace.
type virtualHost struct {
	Name    string
	Domains []string
	Routes  []httpRoute
}
