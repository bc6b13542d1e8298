package agent

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/identity"
)

// localAccount is a service account with pods on this node.
type localAccount struct {
	ID                        spiffeid.ID
	Namespace, ServiceAccount string
	Pods                      int
}

// localSet is what localAccounts found.
type localSet struct {
	accounts map[string]localAccount // by SPIFFE ID
	pods     map[string][]podRef     // each account's pods, sorted
	// skipped: without a usable SPIFFE ID; reserved: in identity.AgentNamespace.
	skipped, reserved int
}

// localAccounts picks the service accounts of the workloads placed on
// node. A workload without a usable SPIFFE ID (meshd found none, or it
// disagrees with the workload's namespace and service account) is left
// out and counted in skipped. A workload in the mesh's own namespace
// (identity.AgentNamespace: meshd's and the agents' identities) never gets
// an SVID from the agent, whatever it claims: it is counted in reserved.
func localAccounts(node string, ws map[string]*dataplanev1.Workload) localSet {
	set := localSet{accounts: map[string]localAccount{}, pods: map[string][]podRef{}}
	for _, w := range ws {
		if w.GetNode() != node {
			continue
		}
		if w.GetNamespace() == identity.AgentNamespace {
			set.reserved++
			continue
		}
		id, err := spiffeid.FromString(w.GetSpiffeId())
		if err != nil {
			set.skipped++
			continue
		}
		ns, sa, err := identity.ParseWorkloadID(id)
		if err != nil || ns == identity.AgentNamespace || ns != w.GetNamespace() || sa != w.GetServiceAccount() || !validName(ns) || !validName(sa) {
			set.skipped++
			continue
		}
		a := set.accounts[id.String()]
		a.ID, a.Namespace, a.ServiceAccount = id, ns, sa
		a.Pods++
		set.accounts[id.String()] = a
		set.pods[id.String()] = append(set.pods[id.String()], podRef{w.GetNamespace(), w.GetName(), w.GetPodUid()})
	}
	for _, pods := range set.pods {
		slices.SortFunc(pods, func(a, b podRef) int { return strings.Compare(a.String(), b.String()) })
	}
	return set
}

// svidManagerConfig configures the workload SVID manager.
type svidManagerConfig struct {
	Node   string
	Source identity.Source
	// By is how Source is asked (svidRequest's default when empty).
	By SVIDRequest
	// PodCgroup finds a local pod's cgroup (SVIDByPID).
	PodCgroup func(namespace, pod, uid string) string
	// PIDCheck and AttestTimeout: pidSource's check and timeout (default
	// pidCheckInterval and attestTimeout).
	PIDCheck, AttestTimeout time.Duration
	// Dir, when set, receives <ns>/<sa>/{cert-chain,key,root-cert}.pem.
	Dir string
	// Retry is the wait after a failed fetch (identity.RotatorConfig's
	// RetryInterval); BundleRefresh how often the trust bundle is read
	// between renewals.
	Retry, BundleRefresh time.Duration
	Logger               *slog.Logger
}

// svidManager keeps one SVID per service account with pods on the node,
// each renewed by an identity.Rotator before its half-life, and the trust
// bundle. It writes them as files for proxyless gRPC workloads (Dir) and
// serves them as SDS secrets to the node's Envoy (envoy.SecretProvider).
// A failed renewal keeps the current SVID; the last pod of a service
// account leaving drops its SVID and removes its files.
type svidManager struct {
	cfg  svidManagerConfig
	log  *slog.Logger
	kick chan struct{}

	mu        sync.Mutex
	want      map[string]localAccount // set by SetWorkloads
	pods      map[string][]podRef     // set by SetWorkloads: each account's pods
	synced    bool                    // SetWorkloads was called
	skipped   int
	reserved  int
	accounts  map[string]*account // running, by SPIFFE ID
	bundle    *x509bundle.Bundle
	bundleAt  time.Time
	bundleErr string
	secrets   map[string]*tlsv3.Secret
	changed   chan struct{}

	// writeHook, set by tests before Run, runs each write of an account's
	// files (write does it).
	writeHook func(la localAccount, svid *x509svid.SVID, write func() error) error
}

