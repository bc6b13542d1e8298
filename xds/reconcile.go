package xds

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
)

// built is the outcome of translating the configuration for one proxy;
// every node with that proxy shares it.
type built struct {
	nc       *translate.NodeConfig
	extra    []TypedResources // dataplane resources, for SharedEnvoy nodes
	diags    []config.Diagnostic
	snap     *resourceSnapshot
	versions Versions
	err      error // translate, check or snapshot error: do not serve
}

// build translates, checks and hashes the configuration for proxy (as
// Kuma's reconciler does: hash, validate, check consistency, then set).
//
// A panic in the translators becomes an error of this build: the node keeps
// its last good snapshot and the server keeps serving everyone else.
//
// served are the versions every node of this proxy serves now (nil when
// unknown or different): content equal to them passed the check when it
// was first served, so it is not checked again.
func (s *Server) build(view View, proxy translate.Proxy, served Versions) (b built) {
	defer func() {
		if r := recover(); r != nil {
			b = built{err: fmt.Errorf("translate panicked: %v", r)}
		}
	}()
	start := time.Now()
	nc := view.Translate(proxy)
	s.metrics.observeTranslate(time.Since(start))
	if nc == nil {
		return built{err: fmt.Errorf("translate returned no config")}
	}
	b = built{nc: nc, diags: nc.Diagnostics}
	if dv, ok := view.(DataplaneView); ok && proxy.Kind == translate.SharedEnvoy {
		var diags []config.Diagnostic
		b.extra, diags = dv.Dataplane(proxy.Node)
		b.diags = append(append([]config.Diagnostic(nil), b.diags...), diags...)
	}
	snap, err := buildSnapshot(nc, b.extra, s.memoFor(view.Generation()))
	if err != nil {
		b.err = err
		return b
	}
	if served == nil || !served.Equal(snap.versions) {
		if err := s.check(view, nc); err != nil {
			b.err = fmt.Errorf("check: %w", err)
			return b
		}
	}
	b.snap, b.versions = snap, snap.versions
	return b
}

// check runs Config.Check, else the view's own check, else CheckNodeConfig.
func (s *Server) check(view View, nc *translate.NodeConfig) error {
	switch cv, ok := view.(CheckView); {
	case s.cfg.Check != nil:
		return s.cfg.Check(nc)
	case ok:
		return cv.Check(nc)
	default:
		return CheckNodeConfig(nc)
	}
}

// servedVersions returns the versions all of nodes serve, or nil.
func servedVersions(nodes []*nodeState) Versions {
	var v Versions
	for i, ns := range nodes {
		ns.mu.Lock()
		nv := ns.versions
		ns.mu.Unlock()
		if nv == nil || (i > 0 && !nv.Equal(v)) {
			return nil
		}
		v = nv
	}
	return v
}

// memoFor returns the hash memo of a generation: the current one is
// shared (and replaced when a newer generation comes); an older one gets
// a private memo.
func (s *Server) memoFor(generation uint64) *hashMemo {
	s.memoMu.Lock()
	defer s.memoMu.Unlock()
	switch {
	case s.memo != nil && s.memo.generation == generation:
		return s.memo
	case s.memo == nil || generation > s.memo.generation:
		// The previous generation's hashes stay reachable for one more
		// generation: PrepareNext reuses its unchanged messages.
		next := &hashMemo{generation: generation}
		if s.memo != nil {
			s.memo.prev.Store(nil) // keep one generation back, not all
			next.prev.Store(s.memo)
		}
		s.memo = next
		return s.memo
	default:
		return &hashMemo{generation: generation}
	}
}

// apply sets a node's snapshot from b unless b is older than what the node
// has, b failed (the previous snapshot stays), or no version changed.
func (s *Server) apply(ns *nodeState, generation uint64, b built) {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.removed || generation < ns.generation {
		return
	}
	if b.nc != nil {
		ns.diagnostics = b.diags
	}
	if b.err != nil {
		ns.err, ns.errAt = b.err, s.cfg.Now()
		s.metrics.checkErrors.Add(1)
		s.log.Error("xds snapshot refused; node keeps its previous config", "node", ns.id, "generation", generation, "err", b.err)
		return
	}
	ns.err = nil
	ns.generation = generation
	if ns.served != nil && ns.versions.Equal(b.versions) {
		s.metrics.skipped.Add(1)
		return
	}
	if err := s.cache.SetSnapshot(s.ctx, ns.id, b.snap); err != nil {
		ns.err, ns.errAt = fmt.Errorf("set snapshot: %w", err), s.cfg.Now()
		s.log.Error("xds set snapshot", "node", ns.id, "err", err)
		return
	}
	ns.versions, ns.served, ns.servedExtra = b.versions, b.nc, b.extra
	s.metrics.rebuilds.Add(1)
	s.log.Debug("xds snapshot set", "node", ns.id, "generation", generation, "version", b.versions)
}

// rebuildAll rebuilds every connected node from view, translating once per
// distinct proxy on a pool of Config.Workers goroutines.
func (s *Server) rebuildAll(view View) {
	s.mu.Lock()
	groups := make(map[translate.Proxy][]*nodeState)
	for _, ns := range s.nodes {
		groups[ns.proxy] = append(groups[ns.proxy], ns)
	}
	s.mu.Unlock()
	if len(groups) == 0 {
		return
	}
	start := time.Now()
	gen := view.Generation()
	jobs := make(chan translate.Proxy)
	var wg sync.WaitGroup
	for range min(s.cfg.Workers, len(groups)) {
		wg.Go(func() {
			for p := range jobs {
				b := s.build(view, p, servedVersions(groups[p]))
				for _, ns := range groups[p] {
					s.apply(ns, gen, b)
				}
			}
		})
	}
	for p := range groups {
		jobs <- p
	}
	close(jobs)
	wg.Wait()
	s.log.Debug("xds rebuilt nodes", "generation", gen, "proxies", len(groups), "took", time.Since(start))
}

// gcpLogger adapts slog to go-control-plane's logger. Its Info messages
// are per-request chatter, so they go to Debug.
type gcpLogger struct{ l *slog.Logger }

func (g gcpLogger) Debugf(format string, args ...any) { g.debugf(format, args...) }
func (g gcpLogger) Infof(format string, args ...any)  { g.debugf(format, args...) }

// debugf formats only when Debug is on: go-control-plane logs every
// response, with resource names, and formatting them is not free.
func (g gcpLogger) debugf(format string, args ...any) {
	if g.l.Enabled(context.Background(), slog.LevelDebug) {
		g.l.Debug(fmt.Sprintf(format, args...))
	}
}
func (g gcpLogger) Warnf(format string, args ...any)  { g.l.Warn(fmt.Sprintf(format, args...)) }
func (g gcpLogger) Errorf(format string, args ...any) { g.l.Error(fmt.Sprintf(format, args...)) }
