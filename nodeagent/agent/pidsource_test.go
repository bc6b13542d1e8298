package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/identity"
)

// fakeAttestor is SPIRE's Delegated Identity API as the agent sees it: a
// watch by PID gets the CA's SVID of the requested ID unless the PID is
// one no entry matches (then nothing comes, as SPIRE sends updates
// without it); a watch by selectors always gets it.
type fakeAttestor struct {
	*fakeSource
	mu        sync.Mutex
	unmatched map[int32]bool
	watches   []identity.Workload
}

func (f *fakeAttestor) WatchSVIDs(ctx context.Context, w identity.Workload, fn func(*x509svid.SVID) error) error {
	f.mu.Lock()
	f.watches = append(f.watches, w)
	none := w.PID != 0 && f.unmatched[w.PID]
	f.mu.Unlock()
	if !none {
		svid, err := f.SVIDFor(ctx, w)
		if err != nil {
			return err
		}
		if err := fn(svid); err != nil {
			return err
		}
	}
	<-ctx.Done()
	return ctx.Err()
}

func (f *fakeAttestor) watched() []identity.Workload {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.watches)
}

func writeProcs(t *testing.T, dir string, pids string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(pids), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCgroupPIDs(t *testing.T) {
	root := t.TempDir()
	writeProcs(t, root, "7\n")
	writeProcs(t, filepath.Join(root, "b"), "9\n10\n")
	writeProcs(t, filepath.Join(root, "a"), "8\n")
	got, err := cgroupPIDs(root)
	if err != nil || !slices.Equal(got, []int32{7, 8, 9, 10}) {
		t.Fatalf("got %v (%v), want the pod's own, then a's, then b's", got, err)
	}
	if _, err := cgroupPIDs(filepath.Join(root, "gone")); err == nil || !strings.Contains(err.Error(), "gone") {
		t.Errorf("missing cgroup: %v", err)
	}
}

// TestSVIDManagerByPID drives the manager as in SPIRE mode, with pod
// cgroups in a directory tree (their cgroup.procs files written by the
// test; web-0 found by its UID where a kubelet with the cgroupfs driver
// puts a Guaranteed pod, db-0 in the e2e harness layout): no process yet
// is reported and retried, never asked by
// selectors; a process found is attested by PID; when it leaves its
// cgroup another one is; a pod whose process SPIRE matches to no entry
// gets nothing, and that is reported.
func TestSVIDManagerByPID(t *testing.T) {
	src := &fakeAttestor{fakeSource: newFakeSource(t), unmatched: map[int32]bool{999: true}}
	root := t.TempDir()
	web, db := wid(t, "shop", "web"), wid(t, "shop", "db")
	webPod := filepath.Join(root, "kubepods", "pod0e7d4c1b-2a3f-4b5c-8d6e-7f8091a2b3c4")
	writeProcs(t, webPod, "") // starting: no process yet
	writeProcs(t, filepath.Join(root, "shop_db-0"), "999\n")
	dir := t.TempDir()
	m := newSVIDManager(svidManagerConfig{Node: "node-a", Source: src, By: SVIDByPID, PodCgroup: CgroupLayout(root), Dir: dir,
		Retry: 50 * time.Millisecond, PIDCheck: 20 * time.Millisecond, AttestTimeout: 300 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	webWorkload := workload("shop", "web-0", "web", "node-a")
	webWorkload.PodUid = "0e7d4c1b-2a3f-4b5c-8d6e-7f8091a2b3c4"
	m.SetWorkloads(map[string]*dataplanev1.Workload{
		"shop/web-0": webWorkload,
		"shop/db-0":  workload("shop", "db-0", "db", "node-a"),
	})
	status := func(id string) SVIDStatus {
		for _, a := range m.Status().Accounts {
			if a.SPIFFEID == id {
				return a
			}
		}
		return SVIDStatus{}
	}

	waitUntil(t, "web's missing process in the status", 10*time.Second, func() bool {
		return strings.Contains(status(web.String()).LastError, "no live process to attest yet")
	})
	for _, w := range src.watched() {
		if w.ID == web {
			t.Fatalf("web watched without a process: %+v", w)
		}
	}

	writeProcs(t, filepath.Join(webPod, "container-1"), "1234\n")
	waitUntil(t, "web's secret", 10*time.Second, func() bool {
		s, _ := m.Secrets()
		return s[web.String()] != nil
	})
	if st := status(web.String()); st.Process != "pid 1234 of pod shop/web-0" || st.Serial == "" || m.Status().RequestBy != SVIDByPID {
		t.Errorf("web's status %+v", st)
	}
	if _, _, err := readFiles(WorkloadCertsPath(dir, "shop", "web"), web); err != nil {
		t.Errorf("web's files: %v", err)
	}

	writeProcs(t, filepath.Join(webPod, "container-1"), "") // the process exits...
	writeProcs(t, filepath.Join(webPod, "container-2"), "5678\n")
	waitUntil(t, "web attested through its new process", 10*time.Second, func() bool {
		return status(web.String()).Process == "pid 5678 of pod shop/web-0"
	})

	waitUntil(t, "db's failed attestation in the status", 10*time.Second, func() bool {
		return strings.Contains(status(db.String()).LastError, "no SVID of the service account for the attested process")
	})
	if s, _ := m.Secrets(); s[db.String()] != nil {
		t.Error("db's SVID is served")
	}
	if _, err := os.Stat(WorkloadCertsPath(dir, "shop", "db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("db has files: %v", err)
	}
	var pids []int32
	for _, w := range src.watched() {
		if len(w.Selectors) != 0 || w.PID == 0 {
			t.Errorf("watched %+v: want a PID and no selectors", w)
		}
		if w.ID == web {
			pids = append(pids, w.PID)
		}
	}
	if !slices.Contains(pids, 1234) || !slices.Contains(pids, 5678) {
		t.Errorf("web watched with pids %v, want 1234 then 5678", pids)
	}
	if n, _ := src.count(db); n != 0 {
		t.Errorf("db's SVID issued %d times", n)
	}
}

// TestSVIDManagerBySelectors: the opt-in asks by the k8s selectors.
func TestSVIDManagerBySelectors(t *testing.T) {
	src := &fakeAttestor{fakeSource: newFakeSource(t)}
	m := newSVIDManager(svidManagerConfig{Node: "node-a", Source: src, By: SVIDBySelectors, Retry: 50 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	m.SetWorkloads(map[string]*dataplanev1.Workload{"shop/web-0": workload("shop", "web-0", "web", "node-a")})
	waitUntil(t, "web's secret", 10*time.Second, func() bool {
		s, _ := m.Secrets()
		return s[wid(t, "shop", "web").String()] != nil
	})
	w := src.watched()[0]
	if w.PID != 0 || !slices.Equal(w.Selectors, []identity.Selector{{Type: "k8s", Value: "ns:shop"}, {Type: "k8s", Value: "sa:web"}}) {
		t.Errorf("watched %+v", w)
	}
}