// account is one service account's rotation and what it produced.
type account struct {
	localAccount
	cancel context.CancelFunc
	done   chan struct{}

	// writeMu serialises the writes of this account's files (renewed, on
	// its rotation's goroutine, and refreshBundle, on Run's): each takes
	// the current SVID and bundle under it, so the last write is always of
	// the newest SVID, and key.pem and cert-chain.pem are of the same one.
	// Taken before svidManager.mu, never while holding it.
	writeMu sync.Mutex

	// guarded by svidManager.mu
	rot        *identity.Rotator
	svid       *x509svid.SVID
	updatedAt  time.Time
	renewals   int
	failures   int
	lastErr    string
	lastErrAt  time.Time
	filesError string
	process    string // SVIDByPID: the process attested ("" when none)
}

func newSVIDManager(cfg svidManagerConfig) *svidManager {
	if cfg.Retry <= 0 {
		cfg.Retry = 5 * time.Second
	}
	if cfg.BundleRefresh <= 0 {
		cfg.BundleRefresh = time.Minute
	}
	cfg.By = svidRequest(cfg.By, cfg.Source)
	if cfg.PIDCheck <= 0 {
		cfg.PIDCheck = pidCheckInterval
	}
	if cfg.AttestTimeout <= 0 {
		cfg.AttestTimeout = attestTimeout
	}
	return &svidManager{
		cfg: cfg, log: cfg.Logger.With("part", "workload svids"), kick: make(chan struct{}, 1),
		want: map[string]localAccount{}, pods: map[string][]podRef{}, accounts: map[string]*account{},
		secrets: map[string]*tlsv3.Secret{}, changed: make(chan struct{}),
	}
}

// SetWorkloads takes the workloads of an applied resource set; the
// service accounts of those on this node get SVIDs.
func (m *svidManager) SetWorkloads(ws map[string]*dataplanev1.Workload) {
	set := localAccounts(m.cfg.Node, ws)
	m.mu.Lock()
	same := m.synced && maps.EqualFunc(set.accounts, m.want, func(a, b localAccount) bool { return a == b })
	m.want, m.pods, m.skipped, m.reserved, m.synced = set.accounts, set.pods, set.skipped, set.reserved, true
	m.mu.Unlock()
	if !same {
		select {
		case m.kick <- struct{}{}:
		default:
		}
	}
}

// Run starts and stops rotations as the set of local service accounts
// changes and re-reads the trust bundle every BundleRefresh, until ctx
// ends. Files are left in place on return: the SVIDs stay valid for the
// pods while the agent restarts.
func (m *svidManager) Run(ctx context.Context) error {
	tick := time.NewTicker(m.cfg.BundleRefresh)
	defer tick.Stop()
	m.refreshBundle(ctx)
	pruned := false
	for {
		m.reconcile(ctx)
		if !pruned && m.isSynced() {
			pruned = true
			m.pruneStaleFiles()
		}
		select {
		case <-ctx.Done():
			m.stopAll()
			return nil
		case <-m.kick:
		case <-tick.C:
			m.refreshBundle(ctx)
		}
	}
}

func (m *svidManager) isSynced() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.synced
}

// reconcile starts a rotation for each new local service account and
// drops the ones without pods.
func (m *svidManager) reconcile(ctx context.Context) {
	m.mu.Lock()
	var start []*account
	var stop []*account
	for id, want := range m.want {
		if a, ok := m.accounts[id]; ok {
			a.Pods = want.Pods
			continue
		}
		a := &account{localAccount: want, done: make(chan struct{})}
		m.accounts[id] = a
		start = append(start, a)
	}
	for id, a := range m.accounts {
		if _, ok := m.want[id]; !ok {
			delete(m.accounts, id)
			stop = append(stop, a)
		}
	}
	m.mu.Unlock()
	for _, a := range stop {
		a.cancel()
		<-a.done
		m.log.Info("service account has no pods left on the node; dropping its SVID", "spiffe_id", a.ID)
		if err := m.removeFiles(a.Namespace, a.ServiceAccount); err != nil {
			m.log.Warn("removing workload certificate files", "spiffe_id", a.ID, "error", err)
		}
	}
	for _, a := range start {
		m.startAccount(ctx, a)
	}
	if len(stop) > 0 {
		m.publish()
	}
}

// maxSVIDBackoff caps the wait between failed fetches of one account's
// SVID (identity.RotatorConfig.MaxRetryInterval), below the rotator's 30s
// fetch timeout.
const maxSVIDBackoff = 20 * time.Second

