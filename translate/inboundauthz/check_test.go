package inboundauthz

import (
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	"google.golang.org/protobuf/proto"

	"github.com/nodemesh/nodemesh/translate"
)

func TestCheck(t *testing.T) {
	snap := loadSnapshot(t, "")
	good, _ := build(t, snap, true)

	mutate := func(f func(nc *translate.NodeConfig)) *translate.NodeConfig {
		nc := *good
		nc.Listeners = make([]*listenerv3.Listener, len(good.Listeners))
		for i, l := range good.Listeners {
			nc.Listeners[i] = proto.Clone(l).(*listenerv3.Listener)
		}
		nc.Clusters = append(nc.Clusters[:0:0], good.Clusters...)
		f(&nc)
		return &nc
	}
	inbound := func(nc *translate.NodeConfig) *listenerv3.Listener {
		for _, l := range nc.Listeners {
			if l.GetName() == "inbound_default" {
				return l
			}
		}
		t.Fatal("no inbound_default")
		return nil
	}
	cases := []struct {
		name    string
		nc      *translate.NodeConfig
		wantErr string // "" passes
	}{
		{"as built", good, ""},
		{"invalid network RBAC", mutate(func(nc *translate.NodeConfig) {
			for _, fc := range inbound(nc).FilterChains {
				for _, f := range fc.Filters {
					if f.GetTypedConfig().MessageIs((*rbacnetv3.RBAC)(nil)) {
						f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&rbacnetv3.RBAC{Rules: &rbacv3.RBAC{}})} // no stat prefix
					}
				}
			}
		}), "StatPrefix"},
		{"network RBAC after tcp_proxy", mutate(func(nc *translate.NodeConfig) {
			for _, fc := range inbound(nc).FilterChains {
				n := len(fc.Filters)
				if n > 2 && fc.Filters[n-2].GetTypedConfig().MessageIs((*rbacnetv3.RBAC)(nil)) {
					fc.Filters[n-2], fc.Filters[n-1] = fc.Filters[n-1], fc.Filters[n-2]
				}
			}
		}), "must come before the chain's terminal filter"},
		{"JWKS cluster missing", mutate(func(nc *translate.NodeConfig) {
			var kept []*clusterv3.Cluster
			for _, c := range nc.Clusters {
				if !strings.Contains(c.GetName(), "issuer.example.com") {
					kept = append(kept, c)
				}
			}
			nc.Clusters = kept
		}), `needs cluster "outbound|443||issuer.example.com"`},
		{"inbound route missing", mutate(func(nc *translate.NodeConfig) {
			nc.Routes = nil
		}), "inbound|default"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Check(c.nc, translate.Check)
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("Check: %v", err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Fatalf("Check = %v, want an error mentioning %q", err, c.wantErr)
			}
		})
	}
}
