package secure

import (
	"cmp"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
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
	o := &outbound{m: m, clusters: map[string]*clusterv3.Cluster{}, routes: map[string]*routev3.RouteConfiguration{},
		newCl: map[string]*clusterv3.Cluster{}, newRC: map[string]*routev3.RouteConfiguration{}}
	for _, c := range nc.Clusters {
		o.clusters[c.GetName()] = c
	}
	for _, rc := range nc.Routes {
		o.routes[rc.GetName()] = rc
	}
	for i, l := range nc.Listeners {
		name := l.GetName()
		switch {
		case l.GetTrafficDirection() == corev3.TrafficDirection_OUTBOUND && strings.HasPrefix(name, "outbound_"):
			nc.Listeners[i] = o.listener(l, m.accounts[strings.TrimPrefix(name, "outbound_")])
		case l.GetTrafficDirection() == corev3.TrafficDirection_INBOUND && strings.HasPrefix(name, "inbound_"):
			nc.Listeners[i] = m.inbound(l)
		}
	}
	for _, rc := range o.newRC {
		nc.Routes = append(nc.Routes, rc)
	}
	for _, c := range o.newCl {
		nc.Clusters = append(nc.Clusters, c)
	}
	prune(nc, o)
	slices.SortStableFunc(nc.Routes, func(a, b *routev3.RouteConfiguration) int { return cmp.Compare(a.GetName(), b.GetName()) })
	slices.SortStableFunc(nc.Clusters, func(a, b *clusterv3.Cluster) int { return cmp.Compare(a.GetName(), b.GetName()) })
}

// prune drops route configurations no listener uses any more and the
// plaintext originals of clusters that now exist per account, unless
// something still refers to them.
func prune(nc *translate.NodeConfig, o *outbound) {
	r := collect(nc, false)
	nc.Routes = slices.DeleteFunc(nc.Routes, func(rc *routev3.RouteConfiguration) bool { return !r.routes[rc.GetName()] })
	r = collect(nc, false) // clusters of the routes that are left
	replaced := map[string]bool{}
	for _, c := range o.newCl {
		if svc := c.GetEdsClusterConfig().GetServiceName(); svc != "" {
			replaced[svc] = true
		}
	}
	nc.Clusters = slices.DeleteFunc(nc.Clusters, func(c *clusterv3.Cluster) bool {
		return replaced[c.GetName()] && !r.clusters[c.GetName()]
	})
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
