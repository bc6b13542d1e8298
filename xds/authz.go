package xds

import (
	"slices"
	"sync"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
	"github.com/nodemesh/nodemesh/translate/authz"
	"github.com/nodemesh/nodemesh/translate/inboundauthz"
)

// AuthzSource wraps a Source whose views carry their store snapshot
// (StoreSource's, or SecureSource's over one): its views apply
// translate/inboundauthz to every NodeConfig, after translate/secure when
// inner is a SecureSource, so that AuthorizationPolicy,
// RequestAuthentication and SMI TrafficTargets are enforced on the
// inbound listeners, and check with inboundauthz.Check around the inner
// view's check.
type AuthzSource struct {
	inner Source
	opts  authz.Options

	mu   sync.Mutex
	last *authzView
}

// NewAuthzSource wraps inner.
func NewAuthzSource(inner Source, opts authz.Options) *AuthzSource {
	return &AuthzSource{inner: inner, opts: opts}
}

// Current implements Source.
func (s *AuthzSource) Current() View {
	v := s.inner.Current()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last == nil || s.last.inner != v {
		s.last = &authzView{src: s, inner: v}
	}
	return s.last
}

// Changed implements Source.
func (s *AuthzSource) Changed() <-chan struct{} { return s.inner.Changed() }

type authzView struct {
	src   *AuthzSource
	inner View
}

// Generation implements View.
func (v *authzView) Generation() uint64 { return v.inner.Generation() }

// Translate implements View: the inner NodeConfig, copied, with
// inboundauthz applied and its diagnostics added.
func (v *authzView) Translate(p translate.Proxy) *translate.NodeConfig {
	nc := v.inner.Translate(p)
	snap := viewSnapshot(v.inner)
	if nc == nil || snap == nil || p.Kind != translate.SharedEnvoy {
		return nc
	}
	cp := *nc
	cp.Listeners = slices.Clone(nc.Listeners)
	cp.Routes = slices.Clone(nc.Routes)
	cp.Clusters = slices.Clone(nc.Clusters)
	diags := inboundauthz.Apply(&cp, snap, v.src.opts)
	cp.Diagnostics = append(slices.Clone(nc.Diagnostics), diags...)
	return &cp
}

// Check implements CheckView: the inner view's check (or CheckNodeConfig)
// through inboundauthz.Check.
func (v *authzView) Check(nc *translate.NodeConfig) error {
	check := CheckNodeConfig
	if cv, ok := v.inner.(CheckView); ok {
		check = cv.Check
	}
	return inboundauthz.Check(nc, check)
}

// Dataplane implements DataplaneView.
func (v *authzView) Dataplane(node string) ([]TypedResources, []config.Diagnostic) {
	if dv, ok := v.inner.(DataplaneView); ok {
		return dv.Dataplane(node)
	}
	return nil, nil
}

// Snapshot implements SnapshotView (nil when the inner view has none).
func (v *authzView) Snapshot() *config.Snapshot { return viewSnapshot(v.inner) }

// viewSnapshot is the store snapshot behind a view, or nil.
func viewSnapshot(v View) *config.Snapshot {
	switch v := v.(type) {
	case SnapshotView:
		return v.Snapshot()
	case *secureView:
		return viewSnapshot(v.inner)
	}
	return nil
}

// authzOptions are the inbound authorization options of meshd.
func (cp *ControlPlane) authzOptions() authz.Options {
	opts := authz.Options{TrustDomain: cp.cfg.TrustDomain}
	if cp.cfg.Security != nil {
		opts.RootNamespace = cp.cfg.Security.RootNamespace
	}
	return opts
}
