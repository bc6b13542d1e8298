package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// fakeClock is AgentCertConfig.Now (and the CA's) under the test's control.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fileClock gives every write a later modification time, as real rewrites
// have (two writes within the file system's timestamp granularity would
// otherwise look the same when their sizes match).
var fileClock = struct {
	sync.Mutex
	t time.Time
}{t: time.Now().Add(-time.Hour)}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	fileClock.Lock()
	fileClock.t = fileClock.t.Add(time.Second)
	mod := fileClock.t
	fileClock.Unlock()
	if err := os.Chtimes(path, mod, mod); err != nil {
		t.Fatal(err)
	}
}

func writeRoots(t *testing.T, path string, ca *CA) {
	t.Helper()
	writeFile(t, path, EncodeCertsPEM(ca.Bundle().X509Authorities()))
}

var testTD = spiffeid.RequireTrustDomainFromString("cluster.local")

// tokenAgent is a token-mode AgentCert for node-a against the CertService
// at addr, with its roots and token in dir.
func tokenAgent(t *testing.T, ca *CA, addr string, clock *fakeClock) (*AgentCert, string) {
	t.Helper()
	dir := t.TempDir()
	writeRoots(t, filepath.Join(dir, "roots.pem"), ca)
	writeFile(t, filepath.Join(dir, "token"), []byte("tok-a\n"))
	a, err := NewAgentCert(AgentCertConfig{TrustDomain: testTD, Node: "node-a",
		RootsFile: filepath.Join(dir, "roots.pem"), TokenFile: filepath.Join(dir, "token"),
		Address: addr, ServerID: mustWorkloadID(t, AgentNamespace, "meshd"), TTL: 10 * time.Minute, Now: clock.Now})
	if err != nil {
		t.Fatalf("NewAgentCert: %v", err)
	}
	return a, dir
}

func currentSerial(t *testing.T, a *AgentCert) string {
	t.Helper()
	svid, err := a.GetX509SVID()
	if err != nil {
		t.Fatalf("GetX509SVID: %v", err)
	}
	return svid.Certificates[0].SerialNumber.Text(16)
}

// checkStatus runs one round and checks how the current certificate came.
func checkStatus(t *testing.T, a *AgentCert, wantVia string, wantUpdates int) AgentCertStatus {
	t.Helper()
	a.check(t.Context())
	st := a.Status()
	if st.Via != wantVia || st.Updates != wantUpdates || st.Node != "node-a" {
		t.Fatalf("status = via %q, %d updates, node %q (last error %q); want via %q, %d updates, node-a",
			st.Via, st.Updates, st.Node, st.LastError, wantVia, wantUpdates)
	}
	return st
}