// startAccount runs a rotator for a's SVID, fetches paced by it (Retry
// apart at least, failures backing off to maxSVIDBackoff), and installs
// every SVID it delivers.
func (m *svidManager) startAccount(ctx context.Context, a *account) {
	ctx, a.cancel = context.WithCancel(ctx)
	src, w := m.sourceFor(a)
	rot, err := identity.NewRotator(identity.RotatorConfig{
		Source:           src,
		Workload:         w,
		RetryInterval:    m.cfg.Retry,
		MaxRetryInterval: maxSVIDBackoff,
		OnError:          func(err error) { m.failed(a, err) },
	})
	if err != nil { // only a broken config: Source and Workload are set
		m.failed(a, err)
		close(a.done)
		return
	}
	m.log.Info("service account has pods on the node; getting its SVID", "spiffe_id", a.ID)
	m.mu.Lock()
	a.rot = rot
	m.mu.Unlock()
	sub := rot.Subscribe()
	var wg sync.WaitGroup
	wg.Go(func() { _ = rot.Run(ctx) })
	go func() {
		defer close(a.done)
		defer wg.Wait()
		defer sub.Close()
		for {
			upd, err := sub.Next(ctx)
			if err != nil {
				return
			}
			m.renewed(a, upd)
		}
	}()
}

// sourceFor is how an account's SVID is asked for (svidManagerConfig.By).
func (m *svidManager) sourceFor(a *account) (identity.Source, identity.Workload) {
	switch m.cfg.By {
	case SVIDBySelectors:
		return m.cfg.Source, identity.Workload{ID: a.ID, Selectors: []identity.Selector{
			{Type: "k8s", Value: "ns:" + a.Namespace}, {Type: "k8s", Value: "sa:" + a.ServiceAccount}}}
	case SVIDByPID:
		if w, ok := m.cfg.Source.(identity.Watcher); ok {
			return &pidSource{src: w, pods: func() []podRef { return m.podsOf(a.ID.String()) }, cgroup: m.cfg.PodCgroup,
				onPick: func(desc string) { m.picked(a, desc) }, check: m.cfg.PIDCheck, timeout: m.cfg.AttestTimeout}, identity.Workload{ID: a.ID}
		}
	}
	return m.cfg.Source, identity.Workload{ID: a.ID}
}

func (m *svidManager) podsOf(id string) []podRef {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.pods[id])
}

func (m *svidManager) picked(a *account, desc string) {
	m.mu.Lock()
	changed := a.process != desc
	a.process = desc
	m.mu.Unlock()
	if changed && desc != "" {
		m.log.Info("asking SPIRE for the SVID of a process of the service account's pods", "spiffe_id", a.ID, "process", desc)
	}
}

func (m *svidManager) failed(a *account, err error) {
	m.mu.Lock()
	a.failures++
	a.lastErr, a.lastErrAt = err.Error(), time.Now()
	held := a.svid != nil
	m.mu.Unlock()
	m.log.Warn("getting workload SVID failed; retrying", "spiffe_id", a.ID, "keeps_current", held, "error", err)
}

// renewed takes a new SVID (and the bundle that came with it): files,
// secrets, status.
func (m *svidManager) renewed(a *account, upd identity.Update) {
	a.writeMu.Lock()
	defer a.writeMu.Unlock()
	m.mu.Lock()
	if upd.Bundle != nil && (m.bundle == nil || !m.bundle.Equal(upd.Bundle)) {
		m.bundle, m.bundleAt, m.bundleErr = upd.Bundle, time.Now(), ""
	}
	bundle := m.bundle
	a.svid, a.updatedAt = upd.SVID, time.Now()
	a.renewals++
	a.lastErr = ""
	la := a.localAccount
	m.mu.Unlock()
	err := m.writeFiles(la, upd.SVID, bundle)
	m.mu.Lock()
	a.filesError = errString(err)
	m.mu.Unlock()
	leaf := upd.SVID.Certificates[0]
	m.log.Info("workload SVID renewed", "spiffe_id", a.ID, "serial", leaf.SerialNumber.String(), "not_after", leaf.NotAfter)
	if err != nil {
		m.log.Error("writing workload certificate files", "spiffe_id", a.ID, "error", err)
	}
	m.publish()
}

// refreshBundle reads the source's trust bundle; a change rewrites every
// root-cert.pem and the bundle secret. A failure keeps the current one.
func (m *svidManager) refreshBundle(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	b, err := m.cfg.Source.TrustBundle(ctx)
	if err == nil && b == nil {
		err = errors.New("source returned no trust bundle")
	}
	m.mu.Lock()
	if err != nil {
		m.bundleErr = err.Error()
		m.mu.Unlock()
		m.log.Warn("reading the trust bundle failed; keeping the current one", "error", err)
		return
	}
	m.bundleErr = ""
	if m.bundle != nil && m.bundle.Equal(b) {
		m.mu.Unlock()
		return
	}
	m.bundle, m.bundleAt = b, time.Now()
	accounts := slices.Collect(maps.Values(m.accounts))
	m.mu.Unlock()
	m.log.Info("trust bundle changed", "trust_domain", b.TrustDomain(), "roots", len(b.X509Authorities()))
	for _, a := range accounts {
		m.rewriteBundle(a)
	}
	m.publish()
}

