package secure

import (
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
)

// Apply adds identities and mutual TLS to nc, translated from snap for
// nc.Proxy (see the package documentation). Resources of nc are shared
// with other NodeConfigs of the same translate.Mesh: Apply never mutates
// them, it replaces the ones it changes with copies. It returns
// diagnostics about PeerAuthentication and pods; nc stays consistent
// (translate.Check and CheckSecrets pass) whatever the input.
func Apply(nc *translate.NodeConfig, snap *config.Snapshot, opts Options) []config.Diagnostic {
	return apply(nc, snap, opts, newSharedCache())
}

func apply(nc *translate.NodeConfig, snap *config.Snapshot, opts Options, shared *sharedCache) []config.Diagnostic {
	if err := opts.Validate(); err != nil {
		return []config.Diagnostic{{Severity: config.SeverityError, Message: err.Error()}}
	}
	if nc == nil || snap == nil {
		return nil
	}
	opts = opts.withDefaults()
	var diags []config.Diagnostic
	switch nc.Proxy.Kind {
	case translate.SharedEnvoy:
		applyShared(nc, newNodeModel(snap, nc.Proxy.Node, opts, &diags, shared))
	case translate.ProxylessGRPC:
		applyProxyless(nc, newNodeModel(snap, "", opts, &diags, shared))
	}
	return diags
}

func applyShared(nc *translate.NodeConfig, m *nodeModel) {
	if m.opts.PerAccountClusters {
		applyCopies(nc, m)
		return
	}
	o := newOutbound(m, nc)
	m.listeners(nc, o.listener)
	o.secureClusters(nc)
	// Route configurations of outbound listeners without accounts on the
	// node are no longer used.
	r := collect(nc, false)
	nc.Routes = slices.DeleteFunc(nc.Routes, func(rc *routev3.RouteConfiguration) bool { return !r.routes[rc.GetName()] })
}

// listeners rewrites the outbound listeners of nc with split (given the
// accounts of the listener's namespace) and the inbound ones for mTLS.
func (m *nodeModel) listeners(nc *translate.NodeConfig, split func(*listenerv3.Listener, []*account) *listenerv3.Listener) {
	for i, l := range nc.Listeners {
		name := l.GetName()
		switch {
		case l.GetTrafficDirection() == corev3.TrafficDirection_OUTBOUND && strings.HasPrefix(name, "outbound_"):
			nc.Listeners[i] = split(l, m.accounts[strings.TrimPrefix(name, "outbound_")])
		case l.GetTrafficDirection() == corev3.TrafficDirection_INBOUND && strings.HasPrefix(name, "inbound_"):
			nc.Listeners[i] = m.inbound(l)
		}
	}
}

func applyProxyless(nc *translate.NodeConfig, m *nodeModel) {
	for i, c := range nc.Clusters {
		d := m.destinationOf(c.GetName(), nc.Proxy.Namespace)
		if !d.mesh || d.plaintext {
			continue
		}
		cp := proto.Clone(c).(*clusterv3.Cluster)
		cp.TransportSocket = upstreamProvider(m.opts.CertProviderInstance, d.peers)
		nc.Clusters[i] = cp
	}
}
