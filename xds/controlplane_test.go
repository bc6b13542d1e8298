package xds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
)

// clusterPerService is a stand-in translator for wiring tests: one STATIC
// cluster per Service in the snapshot.
func clusterPerService(snap *config.Snapshot) func(translate.Proxy) *translate.NodeConfig {
	return func(p translate.Proxy) *translate.NodeConfig { return clustersOf(snap, p) }
}

func clustersOf(snap *config.Snapshot, p translate.Proxy) *translate.NodeConfig {
	nc := &translate.NodeConfig{Proxy: p}
	for _, o := range snap.List(config.KindService) {
		nc.Clusters = append(nc.Clusters, &clusterv3.Cluster{
			Name:                 fmt.Sprintf("%s.%s", o.Name, o.Namespace),
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		})
	}
	sort.Slice(nc.Clusters, func(i, j int) bool { return nc.Clusters[i].Name < nc.Clusters[j].Name })
	return nc
}

func serviceYAML(names ...string) string {
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: %s\n  namespace: default\nspec:\n  ports:\n  - name: http\n    port: 80\n", n)
	}
	return b.String()
}

func TestControlPlaneServesDirectory(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "services.yaml")
	if err := os.WriteFile(file, []byte(serviceYAML("a")), 0o644); err != nil {
		t.Fatal(err)
	}
	cp, err := StartControlPlane(ControlPlaneConfig{
		ConfigDir: dir, XDSAddr: "127.0.0.1:0", DebugAddr: "127.0.0.1:0", PollInterval: 20 * time.Millisecond,
		Prepare: clusterPerService, Check: CheckNodeConfig, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = cp.Stop()
		}
	})
	debug := "http://" + cp.DebugAddr()
	if got := httpGet(t, debug+"/readyz"); !strings.HasPrefix(got, "ok: config version") {
		t.Fatalf("readyz = %q", got)
	}
	if got := httpGet(t, debug+"/healthz"); got != "ok\n" {
		t.Fatalf("healthz = %q", got)
	}

	c := newSotwClient(t, cp.XDSAddr(), envoyNode("worker-1"))
	c.send(resourcev3.ClusterType, "", "", nil)
	r := c.recv(wait)
	if len(r.GetResources()) != 1 {
		t.Fatalf("CDS: %d clusters, want 1", len(r.GetResources()))
	}
	c.send(resourcev3.ClusterType, r.GetVersionInfo(), r.GetNonce(), nil)

	// A new file content reaches the client.
	if err := os.WriteFile(file, []byte(serviceYAML("a", "b")), 0o644); err != nil {
		t.Fatal(err)
	}
	r = c.recv(wait)
	if len(r.GetResources()) != 2 {
		t.Fatalf("CDS after edit: %d clusters, want 2", len(r.GetResources()))
	}
	c.send(resourcev3.ClusterType, r.GetVersionInfo(), r.GetNonce(), nil)

	// A broken file is refused: nothing is pushed, diagnostics name the file.
	if err := os.WriteFile(file, []byte(serviceYAML("a")+"  bogusField: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, "load error in diagnostics", func() bool {
		return strings.Contains(httpGet(t, debug+"/debug/diagnostics"), "services.yaml")
	})
	c.expectNothing(quiet)
	if got := httpGet(t, debug+"/debug/syncz"); !strings.Contains(got, "worker-1") || !strings.Contains(got, "SYNCED") {
		t.Fatalf("syncz:\n%s", got)
	}

	// Stop is graceful and prompt although a stream is open.
	start := time.Now()
	if err := cp.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped = true
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("stop took %v", d)
	}
	select {
	case <-c.errs:
	case <-time.After(wait):
		t.Fatal("client stream still open after Stop")
	}
}

func TestControlPlaneConfigValidate(t *testing.T) {
	feed := func(*config.Store) (Feed, error) { return nil, nil }
	for _, cfg := range []ControlPlaneConfig{{}, {ConfigDir: t.TempDir(), NewFeed: feed}} {
		_, err := StartControlPlane(cfg)
		if err == nil || !strings.Contains(err.Error(), "exactly one of ConfigDir and NewFeed is required") {
			t.Fatalf("err = %v", err)
		}
	}
}

