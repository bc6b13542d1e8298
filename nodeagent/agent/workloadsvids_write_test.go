package agent

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/identity"
)

// TestSVIDFilesNoStaleOverwrite holds the bundle rewrite of a root
// rotation (Run's goroutine) inside its file write while the account's
// rotation renews the SVID: the rewrite must not put the older SVID back
// over the renewed one. Without the per-account write lock the renewal is
// written first and the held rewrite then restores the old SVID, which
// stays (no renewal is due for an hour).
func TestSVIDFilesNoStaleOverwrite(t *testing.T) {
	src := newFakeSource(t)
	ca, err := identity.NewCA(identity.CAConfig{SVIDTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	src.ca = ca
	dir := t.TempDir()
	web := wid(t, "shop", "web")
	webDir := WorkloadCertsPath(dir, "shop", "web")

	m := newSVIDManager(svidManagerConfig{Node: "node-a", Source: src, Dir: dir, Retry: 50 * time.Millisecond,
		BundleRefresh: 50 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	var (
		mu       sync.Mutex
		armed    bool
		entered  = make(chan struct{})
		release  = make(chan struct{})
		heldDone = make(chan struct{})
	)
	m.writeHook = func(la localAccount, svid *x509svid.SVID, write func() error) error {
		mu.Lock()
		hold := armed
		armed = false
		mu.Unlock()
		if !hold {
			return write()
		}
		close(entered)
		<-release
		defer close(heldDone)
		return write()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	m.SetWorkloads(map[string]*dataplanev1.Workload{"shop/web-0": workload("shop", "web-0", "web", "node-a")})
	var first *x509svid.SVID
	waitUntil(t, "web's files", 10*time.Second, func() bool {
		svid, _, err := readFiles(webDir, web)
		first = svid
		return err == nil
	})

	// The root rotation's rewrite of web's files is held in the hook.
	mu.Lock()
	armed = true
	mu.Unlock()
	root, err := ca.RotateRoot()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the bundle rewrite did not write web's files")
	}
	// Meanwhile the SVID is renewed.
	fetches, _ := src.count(web)
	m.mu.Lock()
	m.accounts[web.String()].rot.Refresh()
	m.mu.Unlock()
	waitUntil(t, "the renewal fetch", 10*time.Second, func() bool {
		n, _ := src.count(web)
		return n > fetches
	})
	// Without the lock the renewal's write goes through now; with it, it
	// waits for the held write, so give up waiting after a while.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if svid, _, err := readFiles(webDir, web); err == nil && serialOf(svid) != serialOf(first) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(release)
	<-heldDone

	var current string
	waitUntil(t, "the renewed SVID and the new root in the files", 5*time.Second, func() bool {
		st := m.Status()
		current = st.Accounts[0].Serial
		svid, b, err := readFiles(webDir, web)
		return err == nil && current != serialOf(first) && serialOf(svid) == current && b.HasX509Authority(root)
	})
	time.Sleep(200 * time.Millisecond) // nothing writes an older one later
	if svid, _, err := readFiles(webDir, web); err != nil || serialOf(svid) != current {
		t.Fatalf("files hold %v (%v), want the current SVID %s", svid, err, current)
	}
}
