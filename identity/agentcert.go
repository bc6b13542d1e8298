package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
)

// AgentCert modes (AgentCertStatus.Mode).
const (
	AgentCertFiles = "files"
	AgentCertToken = "token"
)

// AgentCertConfig configures AgentCert. TrustDomain, Node and RootsFile are
// required, and exactly one of the two ways to get the certificate:
//   - files: CertFile and KeyFile, written by someone else (meshd
//     --bootstrap-agents, a secret mount);
//   - token: TokenFile, Address and ServerID: the agent has its own key
//     signed by meshd's CreateCertificate, authenticated by the bearer token
//     in TokenFile, and renews it.
type AgentCertConfig struct {
	TrustDomain spiffeid.TrustDomain
	// Node is the agent's node; the certificate must be bound to it
	// (AgentNode).
	Node string
	// RootsFile holds the PEM roots that verify meshd (and, in files mode,
	// the agent's own certificate). Re-read whenever it changes: kubelet
	// updates a ConfigMap mount when the CA's roots rotate.
	RootsFile string

	// CertFile (chain, leaf first) and KeyFile (PKCS#8) are re-read
	// whenever either changes.
	CertFile, KeyFile string

	// TokenFile holds the bearer token, read again for every request
	// (kubelet rotates projected service account tokens).
	TokenFile string
	// Address is meshd's gRPC address (host:port) for CreateCertificate.
	Address string
	// ServerID is the SPIFFE ID meshd must present (xds.ControlPlaneID).
	ServerID spiffeid.ID
	// DialOptions are added to the CreateCertificate connections (the
	// transport credentials are AgentCert's own).
	DialOptions []grpc.DialOption
	// TTL asked for; zero lets meshd choose (meshd --svid-ttl).
	TTL time.Duration
	// FetchTimeout bounds one CreateCertificate call (default 30s).
	FetchTimeout time.Duration
	// RetryMin and RetryMax bound the backoff after a failed renewal
	// (defaults 1s and 1m; doubled per consecutive failure).
	RetryMin, RetryMax time.Duration

	// PollInterval is how often Run checks the files and whether the
	// certificate is due for renewal (default 1s).
	PollInterval time.Duration
	// Now is the clock of every renewal decision and certificate check
	// (default time.Now).
	Now func() time.Time
	// OnError, if set, is told about every failed reload or renewal; the
	// current certificate stays in use. OnChange, if set, is told about
	// every new certificate or roots. Neither may block for long.
	OnError  func(error)
	OnChange func(AgentCertStatus)
}

// Mode is AgentCertToken or AgentCertFiles ("" when neither is set).
func (c AgentCertConfig) Mode() string {
	switch {
	case c.TokenFile != "":
		return AgentCertToken
	case c.CertFile != "" || c.KeyFile != "":
		return AgentCertFiles
	}
	return ""
}

// Validate reports an unusable configuration.
func (c AgentCertConfig) Validate() error {
	var errs []error
	if c.TrustDomain.IsZero() {
		errs = append(errs, errors.New("no TrustDomain"))
	}
	if err := ValidNodeName(c.Node); err != nil {
		errs = append(errs, fmt.Errorf("Node: %w", err))
	}
	if c.RootsFile == "" {
		errs = append(errs, errors.New("no RootsFile"))
	}
	switch c.Mode() {
	case "":
		errs = append(errs, errors.New("neither TokenFile nor CertFile and KeyFile"))
	case AgentCertFiles:
		if c.CertFile == "" || c.KeyFile == "" {
			errs = append(errs, errors.New("CertFile and KeyFile go together"))
		}
	case AgentCertToken:
		if c.CertFile != "" || c.KeyFile != "" {
			errs = append(errs, errors.New("TokenFile excludes CertFile and KeyFile"))
		}
		if c.Address == "" {
			errs = append(errs, errors.New("TokenFile needs Address"))
		}
		if c.ServerID.IsZero() {
			errs = append(errs, errors.New("TokenFile needs ServerID"))
		}
	}
	for name, d := range map[string]time.Duration{"TTL": c.TTL, "FetchTimeout": c.FetchTimeout,
		"RetryMin": c.RetryMin, "RetryMax": c.RetryMax, "PollInterval": c.PollInterval} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s %s is negative", name, d))
		}
	}
	if c.RetryMin > 0 && c.RetryMax > 0 && c.RetryMin > c.RetryMax {
		errs = append(errs, fmt.Errorf("RetryMin %s exceeds RetryMax %s", c.RetryMin, c.RetryMax))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("agent cert config: %w", err)
	}
	return nil
}