// Bootstrap by token, renewal over mTLS at the half-life (with the token:
// a revoked one stops renewal, keeping the current certificate), fallback
// to the token after expiry, with backoff.
func TestAgentCertTokenBootstrapRenewExpire(t *testing.T) {
	clock := newFakeClock()
	ca := newTestCA(t, CAConfig{Now: clock.Now})
	svc, err := NewCertService(CertServiceConfig{Signer: ca, Tokens: tokenTable{"tok-a": "node-a"}})
	if err != nil {
		t.Fatal(err)
	}
	a, dir := tokenAgent(t, ca, startTokenCertService(t, ca, svc), clock)
	if _, err := a.GetX509SVID(); err == nil || !strings.Contains(err.Error(), "none yet") {
		t.Fatalf("GetX509SVID before the first fetch = %v; want none yet", err)
	}

	select {
	case <-a.Issued():
		t.Fatal("Issued closed before the first certificate")
	default:
	}
	checkStatus(t, a, AgentCertToken, 1)
	first := currentSerial(t, a)
	select {
	case <-a.Issued():
	default:
		t.Fatal("Issued not closed after the first certificate")
	}

	// 10m TTL: the half-life is 5m after the fetch (the CA's 1m backdate
	// does not count).
	clock.Add(4*time.Minute + 59*time.Second)
	checkStatus(t, a, AgentCertToken, 1)
	if got := currentSerial(t, a); got != first {
		t.Fatalf("renewed before the half-life: serial %s -> %s", first, got)
	}

	writeFile(t, filepath.Join(dir, "token"), []byte("revoked"))
	clock.Add(time.Second)
	a.check(t.Context())
	if st := a.Status(); st.Updates != 1 || st.Failures != 1 || !strings.Contains(st.LastError, "over mtls") {
		t.Fatalf("renewal with a revoked token: updates %d, failures %d, last error %q; want refused over mtls too", st.Updates, st.Failures, st.LastError)
	}
	if got := currentSerial(t, a); got != first {
		t.Fatalf("a refused renewal replaced the certificate: %s -> %s", first, got)
	}
	writeFile(t, filepath.Join(dir, "token"), []byte("tok-a"))
	clock.Add(time.Second) // past the backoff
	checkStatus(t, a, "mtls", 2)
	second := currentSerial(t, a)
	if second == first {
		t.Fatal("mtls renewal kept the serial")
	}

	// Past NotAfter the certificate is useless for mTLS: the token it is,
	// and the revoked one fails.
	writeFile(t, filepath.Join(dir, "token"), []byte("revoked"))
	clock.Add(11 * time.Minute)
	if _, err := a.GetX509SVID(); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("GetX509SVID after NotAfter = %v; want expired", err)
	}
	a.check(t.Context())
	st := a.Status()
	if st.Failures != 1 || !strings.Contains(st.LastError, "token") || strings.Contains(st.LastError, "over mtls") {
		t.Fatalf("after expiry with a bad token: failures %d, last error %q; want 1 and a token error only", st.Failures, st.LastError)
	}
	if want := clock.Now().Add(time.Second); !st.NextAttempt.Equal(want) {
		t.Fatalf("next attempt %s; want %s (RetryMin)", st.NextAttempt, want)
	}

	writeFile(t, filepath.Join(dir, "token"), []byte("tok-a"))
	a.check(t.Context()) // within the backoff: nothing happens
	if st := a.Status(); st.Updates != 2 || st.Failures != 1 {
		t.Fatalf("within the backoff: updates %d, failures %d; want 2, 1", st.Updates, st.Failures)
	}
	clock.Add(time.Second)
	checkStatus(t, a, AgentCertToken, 3)
	if got := currentSerial(t, a); got == second {
		t.Fatal("token renewal kept the serial")
	}
	if st := a.Status(); st.Failures != 0 || !st.NextAttempt.IsZero() {
		t.Fatalf("after success: failures %d, next attempt %s; want reset", st.Failures, st.NextAttempt)
	}
}

// A failed mTLS renewal falls back to the token at once.
func TestAgentCertMTLSFailureFallsBackToToken(t *testing.T) {
	clock := newFakeClock()
	ca := newTestCA(t, CAConfig{Now: clock.Now})
	noMTLS := AuthorizerFunc(func(_ context.Context, c Caller, requested spiffeid.ID) error {
		if len(c.Certificates) > 0 {
			return errors.New("renewal over mtls refused by this test")
		}
		return AuthorizeSelf().AuthorizeSVID(context.Background(), c, requested)
	})
	svc, err := NewCertService(CertServiceConfig{Signer: ca, Authorizer: noMTLS, Tokens: tokenTable{"tok-a": "node-a"}})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := tokenAgent(t, ca, startTokenCertService(t, ca, svc), clock)
	checkStatus(t, a, AgentCertToken, 1)
	clock.Add(5 * time.Minute)
	st := checkStatus(t, a, AgentCertToken, 2)
	if st.Failures != 0 || !strings.Contains(st.LastError, "with the token: over mtls") || !strings.Contains(st.LastError, "refused by this test") {
		t.Fatalf("failures %d, last error %q; want none and the mtls failure reported", st.Failures, st.LastError)
	}
}

func TestPastHalfLife(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cert := &x509.Certificate{NotBefore: nb, NotAfter: nb.Add(100 * time.Second)}
	for _, tc := range []struct {
		name          string
		received, now time.Time
		want          bool
	}{
		{"fresh", nb, nb.Add(49 * time.Second), false},
		{"half", nb, nb.Add(50 * time.Second), true},
		{"backdated: counted from arrival", nb.Add(60 * time.Second), nb.Add(79 * time.Second), false},
		{"backdated: half of the rest", nb.Add(60 * time.Second), nb.Add(80 * time.Second), true},
		{"arrival before NotBefore", nb.Add(-time.Hour), nb.Add(50 * time.Second), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := pastHalfLife(cert, tc.received, tc.now); got != tc.want {
				t.Errorf("pastHalfLife = %v; want %v", got, tc.want)
			}
		})
	}
}

