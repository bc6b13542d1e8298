package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/identity"
)

// svidTTL makes the built-in CA's SVIDs renew about 5s after issue: the CA
// backdates NotBefore by TTL/10 (1.5s), so the lifetime is 16.5s and the
// rotator renews at 40% of it, 6.6s after NotBefore; the SVID expires 15s
// after issue.
const svidTTL = 15 * time.Second

// fakeSource is the built-in CA as an identity.Source that can fail on
// demand and refuses identities, as meshd refuses a node the SVIDs of
// pods that are not on it.
type fakeSource struct {
	ca *identity.CA

	mu      sync.Mutex
	fail    error
	refuse  map[spiffeid.ID]bool
	fetches map[spiffeid.ID]int
	last    map[spiffeid.ID]identity.Workload
}

func newFakeSource(t *testing.T) *fakeSource {
	t.Helper()
	ca, err := identity.NewCA(identity.CAConfig{SVIDTTL: svidTTL})
	if err != nil {
		t.Fatal(err)
	}
	return &fakeSource{ca: ca, refuse: map[spiffeid.ID]bool{}, fetches: map[spiffeid.ID]int{}, last: map[spiffeid.ID]identity.Workload{}}
}

func (f *fakeSource) SVIDFor(ctx context.Context, w identity.Workload) (*x509svid.SVID, error) {
	f.mu.Lock()
	f.fetches[w.ID]++
	f.last[w.ID] = w
	err := f.fail
	if f.refuse[w.ID] {
		err = errors.New("permission denied: node runs no pod with identity " + w.ID.String())
	}
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return f.ca.SVIDFor(ctx, w)
}

func (f *fakeSource) TrustBundle(ctx context.Context) (*x509bundle.Bundle, error) {
	f.mu.Lock()
	err := f.fail
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return f.ca.TrustBundle(ctx)
}

func (f *fakeSource) setFail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = err
}

func (f *fakeSource) count(id spiffeid.ID) (int, identity.Workload) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fetches[id], f.last[id]
}

func workload(ns, name, sa, node string) *dataplanev1.Workload {
	id, _ := identity.WorkloadID(identity.DefaultTrustDomain, ns, sa)
	return &dataplanev1.Workload{Namespace: ns, Name: name, SpiffeId: id.String(), ServiceAccount: sa, Node: node, Ips: []string{"10.1.0.1"}}
}