func (c AgentCertConfig) withDefaults() AgentCertConfig {
	if c.FetchTimeout == 0 {
		c.FetchTimeout = 30 * time.Second
	}
	if c.RetryMin == 0 {
		c.RetryMin = time.Second
	}
	if c.RetryMax == 0 {
		c.RetryMax = max(time.Minute, c.RetryMin)
	}
	c.RetryMin = min(c.RetryMin, c.RetryMax)
	if c.PollInterval == 0 {
		c.PollInterval = time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// AgentCertStatus is what the agent's status page shows of its
// credentials.
type AgentCertStatus struct {
	Mode string `json:"mode"`
	// Current certificate; zero before the first one.
	ID        string    `json:"spiffeId,omitempty"`
	Node      string    `json:"node,omitempty"`
	Serial    string    `json:"serial,omitempty"`
	NotBefore time.Time `json:"notBefore,omitzero"`
	NotAfter  time.Time `json:"notAfter,omitzero"`
	// Via is how the current certificate came: "files", "token" or "mtls"
	// (renewed with the previous certificate).
	Via string `json:"via,omitempty"`
	// Updates counts certificates installed (bootstrap, renewals, reloads).
	Updates int `json:"updates"`
	// Roots is the number of trusted roots.
	Roots int `json:"roots"`
	// Failures counts consecutive failed renewals; NextAttempt is when the
	// next one is tried after a failure.
	Failures    int       `json:"failures,omitempty"`
	NextAttempt time.Time `json:"nextAttempt,omitzero"`
	// LastError is the most recent failed reload or renewal (or failed
	// renewal over mTLS that the token made up for), at LastErrorAt; it
	// stays after later successes.
	LastError   string    `json:"lastError,omitempty"`
	LastErrorAt time.Time `json:"lastErrorAt,omitzero"`
}

// AgentCert is a node agent's credentials for its connection to meshd: an
// x509svid.Source and x509bundle.Source whose contents change as the
// certificate is renewed or its files or the roots file change, so that
// every new TLS handshake (tlsconfig.MTLSClientConfig, xds.AgentClientTLS)
// uses the current ones. In token mode the agent generates an ECDSA P-256
// key, sends a CSR without names and the bearer token to meshd over TLS
// that verifies meshd's ServerID, and renews at half of the lifetime
// (NeedsRotation, counted from the certificate's arrival): over mTLS with
// the still-valid current certificate (meshd keeps its node binding), else
// with the token again. A failed renewal or reload never drops a
// certificate that is still valid.
type AgentCert struct {
	cfg    AgentCertConfig
	issued chan struct{} // closed at the first certificate
	once   sync.Once

	mu          sync.RWMutex
	svid        *x509svid.SVID
	bundle      *x509bundle.Bundle
	st          AgentCertStatus
	forceRenew  bool      // the roots changed and no longer verify the certificate
	received    time.Time // when the current certificate was installed
	rootsStamp  fileStamp
	certStamp   fileStamp
	keyStamp    fileStamp
	nextAttempt time.Time
}

// NewAgentCert checks cfg and reads the roots (and in files mode the
// certificate and key; in token mode it checks that the token file is
// readable): an error names the file. In token mode the first certificate
// is fetched by Run.
func NewAgentCert(cfg AgentCertConfig) (*AgentCert, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &AgentCert{cfg: cfg.withDefaults(), issued: make(chan struct{})}
	a.st.Mode = cfg.Mode()
	if _, err := a.reloadRoots(); err != nil {
		return nil, err
	}
	switch a.st.Mode {
	case AgentCertFiles:
		if _, err := a.reloadFiles(); err != nil {
			return nil, err
		}
	case AgentCertToken:
		if _, err := readToken(cfg.TokenFile); err != nil {
			return nil, fmt.Errorf("agent cert: %w", err)
		}
	}
	return a, nil
}

// Run keeps the credentials current until ctx ends: it re-reads changed
// files and, in token mode, fetches the first certificate and renews it.
// Errors go to OnError and Status; Run returns nil when ctx ends.
func (a *AgentCert) Run(ctx context.Context) error {
	t := time.NewTicker(a.cfg.PollInterval)
	defer t.Stop()
	for {
		a.check(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// check is one round of Run.
func (a *AgentCert) check(ctx context.Context) {
	if changed, err := a.reloadRoots(); err != nil {
		a.fail(err)
	} else if changed {
		a.changed()
	}
	if a.st.Mode == AgentCertFiles {
		if changed, err := a.reloadFiles(); err != nil {
			a.fail(err)
		} else if changed {
			a.changed()
		}
		return
	}
	now := a.cfg.Now()
	if !a.renewalDue(now) {
		return
	}
	if err := a.renew(ctx, now); err != nil {
		a.mu.Lock()
		a.st.Failures++
		a.nextAttempt = now.Add(a.backoff(a.st.Failures))
		a.st.NextAttempt = a.nextAttempt
		a.mu.Unlock()
		a.fail(err)
		return
	}
	a.changed()
}

// renewalDue: no certificate yet, half of its lifetime passed, or the
// roots no longer verify it; and no failed attempt's backoff pending.
func (a *AgentCert) renewalDue(now time.Time) bool {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if now.Before(a.nextAttempt) {
		return false
	}
	return a.svid == nil || a.forceRenew || pastHalfLife(a.svid.Certificates[0], a.received, now)
}

// pastHalfLife is NeedsRotation with the lifetime counted from when the
// certificate arrived if that is after its NotBefore: the CA backdates
// NotBefore by a minute, which would make a certificate of less than two
// minutes due at once, and renewed on every round.
func pastHalfLife(cert *x509.Certificate, received, now time.Time) bool {
	start := cert.NotBefore
	if received.After(start) {
		start = received
	}
	return !now.Before(start.Add(cert.NotAfter.Sub(start) / 2))
}

func (a *AgentCert) backoff(failures int) time.Duration {
	d := a.cfg.RetryMin
	for i := 1; i < failures && d < a.cfg.RetryMax; i++ {
		d *= 2
	}
	return min(d, a.cfg.RetryMax)
}

// Issued is closed once there is a certificate (at once in files mode):
// wait on it before dialling meshd to spare the first handshake a failure.
func (a *AgentCert) Issued() <-chan struct{} { return a.issued }

// install makes svid the current certificate.
func (a *AgentCert) install(svid *x509svid.SVID, via string) {
	leaf := svid.Certificates[0]
	node, _ := AgentNode(leaf, a.cfg.TrustDomain)
	a.mu.Lock()
	defer a.mu.Unlock()
	defer a.once.Do(func() { close(a.issued) })
	a.svid, a.received = svid, a.cfg.Now()
	a.forceRenew = false
	a.nextAttempt = time.Time{}
	a.st.ID, a.st.Node, a.st.Serial = svid.ID.String(), node, leaf.SerialNumber.Text(16)
	a.st.NotBefore, a.st.NotAfter = leaf.NotBefore.UTC(), leaf.NotAfter.UTC()
	a.st.Via = via
	a.st.Updates++
	a.st.Failures, a.st.NextAttempt = 0, time.Time{}
}

func (a *AgentCert) fail(err error) {
	a.mu.Lock()
	a.st.LastError, a.st.LastErrorAt = err.Error(), a.cfg.Now().UTC()
	a.mu.Unlock()
	if a.cfg.OnError != nil {
		a.cfg.OnError(err)
	}
}

func (a *AgentCert) changed() {
	if a.cfg.OnChange != nil {
		a.cfg.OnChange(a.Status())
	}
}

// Status returns the current certificate and the last error. Safe for
// concurrent use.
func (a *AgentCert) Status() AgentCertStatus {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.st
}

// GetX509SVID implements x509svid.Source: the current certificate, or an
// error when there is none yet or it has expired.
func (a *AgentCert) GetX509SVID() (*x509svid.SVID, error) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.svid == nil {
		return nil, fmt.Errorf("agent certificate for node %q: none yet (last error: %s)", a.cfg.Node, orNone(a.st.LastError))
	}
	if leaf := a.svid.Certificates[0]; !a.cfg.Now().Before(leaf.NotAfter) {
		return nil, fmt.Errorf("agent certificate for node %q expired at %s (last error: %s)", a.cfg.Node, leaf.NotAfter.UTC().Format(time.RFC3339), orNone(a.st.LastError))
	}
	return a.svid, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source: the roots of
// RootsFile, for the configured trust domain only.
func (a *AgentCert) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != a.cfg.TrustDomain {
		return nil, fmt.Errorf("agent cert: no roots for trust domain %s (have %s)", td, a.cfg.TrustDomain)
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.bundle, nil
}

// verifyAgentSVID checks that chain verifies against bundle at now, is the
// agent identity and is bound to node.
func verifyAgentSVID(chain []*x509.Certificate, bundle *x509bundle.Bundle, td spiffeid.TrustDomain, node string, now time.Time) error {
	id, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(now))
	if err != nil {
		return err
	}
	if want := AgentID(td); id != want {
		return fmt.Errorf("certificate is for %s, want %s", id, want)
	}
	got, err := AgentNode(chain[0], td)
	if err != nil {
		return err
	}
	if got != node {
		return fmt.Errorf("certificate is bound to node %q, this agent is node %q", got, node)
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