// fakeFeed stands in for the Kubernetes source: it writes one Service when
// it runs, unless it fails, and says it synced only after that write.
type fakeFeed struct {
	store   *config.Store
	fail    error
	noSync  bool
	written chan struct{}
}

func (f *fakeFeed) Run(ctx context.Context) error {
	if f.fail != nil {
		return f.fail
	}
	svc := &config.Object{Key: config.Key{Kind: config.KindService, Namespace: "default", Name: "web"},
		Spec: &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"}}}
	if err := f.store.Replace("fake", []*config.Object{svc}); err != nil {
		return err
	}
	close(f.written)
	<-ctx.Done()
	return nil
}

func (f *fakeFeed) WaitForSync(ctx context.Context) error {
	if f.noSync {
		<-ctx.Done()
		return ctx.Err()
	}
	select {
	case <-f.written:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (f *fakeFeed) Diagnostics() []config.Diagnostic { return nil }

// A Feed is waited for before serving: a feed that fails or never syncs
// stops the start; one that syncs has its objects in the store first.
func TestControlPlaneFeed(t *testing.T) {
	for _, tc := range []struct {
		name, wantErr string
		feed          fakeFeed
	}{
		{name: "fails", feed: fakeFeed{fail: errors.New("api server gone")}, wantErr: "api server gone"},
		{name: "never syncs", feed: fakeFeed{noSync: true}, wantErr: "did not sync"},
		{name: "syncs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			feed := tc.feed
			feed.written = make(chan struct{})
			cp, err := StartControlPlane(ControlPlaneConfig{
				XDSAddr: "127.0.0.1:0", DebugAddr: "127.0.0.1:0", SyncTimeout: 200 * time.Millisecond,
				Logger:  slog.New(slog.DiscardHandler),
				NewFeed: func(store *config.Store) (Feed, error) { feed.store = store; return &feed, nil },
			})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer cp.Stop()
			select {
			case <-feed.written:
			default:
				t.Fatal("serving before the feed wrote the store")
			}
			resp, err := http.Get("http://" + cp.DebugAddr() + "/readyz")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("/readyz: status %d", resp.StatusCode)
			}
		})
	}
}

func TestStoreSourcePreparesOncePerVersion(t *testing.T) {
	store := config.NewStore()
	objs, diags := config.Decode("svc.yaml", []byte(serviceYAML("a")))
	if config.HasErrors(diags) {
		t.Fatal(diags)
	}
	if err := store.Replace("test", objs); err != nil {
		t.Fatal(err)
	}
	prepared := 0
	src := StoreSource(store, func(snap *config.Snapshot) func(translate.Proxy) *translate.NodeConfig {
		prepared++
		return clusterPerService(snap)
	}, nil)
	v1 := src.Current()
	for _, p := range []translate.Proxy{{Node: "n1"}, {Node: "n2"}, {Kind: translate.ProxylessGRPC, Namespace: "default"}} {
		if nc := src.Current().Translate(p); len(nc.Clusters) != 1 {
			t.Fatalf("%+v: %d clusters", p, len(nc.Clusters))
		}
	}
	if prepared != 1 {
		t.Fatalf("prepared %d times for one store version", prepared)
	}
	objs, _ = config.Decode("svc.yaml", []byte(serviceYAML("a", "b")))
	if err := store.Replace("test", objs); err != nil {
		t.Fatal(err)
	}
	select {
	case <-src.Changed():
	case <-time.After(wait):
		t.Fatal("no change signal")
	}
	v2 := src.Current()
	if v2.Generation() <= v1.Generation() {
		t.Fatalf("generation %d after %d", v2.Generation(), v1.Generation())
	}
	if nc := v2.Translate(translate.Proxy{Node: "n1"}); len(nc.Clusters) != 2 || prepared != 2 {
		t.Fatalf("after the change: %d clusters, prepared %d times", len(nc.Clusters), prepared)
	}
}