func wid(t *testing.T, ns, sa string) spiffeid.ID {
	t.Helper()
	id, err := identity.WorkloadID(identity.DefaultTrustDomain, ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestLocalAccounts(t *testing.T) {
	mismatched := workload("shop", "odd-0", "web", "node-a")
	mismatched.ServiceAccount = "db"
	// A pod of the mesh's namespace claiming meshd's identity, and one in
	// another namespace whose SPIFFE ID names meshd's.
	meshd := workload(identity.AgentNamespace, "meshd-0", "meshd", "node-a")
	agentID := workload("shop", "sneaky-0", "mesh-agent", "node-a")
	agentID.SpiffeId = "spiffe://cluster.local/ns/" + identity.AgentNamespace + "/sa/mesh-agent"
	for _, tc := range []struct {
		name     string
		ws       map[string]*dataplanev1.Workload
		want     map[string]int // SPIFFE ID -> pods
		skipped  int
		reserved int
	}{
		{"pods of one service account count once", map[string]*dataplanev1.Workload{
			"shop/web-0": workload("shop", "web-0", "web", "node-a"), "shop/web-1": workload("shop", "web-1", "web", "node-a"),
		}, map[string]int{"spiffe://cluster.local/ns/shop/sa/web": 2}, 0, 0},
		{"pods of other nodes are not ours", map[string]*dataplanev1.Workload{
			"shop/web-0": workload("shop", "web-0", "web", "node-a"), "shop/db-0": workload("shop", "db-0", "db", "node-b"),
		}, map[string]int{"spiffe://cluster.local/ns/shop/sa/web": 1}, 0, 0},
		{"no or a mismatched SPIFFE ID is skipped", map[string]*dataplanev1.Workload{
			"shop/none": {Namespace: "shop", Name: "none", ServiceAccount: "web", Node: "node-a"}, "shop/odd-0": mismatched,
		}, map[string]int{}, 2, 0},
		{"the mesh's own namespace is never served", map[string]*dataplanev1.Workload{
			"nodemesh-system/meshd-0": meshd, "shop/sneaky-0": agentID, "shop/web-0": workload("shop", "web-0", "web", "node-a"),
		}, map[string]int{"spiffe://cluster.local/ns/shop/sa/web": 1}, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set := localAccounts("node-a", tc.ws)
			got, skipped, reserved := set.accounts, set.skipped, set.reserved
			if skipped != tc.skipped || reserved != tc.reserved || len(got) != len(tc.want) {
				t.Fatalf("got %+v skipped %d reserved %d, want %v skipped %d reserved %d", got, skipped, reserved, tc.want, tc.skipped, tc.reserved)
			}
			for id, pods := range tc.want {
				if got[id].Pods != pods || got[id].ID.String() != id {
					t.Errorf("%s: got %+v, want %d pods", id, got[id], pods)
				}
			}
		})
	}
}

func waitUntil(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readFiles loads a service account's files: the SVID (chain verified
// against root-cert.pem) and the roots.
func readFiles(dir string, id spiffeid.ID) (*x509svid.SVID, *x509bundle.Bundle, error) {
	svid, err := x509svid.Load(filepath.Join(dir, CertChainFile), filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, nil, err
	}
	b, err := x509bundle.Load(id.TrustDomain(), filepath.Join(dir, RootCertFile))
	if err != nil {
		return nil, nil, err
	}
	if _, _, err := x509svid.Verify(svid.Certificates, b); err != nil {
		return nil, nil, err
	}
	return svid, b, nil
}

func serialOf(svid *x509svid.SVID) string { return svid.Certificates[0].SerialNumber.String() }

// TestSVIDManager drives the manager with the built-in CA behind a fake
// Source: files and secrets for the local service accounts only, renewal
// before the half-life, a failing source keeping the current SVID, a root
// rotation reaching root-cert.pem and the bundle secret, the last pod
// leaving removing the files, and stale files of a previous run pruned.
func TestSVIDManager(t *testing.T) {
	src := newFakeSource(t)
	dir := t.TempDir()
	web, db := wid(t, "shop", "web"), wid(t, "shop", "db")
	webDir := WorkloadCertsPath(dir, "shop", "web")

	// Left by a previous run: a service account no longer here, and a file
	// the manager does not own.
	stale := WorkloadCertsPath(dir, "old", "gone")
	if err := os.MkdirAll(stale, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{CertChainFile, KeyFile, RootCertFile} {
		if err := os.WriteFile(filepath.Join(stale, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	foreign := filepath.Join(dir, "README")
	if err := os.WriteFile(foreign, []byte("not ours"), 0o644); err != nil {
		t.Fatal(err)
	}

	m := newSVIDManager(svidManagerConfig{Node: "node-a", Source: src, Dir: dir, Retry: 100 * time.Millisecond,
		BundleRefresh: 100 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	m.SetWorkloads(map[string]*dataplanev1.Workload{
		"shop/web-0": workload("shop", "web-0", "web", "node-a"),
		"shop/web-1": workload("shop", "web-1", "web", "node-a"),
		"shop/db-0":  workload("shop", "db-0", "db", "node-b"),
	})

	var first *x509svid.SVID
	waitUntil(t, "web's files", 10*time.Second, func() bool {
		svid, _, err := readFiles(webDir, web)
		first = svid
		return err == nil
	})
	if first.ID != web {
		t.Fatalf("files hold an SVID for %s", first.ID)
	}
	// The built-in CA (through meshd) is asked by ID only.
	if n, w := src.count(web); n == 0 || w.ID != web || len(w.Selectors) != 0 || w.PID != 0 {
		t.Errorf("asked the source for %+v", w)
	}
	if n, _ := src.count(db); n != 0 {
		t.Errorf("asked for db's SVID (a pod of another node) %d times", n)
	}
	if _, err := os.Stat(WorkloadCertsPath(dir, "shop", "db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("db has files: %v", err)
	}
	for path, mode := range map[string]os.FileMode{webDir: 0o700 | os.ModeDir, filepath.Join(webDir, KeyFile): 0o600} {
		if fi, err := os.Stat(path); err != nil || fi.Mode() != mode {
			t.Errorf("%s: mode %v (%v), want %v", path, fi.Mode(), err, mode)
		}
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale files of a previous run are still there: %v", err)
	}
	if _, err := os.Stat(foreign); err != nil {
		t.Errorf("a file the manager does not own was removed: %v", err)
	}

	secrets, changed := m.Secrets()
	checkSecrets(t, secrets, web, first, src.ca)
	if _, ok := secrets[db.String()]; ok {
		t.Error("db's secret is served")
	}
	st := m.Status()
	if len(st.Accounts) != 1 || st.Accounts[0].Pods != 2 || st.Accounts[0].Serial == "" || st.TrustDomain != "cluster.local" || st.Roots != 1 {
		t.Errorf("status %+v", st)
	}

	t.Run("renewal before the half-life rewrites files and secrets", func(t *testing.T) {
		var renewed *x509svid.SVID
		waitUntil(t, "a renewed SVID in the files", 15*time.Second, func() bool {
			svid, _, err := readFiles(webDir, web)
			renewed = svid
			return err == nil && serialOf(svid) != serialOf(first)
		})
		if identity.NeedsRotation(first.Certificates[0], time.Now()) {
			t.Errorf("renewed only after the half-life (NotAfter %s)", first.Certificates[0].NotAfter)
		}
		// The files are written before the secrets are published.
		select {
		case <-changed:
		case <-time.After(5 * time.Second):
			t.Error("secret watchers were not told")
		}
		waitUntil(t, "the renewed secret", 5*time.Second, func() bool {
			s, _ := m.Secrets()
			return string(s[web.String()].GetTlsCertificate().GetCertificateChain().GetInlineBytes()) == string(mustMarshalChain(t, renewed))
		})
	})

	t.Run("a failing source keeps the current SVID", func(t *testing.T) {
		held, _, err := readFiles(webDir, web)
		if err != nil {
			t.Fatal(err)
		}
		src.setFail(errors.New("control plane unreachable"))
		waitUntil(t, "failures in the status", 15*time.Second, func() bool {
			st := m.Status()
			return len(st.Accounts) == 1 && st.Accounts[0].Failures > 0 && st.Accounts[0].LastError != "" && st.BundleError != ""
		})
		now, _, err := readFiles(webDir, web)
		if err != nil || serialOf(now) != serialOf(held) {
			t.Fatalf("files after failures: %v, serial changed %v", err, err == nil && serialOf(now) != serialOf(held))
		}
		if s, _ := m.Secrets(); s[web.String()] == nil {
			t.Fatal("the secret was dropped on failure")
		}
		src.setFail(nil)
		waitUntil(t, "recovery", 15*time.Second, func() bool { return m.Status().Accounts[0].LastError == "" })
	})

	t.Run("a root rotation reaches root-cert.pem and the bundle secret", func(t *testing.T) {
		root, err := src.ca.RotateRoot()
		if err != nil {
			t.Fatal(err)
		}
		waitUntil(t, "the new root in root-cert.pem", 10*time.Second, func() bool {
			_, b, err := readFiles(webDir, web)
			return err == nil && b.HasX509Authority(root) && len(b.X509Authorities()) == 2
		})
		waitUntil(t, "the new root in the bundle secret", 10*time.Second, func() bool {
			s, _ := m.Secrets()
			roots, err := identity.ParseCertsPEM(s[identity.DefaultTrustDomain.IDString()].GetValidationContext().GetTrustedCa().GetInlineBytes())
			return err == nil && len(roots) == 2 && roots[0].Equal(root)
		})
	})

	t.Run("the last pod leaving drops the SVID", func(t *testing.T) {
		m.SetWorkloads(map[string]*dataplanev1.Workload{"shop/db-0": workload("shop", "db-0", "db", "node-b")})
		waitUntil(t, "web's files removed", 10*time.Second, func() bool {
			_, err := os.Stat(webDir)
			return errors.Is(err, os.ErrNotExist)
		})
		// The files go first, then the secrets are published.
		waitUntil(t, "web's secret dropped", 10*time.Second, func() bool {
			s, _ := m.Secrets()
			_, ok := s[web.String()]
			return !ok
		})
		if s, _ := m.Secrets(); len(s) != 1 {
			t.Errorf("secrets after the drop: %v, want only the bundle", keys(s))
		}
		if st := m.Status(); len(st.Accounts) != 0 {
			t.Errorf("status accounts %+v", st.Accounts)
		}
		n, _ := src.count(web)
		time.Sleep(300 * time.Millisecond)
		if again, _ := src.count(web); again != n {
			t.Errorf("web's SVID still fetched after the drop (%d -> %d)", n, again)
		}
	})
}

func keys(m map[string]*tlsv3.Secret) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func mustMarshalChain(t *testing.T, svid *x509svid.SVID) []byte {
	t.Helper()
	chain, _, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return chain
}

// checkSecrets: the SVID secret named by its SPIFFE ID holds want's chain
// and a key; the bundle secret named spiffe://<td> holds the CA's roots.
func checkSecrets(t *testing.T, secrets map[string]*tlsv3.Secret, id spiffeid.ID, want *x509svid.SVID, ca *identity.CA) {
	t.Helper()
	s := secrets[id.String()]
	tc := s.GetTlsCertificate()
	if tc == nil || string(tc.GetCertificateChain().GetInlineBytes()) != string(mustMarshalChain(t, want)) || len(tc.GetPrivateKey().GetInlineBytes()) == 0 {
		t.Fatalf("secret %s: %v", id, s)
	}
	b := secrets[id.TrustDomain().IDString()]
	roots, err := identity.ParseCertsPEM(b.GetValidationContext().GetTrustedCa().GetInlineBytes())
	if err != nil || len(roots) != 1 || !roots[0].Equal(ca.Root()) {
		t.Fatalf("bundle secret: %v (%v)", b, err)
	}
}

// TestSVIDManagerReservedNamespace: a pod of the mesh's own namespace on
// the node (meshd's service account) gets no fetch, no files and no
// secret, while a workload next to it does.
func TestSVIDManagerReservedNamespace(t *testing.T) {
	src := newFakeSource(t)
	dir := t.TempDir()
	web, meshd := wid(t, "shop", "web"), wid(t, identity.AgentNamespace, "meshd")
	m := newSVIDManager(svidManagerConfig{Node: "node-a", Source: src, Dir: dir, Retry: 100 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	m.SetWorkloads(map[string]*dataplanev1.Workload{
		"shop/web-0":                         workload("shop", "web-0", "web", "node-a"),
		identity.AgentNamespace + "/meshd-0": workload(identity.AgentNamespace, "meshd-0", "meshd", "node-a"),
	})
	waitUntil(t, "web's secret", 10*time.Second, func() bool {
		s, _ := m.Secrets()
		return s[web.String()] != nil
	})
	if n, _ := src.count(meshd); n != 0 {
		t.Errorf("asked the source for meshd's SVID %d times", n)
	}
	if s, _ := m.Secrets(); s[meshd.String()] != nil {
		t.Error("meshd's SVID is served by the local SDS")
	}
	if _, err := os.Stat(filepath.Join(dir, identity.AgentNamespace)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("files for the mesh's namespace: %v", err)
	}
	if st := m.Status(); len(st.Accounts) != 1 || st.Accounts[0].SPIFFEID != web.String() || st.Reserved != 1 {
		t.Errorf("status %+v", st)
	}
}
