package translate

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/nodemesh/nodemesh/config"
)

// ProxyKind says what is on the other end of an xDS stream.
type ProxyKind int

const (
	// SharedEnvoy is the one Envoy per node, with per-namespace listeners.
	SharedEnvoy ProxyKind = iota
	// ProxylessGRPC is a gRPC-Go xDS client: it gets API listeners named
	// after the services it dials (xds:///host:port).
	ProxylessGRPC
)

// Proxy describes the client a NodeConfig is built for.
type Proxy struct {
	Node string // Kubernetes node name
	Kind ProxyKind
	// Namespace is the namespace a proxyless gRPC client lives in (what it
	// may see follows Sidecar/exportTo of that namespace). Unused for SharedEnvoy.
	Namespace string
}

// NodeConfig is everything one proxy gets. Each slice is sorted by resource
// name so that marshalling it is deterministic.
type NodeConfig struct {
	Proxy       Proxy
	Listeners   []*listenerv3.Listener
	Routes      []*routev3.RouteConfiguration
	Clusters    []*clusterv3.Cluster
	Endpoints   []*endpointv3.ClusterLoadAssignment
	Diagnostics []config.Diagnostic
}