func TestAgentCertBackoff(t *testing.T) {
	a := &AgentCert{cfg: AgentCertConfig{RetryMin: time.Second, RetryMax: 10 * time.Second}}
	for failures, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 5: 10 * time.Second, 40: 10 * time.Second} {
		if got := a.backoff(failures); got != want {
			t.Errorf("backoff(%d) = %s; want %s", failures, got, want)
		}
	}
}

func TestAgentCertConfigValidate(t *testing.T) {
	meshd := spiffeid.RequireFromString("spiffe://cluster.local/ns/nodemesh-system/sa/meshd")
	token := AgentCertConfig{TrustDomain: testTD, Node: "node-a", RootsFile: "r", TokenFile: "t", Address: "a:1", ServerID: meshd}
	files := AgentCertConfig{TrustDomain: testTD, Node: "node-a", RootsFile: "r", CertFile: "c", KeyFile: "k"}
	for _, tc := range []struct {
		name string
		cfg  func(AgentCertConfig) AgentCertConfig
		base AgentCertConfig
		want string // "" = valid
	}{
		{"token", func(c AgentCertConfig) AgentCertConfig { return c }, token, ""},
		{"files", func(c AgentCertConfig) AgentCertConfig { return c }, files, ""},
		{"no mode", func(c AgentCertConfig) AgentCertConfig { c.CertFile, c.KeyFile = "", ""; return c }, files, "neither TokenFile"},
		{"cert without key", func(c AgentCertConfig) AgentCertConfig { c.KeyFile = ""; return c }, files, "go together"},
		{"token and files", func(c AgentCertConfig) AgentCertConfig { c.CertFile = "c"; return c }, token, "excludes"},
		{"token without address", func(c AgentCertConfig) AgentCertConfig { c.Address = ""; return c }, token, "needs Address"},
		{"token without server id", func(c AgentCertConfig) AgentCertConfig { c.ServerID = spiffeid.ID{}; return c }, token, "needs ServerID"},
		{"no roots", func(c AgentCertConfig) AgentCertConfig { c.RootsFile = ""; return c }, files, "no RootsFile"},
		{"bad node", func(c AgentCertConfig) AgentCertConfig { c.Node = "Node_A"; return c }, files, "Node"},
		{"no trust domain", func(c AgentCertConfig) AgentCertConfig { c.TrustDomain = spiffeid.TrustDomain{}; return c }, files, "TrustDomain"},
		{"negative ttl", func(c AgentCertConfig) AgentCertConfig { c.TTL = -time.Second; return c }, token, "TTL -1s"},
		{"retry min over max", func(c AgentCertConfig) AgentCertConfig { c.RetryMin, c.RetryMax = time.Minute, time.Second; return c }, token, "RetryMin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg(tc.base).Validate()
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Validate() = %v; want %q", err, tc.want)
			}
		})
	}
}

// NewAgentCert's errors name the file at fault.
func TestAgentCertNewNamesTheFile(t *testing.T) {
	ca := newTestCA(t, CAConfig{Now: time.Now})
	dir := t.TempDir()
	roots := filepath.Join(dir, "roots.pem")
	writeRoots(t, roots, ca)
	writeFile(t, filepath.Join(dir, "empty"), nil)
	writeFile(t, filepath.Join(dir, "garbage"), []byte("not pem"))
	meshd := mustWorkloadID(t, AgentNamespace, "meshd")
	for _, tc := range []struct {
		name       string
		roots, tok string
		want       string
	}{
		{"missing roots", filepath.Join(dir, "nope.pem"), filepath.Join(dir, "empty"), "roots file " + filepath.Join(dir, "nope.pem")},
		{"garbage roots", filepath.Join(dir, "garbage"), filepath.Join(dir, "empty"), "roots file " + filepath.Join(dir, "garbage")},
		{"empty roots", filepath.Join(dir, "empty"), filepath.Join(dir, "empty"), "roots file " + filepath.Join(dir, "empty") + ": no PEM certificate"},
		{"missing token", roots, filepath.Join(dir, "nope"), filepath.Join(dir, "nope")},
		{"empty token", roots, filepath.Join(dir, "empty"), "token file " + filepath.Join(dir, "empty") + " is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewAgentCert(AgentCertConfig{TrustDomain: testTD, Node: "node-a", RootsFile: tc.roots,
				TokenFile: tc.tok, Address: "127.0.0.1:1", ServerID: meshd})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewAgentCert = %v; want an error containing %q", err, tc.want)
			}
		})
	}
}

func marshalSVID(t *testing.T, svid *x509svid.SVID) (chain, key []byte) {
	t.Helper()
	chain, key, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return chain, key
}
