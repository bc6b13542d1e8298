package secure

import (
	"fmt"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	netsetfsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/set_filter_state/v3"
	tsinputv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/matching/common_inputs/transport_socket/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/nodemesh/nodemesh/translate"
)

// selectionErrors checks what translate.Check cannot see inside typed
// configs of the socket selection: the set_filter_state filters and the
// matcher input and actions decode and validate, identities are hashable
// and shared with the upstream, and every action names a transport socket
// match of its cluster (Envoy would fall back to the default socket).
func selectionErrors(nc *translate.NodeConfig) []error {
	var errs []error
	for _, l := range nc.Listeners {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				cfg := &netsetfsv3.Config{}
				if !f.GetTypedConfig().MessageIs(cfg) {
					continue
				}
				if err := unpack(f.GetTypedConfig(), cfg); err != nil {
					errs = append(errs, fmt.Errorf("listener %s chain %s: %w", l.GetName(), fc.GetName(), err))
					continue
				}
				for _, v := range cfg.GetOnNewConnection() {
					if v.GetObjectKey() == SourceIdentityKey && (v.GetFactoryKey() != HashableStringFactory || v.GetSharedWithUpstream() == 0) {
						errs = append(errs, fmt.Errorf("listener %s chain %s: %s must be a shared %s", l.GetName(), fc.GetName(), SourceIdentityKey, HashableStringFactory))
					}
				}
			}
		}
	}
	for _, c := range nc.Clusters {
		errs = append(errs, clusterSelectionErrors(c)...)
	}
	return errs
}

func clusterSelectionErrors(c *clusterv3.Cluster) []error {
	tree := c.GetTransportSocketMatcher().GetMatcherTree()
	if tree == nil {
		return nil
	}
	var errs []error
	if err := unpack(tree.GetInput().GetTypedConfig(), &tsinputv3.FilterStateInput{}); err != nil {
		errs = append(errs, fmt.Errorf("cluster %s: matcher input: %w", c.GetName(), err))
	}
	names := map[string]bool{}
	for _, tm := range c.GetTransportSocketMatches() {
		names[tm.GetName()] = true
	}
	for key, om := range tree.GetExactMatchMap().GetMap() {
		a := &tsinputv3.TransportSocketNameAction{}
		if err := unpack(om.GetAction().GetTypedConfig(), a); err != nil {
			errs = append(errs, fmt.Errorf("cluster %s: action for %s: %w", c.GetName(), key, err))
		} else if !names[a.GetName()] {
			errs = append(errs, fmt.Errorf("cluster %s: %s selects transport socket %q, which the cluster does not have", c.GetName(), key, a.GetName()))
		}
	}
	return errs
}

func unpack(a *anypb.Any, m interface {
	proto.Message
	Validate() error
}) error {
	if a == nil {
		return fmt.Errorf("missing typed config")
	}
	if err := a.UnmarshalTo(m); err != nil {
		return err
	}
	return m.Validate()
}