// rewriteBundle writes an account's files again with the current bundle.
// The SVID is read under the account's write lock: one renewed since
// refreshBundle listed the accounts is the one written, never an older.
func (m *svidManager) rewriteBundle(a *account) {
	a.writeMu.Lock()
	defer a.writeMu.Unlock()
	m.mu.Lock()
	la, svid, bundle := a.localAccount, a.svid, m.bundle
	m.mu.Unlock()
	if svid == nil {
		return
	}
	if err := m.writeFiles(la, svid, bundle); err != nil {
		m.log.Error("writing workload certificate files", "spiffe_id", la.ID, "error", err)
	}
}

func (m *svidManager) stopAll() {
	m.mu.Lock()
	accounts := slices.Collect(maps.Values(m.accounts))
	m.mu.Unlock()
	for _, a := range accounts {
		a.cancel()
		<-a.done
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// SVIDStatus is one local service account's SVID.
type SVIDStatus struct {
	SPIFFEID       string    `json:"spiffeID"`
	Namespace      string    `json:"namespace"`
	ServiceAccount string    `json:"serviceAccount"`
	Pods           int       `json:"pods"`
	Serial         string    `json:"serial,omitempty"`
	NotBefore      time.Time `json:"notBefore,omitzero"`
	NotAfter       time.Time `json:"notAfter,omitzero"`
	UpdatedAt      time.Time `json:"updatedAt,omitzero"`
	Renewals       int       `json:"renewals"`
	Failures       int       `json:"failures"`
	LastError      string    `json:"lastError,omitempty"` // of the last failed fetch; cleared by a success
	LastErrorAt    time.Time `json:"lastErrorAt,omitzero"`
	FilesError     string    `json:"filesError,omitempty"`
	// Process is the process SPIRE attests for the SVID (by PID), e.g.
	// "pid 42 of pod shop/web-0".
	Process string `json:"process,omitempty"`
}

// WorkloadSVIDStatus is the workload SVID manager on /status.
type WorkloadSVIDStatus struct {
	CertsDir    string       `json:"certsDir,omitempty"`
	RequestBy   SVIDRequest  `json:"requestBy"` // how the source is asked: id, pid or selectors
	TrustDomain string       `json:"trustDomain,omitempty"`
	Roots       int          `json:"roots"`
	BundleAt    time.Time    `json:"bundleAt,omitzero"`
	BundleError string       `json:"bundleError,omitempty"`
	Skipped     int          `json:"skippedWorkloads,omitempty"`  // local workloads without a usable SPIFFE ID
	Reserved    int          `json:"reservedWorkloads,omitempty"` // local workloads in identity.AgentNamespace: never given an SVID
	Accounts    []SVIDStatus `json:"accounts"`
}

// Status reports the bundle and each local service account's SVID.
func (m *svidManager) Status() WorkloadSVIDStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := WorkloadSVIDStatus{CertsDir: m.cfg.Dir, RequestBy: m.cfg.By, BundleAt: m.bundleAt, BundleError: m.bundleErr, Skipped: m.skipped, Reserved: m.reserved, Accounts: []SVIDStatus{}}
	if m.bundle != nil {
		st.TrustDomain, st.Roots = m.bundle.TrustDomain().Name(), len(m.bundle.X509Authorities())
	}
	for _, a := range m.accounts {
		s := SVIDStatus{SPIFFEID: a.ID.String(), Namespace: a.Namespace, ServiceAccount: a.ServiceAccount, Pods: a.Pods,
			UpdatedAt: a.updatedAt, Renewals: a.renewals, Failures: a.failures, LastError: a.lastErr, LastErrorAt: a.lastErrAt, FilesError: a.filesError, Process: a.process}
		if a.svid != nil {
			leaf := a.svid.Certificates[0]
			s.Serial, s.NotBefore, s.NotAfter = leaf.SerialNumber.String(), leaf.NotBefore, leaf.NotAfter
		}
		st.Accounts = append(st.Accounts, s)
	}
	slices.SortFunc(st.Accounts, func(a, b SVIDStatus) int { return strings.Compare(a.SPIFFEID, b.SPIFFEID) })
	return st
}
