package config

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
)

// waitFor polls cond until it holds, failing the test after 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

const (
	fsNamespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"
	fsVS        = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web, namespace: shop}\nspec:\n  hosts: [%s]\n"
	fsPod       = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, namespace: shop, labels: {app: web}}\nspec: {nodeName: node1}\n"
)

func vsHost(s *Store) string {
	o, ok := s.Snapshot().Get(Key{KindVirtualService, "shop", "web"})
	if !ok {
		return ""
	}
	return o.Spec.(*networkingv1alpha3.VirtualService).GetHosts()[0]
}

func TestFileSource(t *testing.T) {
	dir := t.TempDir()
	store := NewStore()
	// Another source owns an object, to check it is never touched.
	if err := store.Replace("other", []*Object{testVS("shop", "other", "o")}); err != nil {
		t.Fatal(err)
	}
	var statuses atomic.Int32
	fs, err := NewFileSource(FileSourceConfig{Dir: dir, Store: store, Interval: 10 * time.Millisecond,
		OnStatus: func(FileStatus) { statuses.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) { mustWrite(t, filepath.Join(dir, name), content) }
	write("a.yaml", fsNamespace+strings.Replace(fsVS, "%s", "web.v1", 1))

	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- fs.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case err := <-runErr:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	}()

	t.Log("add")
	waitFor(t, "first apply", func() bool { return vsHost(store) == "web.v1" })
	st := fs.Status()
	if st.Err != nil || st.Objects != 2 || st.Files != 1 || st.LastApplied.IsZero() || st.Version != store.Snapshot().Version() {
		t.Errorf("status after first apply: %+v", st)
	}
	write("sub/b.yaml", fsPod)
	waitFor(t, "pod added", func() bool { return len(store.Snapshot().PodsOnNode("node1")) == 1 })

	t.Log("update")
	write("a.yaml", fsNamespace+strings.Replace(fsVS, "%s", "web.v2", 1))
	waitFor(t, "update", func() bool { return vsHost(store) == "web.v2" })

	t.Log("unchanged content is not re-applied")
	v := store.Snapshot().Version()
	n := statuses.Load()
	// Same bytes, new inode and mtime, written atomically through a hidden
	// temporary file (which the source must ignore). A non-atomic rewrite
	// can be seen empty by two polls on a loaded machine; the settle rule
	// is tested deterministically in TestFileSourceSettle.
	write(".a.yaml.tmp", fsNamespace+strings.Replace(fsVS, "%s", "web.v2", 1))
	time.Sleep(30 * time.Millisecond)
	if err := os.Rename(filepath.Join(dir, ".a.yaml.tmp"), filepath.Join(dir, "a.yaml")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // ten polls
	if store.Snapshot().Version() != v || statuses.Load() != n {
		t.Errorf("rewriting identical content changed the store (version %d -> %d) or reloaded (%d -> %d loads)",
			v, store.Snapshot().Version(), n, statuses.Load())
	}

	t.Log("delete")
	if err := os.Remove(filepath.Join(dir, "sub/b.yaml")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "pod deleted", func() bool { return len(store.Snapshot().PodsOnNode("node1")) == 0 })

	t.Log("an invalid file keeps the last good objects")
	good := store.Snapshot()
	write("c.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: shop}\nspec: {nodeNmae: node1}\n")
	write("a.yaml", fsNamespace+strings.Replace(fsVS, "%s", "web.v3", 1)) // valid, but must not be applied alone
	waitFor(t, "error reported", func() bool { return fs.Status().Err != nil })
	st = fs.Status()
	var le *LoadError
	if !errors.As(st.Err, &le) || len(le.Diagnostics) != 1 {
		t.Fatalf("status error %v, want a LoadError with one diagnostic", st.Err)
	}
	d := le.Diagnostics[0]
	if d.Origin.File != filepath.Join(dir, "c.yaml") || d.Origin.Line != 1 || d.Object != (Key{KindPod, "shop", "web-1"}) ||
		d.Field != "spec.nodeNmae" || !strings.Contains(st.Err.Error(), "c.yaml:1] Pod/shop/web-1 spec.nodeNmae: unknown field") {
		t.Errorf("error does not name file, object and field: %v", st.Err)
	}
	if store.Snapshot().Version() != good.Version() || vsHost(store) != "web.v2" {
		t.Errorf("a failed load changed the store: version %d -> %d, host %q",
			good.Version(), store.Snapshot().Version(), vsHost(store))
	}
	if st.Version != good.Version() || st.LastApplied.After(st.LastLoad) {
		t.Errorf("status after failure: %+v", st)
	}

	t.Log("fixing it applies everything")
	write("c.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: shop}\nspec: {nodeName: node1}\n")
	waitFor(t, "fixed", func() bool { return fs.Status().Err == nil && vsHost(store) == "web.v3" })
	if len(store.Snapshot().PodsOnNode("node1")) != 1 {
		t.Error("pod of the fixed file not applied")
	}
	if _, ok := store.Snapshot().Get(Key{KindVirtualService, "shop", "other"}); !ok {
		t.Error("the other source's object was removed")
	}

	t.Log("removing the directory is an error, not an empty config")
	v = store.Snapshot().Version()
	// Renamed away in one step: deleting the files one by one would be a
	// series of real changes that polls may catch.
	if err := os.Rename(dir, dir+".gone"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "missing dir reported", func() bool { return fs.Status().Err != nil })
	if store.Snapshot().Version() != v {
		t.Error("a missing directory changed the store")
	}
}

func TestFileSourceConfig(t *testing.T) {
	if _, err := NewFileSource(FileSourceConfig{Store: NewStore()}); err == nil {
		t.Error("no Dir accepted")
	}
	if _, err := NewFileSource(FileSourceConfig{Dir: "x"}); err == nil {
		t.Error("no Store accepted")
	}
	fs, err := NewFileSource(FileSourceConfig{Dir: "x", Store: NewStore()})
	if err != nil {
		t.Fatal(err)
	}
	if fs.cfg.Interval != 200*time.Millisecond || fs.cfg.Source != "file:x" {
		t.Errorf("defaults: %+v", fs.cfg)
	}
}

// TestFileSourceSettle checks that content seen by only one poll (a file
// caught half-written) is not applied, and that content seen twice is.
func TestFileSourceSettle(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.yaml")
	full := fsNamespace + strings.Replace(fsVS, "%s", "web.v1", 1)
	mustWrite(t, path, full)
	store := NewStore()
	fs, err := NewFileSource(FileSourceConfig{Dir: dir, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	if err := fs.Sync(); err != nil || vsHost(store) != "web.v1" {
		t.Fatalf("Sync: %v, host %q", err, vsHost(store))
	}
	v := store.Snapshot().Version()
	mustWrite(t, path, "") // truncated, as in the middle of os.WriteFile
	if err := fs.poll(true); err != nil || vsHost(store) != "web.v1" || store.Snapshot().Version() != v {
		t.Fatalf("a half-written file was applied: %v, host %q", err, vsHost(store))
	}
	mustWrite(t, path, full)
	if err := fs.poll(true); err != nil || store.Snapshot().Version() != v {
		t.Fatalf("restored content changed the store: %v", err)
	}
	mustWrite(t, path, "")
	fs.poll(true)
	if vsHost(store) != "web.v1" {
		t.Fatal("applied after one poll")
	}
	if err := fs.poll(true); err != nil || vsHost(store) != "" || store.Snapshot().Version() != v+1 {
		t.Fatalf("an emptied file seen twice was not applied: %v, host %q", err, vsHost(store))
	}
}

// TestFileSourceConflictAndQuietErrors: a key owned by another source blocks
// the load until that source lets go; a lasting error is reported once, not
// at every poll.
func TestFileSourceConflictAndQuietErrors(t *testing.T) {
	dir := t.TempDir()
	mustWrite(t, filepath.Join(dir, "a.yaml"), fsNamespace+strings.Replace(fsVS, "%s", "web.files", 1))
	store := NewStore()
	if err := store.Replace("k8s", []*Object{testVS("shop", "web", "web.k8s")}); err != nil {
		t.Fatal(err)
	}
	var loads atomic.Int32
	fs, err := NewFileSource(FileSourceConfig{Dir: dir, Store: store, Interval: 5 * time.Millisecond,
		OnStatus: func(FileStatus) { loads.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); fs.Run(ctx) }()
	defer func() { cancel(); <-done }()

	waitFor(t, "conflict reported", func() bool { return errors.Is(fs.Status().Err, ErrOwnedByOtherSource) })
	time.Sleep(50 * time.Millisecond) // ten polls
	if n := loads.Load(); n != 1 || vsHost(store) != "web.k8s" {
		t.Errorf("blocked source: %d loads (want 1), host %q", n, vsHost(store))
	}
	if err := store.Replace("k8s", nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "applied once unblocked", func() bool { return vsHost(store) == "web.files" && fs.Status().Err == nil })

	n := loads.Load()
	if err := os.Rename(dir, dir+".gone"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "missing directory reported", func() bool { return fs.Status().Err != nil })
	time.Sleep(50 * time.Millisecond)
	if got := loads.Load(); got != n+1 {
		t.Errorf("a lasting error was reported %d times", got-n)
	}
	if vsHost(store) != "web.files" {
		t.Error("the last good config was dropped")
	}
	mustWrite(t, filepath.Join(dir, "a.yaml"), fsNamespace+strings.Replace(fsVS, "%s", "web.back", 1))
	waitFor(t, "directory back", func() bool { return vsHost(store) == "web.back" && fs.Status().Err == nil })
}
