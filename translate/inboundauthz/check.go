package inboundauthz

import (
	"errors"
	"fmt"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	"google.golang.org/protobuf/proto"

	"github.com/nodemesh/nodemesh/translate"
	"github.com/nodemesh/nodemesh/translate/authz"
)

// Check verifies a NodeConfig that Apply has been run on. check is the
// pipeline's check (translate.Check, or a translate.Mesh's Check), which
// knows the network filters translate builds but not authz's network RBAC
// filters: Check validates those (authz.Validate) and runs check on a copy
// of nc without them; every other resource is checked by check as it is.
// Then every cluster jwt_authn fetches remote JWKS from must exist in nc
// (Apply adds them). A missing ext_authz cluster is a diagnostic of Apply,
// not an error: ext_authz then fails closed.
func Check(nc *translate.NodeConfig, check func(*translate.NodeConfig) error) error {
	if nc == nil {
		return check(nc)
	}
	var errs []error
	stripped := nc
	clusters := map[string]bool{}
	for _, c := range nc.Clusters {
		clusters[c.GetName()] = true
	}
	for i, l := range nc.Listeners {
		var rbac []*listenerv3.Filter
		for _, fc := range l.GetFilterChains() {
			if fs := fc.GetFilters(); len(fs) > 0 && fs[len(fs)-1].GetTypedConfig().MessageIs((*rbacnetv3.RBAC)(nil)) {
				errs = append(errs, fmt.Errorf("listener %s chain %s: network RBAC filter %s must come before the chain's terminal filter", l.GetName(), fc.GetName(), fs[len(fs)-1].GetName()))
			}
			for _, f := range fc.GetFilters() {
				switch {
				case f.GetTypedConfig().MessageIs((*rbacnetv3.RBAC)(nil)):
					rbac = append(rbac, f)
				case f.GetTypedConfig().MessageIs((*hcmv3.HttpConnectionManager)(nil)):
					errs = append(errs, httpReferences(l.GetName(), fc.GetName(), f, clusters)...)
				}
			}
		}
		if len(rbac) == 0 {
			continue
		}
		if err := authz.Validate(nil, rbac); err != nil {
			errs = append(errs, fmt.Errorf("listener %s: %w", l.GetName(), err))
		}
		if stripped == nc {
			cp := *nc
			cp.Listeners = append([]*listenerv3.Listener(nil), nc.Listeners...)
			stripped = &cp
		}
		stripped.Listeners[i] = withoutRBAC(l)
	}
	return errors.Join(append([]error{check(stripped)}, errs...)...)
}

// withoutRBAC is a copy of l without network RBAC filters.
func withoutRBAC(l *listenerv3.Listener) *listenerv3.Listener {
	cp := proto.Clone(l).(*listenerv3.Listener)
	for _, fc := range cp.FilterChains {
		fs := fc.Filters[:0]
		for _, f := range fc.Filters {
			if !f.GetTypedConfig().MessageIs((*rbacnetv3.RBAC)(nil)) {
				fs = append(fs, f)
			}
		}
		fc.Filters = fs
	}
	return cp
}

// httpReferences reports clusters that the jwt_authn filters of an HTTP
// connection manager need and nc lacks.
func httpReferences(listener, chain string, f *listenerv3.Filter, clusters map[string]bool) []error {
	var hcm hcmv3.HttpConnectionManager
	if err := f.GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		return nil // translate.Check reports it
	}
	var errs []error
	need := func(what, name string) {
		if name != "" && !clusters[name] {
			errs = append(errs, fmt.Errorf("listener %s chain %s: %s needs cluster %q, which does not exist", listener, chain, what, name))
		}
	}
	for _, h := range hcm.GetHttpFilters() {
		m, err := h.GetTypedConfig().UnmarshalNew()
		if err != nil {
			continue // translate.Check reports it
		}
		if cfg, ok := m.(*jwtv3.JwtAuthentication); ok {
			for name, p := range cfg.GetProviders() {
				need("jwt provider "+name, p.GetRemoteJwks().GetHttpUri().GetCluster())
			}
		}
	}
	return errs
}
