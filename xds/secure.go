package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	corev1 "k8s.io/api/core/v1"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
	"github.com/nodemesh/nodemesh/translate/secure"
)

// Issuer signs workload SVIDs and hands out the trust bundle; identity.CA
// implements it.
type Issuer interface {
	NewSVID(id spiffeid.ID) (*x509svid.SVID, error)
	Bundle() *x509bundle.Bundle
}

// SecurityConfig turns on workload identity: every NodeConfig goes through
// translate/secure (mTLS per service account, PeerAuthentication), and
// every SharedEnvoy node gets, over SDS, the SVIDs of the service accounts
// of its own pods and the trust bundle, and nothing else.
type SecurityConfig struct {
	// Issuer of the SVIDs served over SDS. Nil (SPIRE mode): meshd serves
	// no secrets, each node's agent serves the ones its configs name (the
	// node's AllowedSecrets) from its local SPIRE agent.
	Issuer Issuer
	// Options of translate/secure; TrustDomain is required.
	Options secure.Options
	// RotationCheck is how often SVIDs are checked for rotation (renewed
	// once half their lifetime has passed) and the bundle for changes
	// (default 1m).
	RotationCheck time.Duration
	// Logger defaults to slog.Default(); Now to time.Now.
	Logger *slog.Logger
	Now    func() time.Time
}

// Validate reports a configuration the secure source cannot run with.
func (c *SecurityConfig) Validate() error {
	var errs []error
	if err := c.Options.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.RotationCheck < 0 {
		errs = append(errs, errors.New("xds security: RotationCheck must not be negative"))
	}
	return errors.Join(errs...)
}

func (c SecurityConfig) withDefaults() SecurityConfig {
	if c.RotationCheck == 0 {
		c.RotationCheck = time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// SnapshotView is a View that exposes the config snapshot it translates
// (StoreSource's views do); the secure source needs it for pods and
// PeerAuthentication.
type SnapshotView interface {
	View
	Snapshot() *config.Snapshot
}

// Snapshot implements SnapshotView.
func (v *storeView) Snapshot() *config.Snapshot { return v.snap }

// SecureSource wraps a Source whose views are SnapshotViews: its views
// apply translate/secure to every NodeConfig and add the node's SDS
// secrets to its extra resources. Run it: it re-issues SVIDs before half
// their lifetime and signals Changed, so that nodes get the new ones.
type SecureSource struct {
	inner   Source
	cfg     SecurityConfig
	secrets *secretCache
	changed chan struct{}

	mu   sync.Mutex
	last *secureView
	prep *secure.Prepared // for last.inner: shared by the views of one inner view
}

// NewSecureSource wraps inner.
func NewSecureSource(inner Source, cfg SecurityConfig) (*SecureSource, error) {
	if inner == nil {
		return nil, errors.New("xds security: inner Source is required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	s := &SecureSource{inner: inner, cfg: cfg, changed: make(chan struct{}, 1)}
	if cfg.Issuer != nil {
		s.secrets = newSecretCache(cfg.Issuer, cfg.Options.TrustDomain, cfg.Now)
	}
	return s, nil
}

// Current implements Source.
func (s *SecureSource) Current() View {
	v := s.inner.Current()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last == nil || s.last.inner != v || s.last.epoch != s.secrets.epoch() {
		prep := s.prep
		if s.last == nil || s.last.inner != v {
			prep = nil
			if sv, ok := v.(SnapshotView); ok {
				prep = secure.Prepare(sv.Snapshot(), s.cfg.Options)
			}
		}
		s.last, s.prep = &secureView{src: s, inner: v, epoch: s.secrets.epoch(), prep: prep}, prep
	}
	return s.last
}

// Changed implements Source: the inner source's changes and rotations.
func (s *SecureSource) Changed() <-chan struct{} { return s.changed }

func (s *SecureSource) signal() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Run forwards the inner source's changes and rotates SVIDs until ctx ends.
func (s *SecureSource) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.RotationCheck)
	defer t.Stop()
	inner := s.inner.Changed()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-inner:
			s.signal()
		case <-t.C:
			s.Rotate()
		}
	}
}

// Rotate re-issues every cached SVID past half its lifetime and picks up
// a changed trust bundle; when anything changed it signals Changed (nodes
// then get a push) and reports true. Run calls it every RotationCheck.
func (s *SecureSource) Rotate() bool {
	if s.secrets == nil {
		return false // no issuer: nothing to rotate
	}
	if v, ok := s.inner.Current().(SnapshotView); ok {
		s.secrets.prune(meshIdentities(v.Snapshot(), s.cfg.Options.TrustDomain))
	}
	n, err := s.secrets.rotate()
	if err != nil {
		s.cfg.Logger.Error("xds security: SVID rotation failed; retrying at the next check", "err", err)
	}
	if n > 0 {
		s.cfg.Logger.Info("xds security: rotated", "secrets", n)
		s.signal()
	}
	return n > 0
}

