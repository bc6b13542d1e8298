package xds

import (
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/nodemesh/nodemesh/translate"
)

// Node metadata keys a client sets to say what it is. See the package doc.
const (
	// MetaProxy is "grpc" for a proxyless gRPC client and "envoy" (or
	// absent) for the shared Envoy of a node.
	MetaProxy = "NODEMESH_PROXY"
	// MetaNamespace is the namespace of a proxyless gRPC client (required
	// when MetaProxy is "grpc").
	MetaNamespace = "NAMESPACE"
	// MetaNodeName is the Kubernetes node a proxyless gRPC client runs on
	// (optional; the node.id of a shared Envoy is its node name).
	MetaNodeName = "NODE_NAME"

	ProxyValueGRPC  = "grpc"
	ProxyValueEnvoy = "envoy"
)

// ProxyForNode maps the xDS Node a client sent to the proxy translate
// builds for.
func ProxyForNode(n *corev3.Node) (translate.Proxy, error) {
	if n.GetId() == "" {
		return translate.Proxy{}, fmt.Errorf("xds node has no id")
	}
	fields := n.GetMetadata().GetFields()
	str := func(k string) string { return fields[k].GetStringValue() }
	switch kind := str(MetaProxy); kind {
	case "", ProxyValueEnvoy:
		return translate.Proxy{Kind: translate.SharedEnvoy, Node: n.GetId()}, nil
	case ProxyValueGRPC:
		ns := str(MetaNamespace)
		if ns == "" {
			return translate.Proxy{}, fmt.Errorf("xds node %q: metadata %s=grpc needs %s", n.GetId(), MetaProxy, MetaNamespace)
		}
		return translate.Proxy{Kind: translate.ProxylessGRPC, Node: str(MetaNodeName), Namespace: ns}, nil
	default:
		return translate.Proxy{}, fmt.Errorf("xds node %q: unknown metadata %s=%q (want %q or %q)", n.GetId(), MetaProxy, kind, ProxyValueGRPC, ProxyValueEnvoy)
	}
}

// ProxyKindString names a proxy kind for status output: "node" for a
// node's streams (its agent's dataplane types and its shared Envoy's),
// "grpc" for a proxyless gRPC client.
func ProxyKindString(k translate.ProxyKind) string {
	switch k {
	case translate.SharedEnvoy:
		return "node"
	case translate.ProxylessGRPC:
		return "grpc"
	default:
		return fmt.Sprintf("kind(%d)", int(k))
	}
}