// AllowedSecrets lists the SDS secrets node may receive: the SVIDs of the
// service accounts of its own pods, and the trust bundle.
func (s *SecureSource) AllowedSecrets(node string) []string {
	v, ok := s.inner.Current().(SnapshotView)
	if !ok {
		return nil
	}
	return allowedSecrets(v.Snapshot(), node, s.cfg.Options.TrustDomain)
}

// meshIdentities are the identities of every node's pods: the SVIDs worth
// keeping (and rotating).
func meshIdentities(snap *config.Snapshot, td spiffeid.TrustDomain) map[string]bool {
	nodes := map[string]bool{}
	for _, o := range snap.List(config.KindPod) {
		if pod, ok := o.Spec.(*corev1.Pod); ok && pod.Spec.NodeName != "" {
			nodes[pod.Spec.NodeName] = true
		}
	}
	keep := map[string]bool{}
	for node := range nodes {
		for _, id := range secure.Identities(snap, node, td) {
			keep[id.String()] = true
		}
	}
	return keep
}

func allowedSecrets(snap *config.Snapshot, node string, td spiffeid.TrustDomain) []string {
	names := []string{secure.BundleSecretName(td)}
	for _, id := range secure.Identities(snap, node, td) {
		names = append(names, secure.SecretName(id))
	}
	slices.Sort(names)
	return names
}

// secureView is one generation of the inner view with one generation of
// secrets.
type secureView struct {
	src   *SecureSource
	inner View
	epoch uint64
	prep  *secure.Prepared // nil when inner is no SnapshotView
}

// Generation implements View. A rotation re-serves the same generation
// with new secrets; the server compares content versions, so nodes get
// them.
func (v *secureView) Generation() uint64 { return v.inner.Generation() }

// Translate implements View: the inner NodeConfig, copied, with
// translate/secure applied and its diagnostics added.
func (v *secureView) Translate(p translate.Proxy) *translate.NodeConfig {
	nc := v.inner.Translate(p)
	if nc == nil || v.prep == nil {
		return nc
	}
	cp := *nc
	cp.Listeners = slices.Clone(nc.Listeners)
	cp.Routes = slices.Clone(nc.Routes)
	cp.Clusters = slices.Clone(nc.Clusters)
	cp.Endpoints = slices.Clone(nc.Endpoints)
	diags := v.prep.Apply(&cp)
	cp.Diagnostics = append(slices.Clone(nc.Diagnostics), diags...)
	return &cp
}

// Check implements CheckView: the inner check, then every SDS secret the
// config refers to must be one the node is served.
func (v *secureView) Check(nc *translate.NodeConfig) error {
	var err error
	if cv, ok := v.inner.(CheckView); ok {
		err = cv.Check(nc)
	} else {
		err = CheckNodeConfig(nc)
	}
	var have []string
	if sv, ok := v.inner.(SnapshotView); ok && nc.Proxy.Kind == translate.SharedEnvoy {
		td := v.src.cfg.Options.TrustDomain
		if v.src.secrets == nil {
			// No issuer: the node's agent serves the node's own secrets.
			have = allowedSecrets(sv.Snapshot(), nc.Proxy.Node, td)
		} else {
			have = v.src.secrets.have(secure.Identities(sv.Snapshot(), nc.Proxy.Node, td))
		}
	}
	return errors.Join(err, secure.CheckSecrets(nc, have))
}

// Dataplane implements DataplaneView: the inner view's resources plus the
// node's SDS secrets.
func (v *secureView) Dataplane(node string) ([]TypedResources, []config.Diagnostic) {
	var out []TypedResources
	var diags []config.Diagnostic
	if dv, ok := v.inner.(DataplaneView); ok {
		out, diags = dv.Dataplane(node)
	}
	sv, ok := v.inner.(SnapshotView)
	if !ok || v.src.secrets == nil {
		return out, diags
	}
	ids := secure.Identities(sv.Snapshot(), node, v.src.cfg.Options.TrustDomain)
	secrets, err := v.src.secrets.forNode(ids)
	if err != nil {
		// No secret rather than a wrong one; the check then refuses the
		// config (its references are missing) and the node keeps its last.
		v.src.cfg.Logger.Error("xds security: issuing SVIDs", "node", node, "err", err)
		diags = append(slices.Clone(diags), config.Diagnostic{Severity: config.SeverityError, Message: fmt.Sprintf("issuing SVIDs for node %s: %v", node, err)})
	}
	return append(slices.Clone(out), secrets), diags
}
