package xds

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/nodeagent/ads"
)

// dpSource adds dataplane resources to fakeSource's views: one workload
// per endpoint IP on the node, one service, one namespace listener.
type dpSource struct{ *fakeSource }

func (d dpSource) Current() View { return dpView{d.fakeSource.Current().(fakeView)} }

type dpView struct{ fakeView }

func (v dpView) Dataplane(node string) ([]TypedResources, []config.Diagnostic) {
	svc := &dataplanev1.Service{Namespace: "default", Name: "echo", Vips: []string{"10.96.0.10"}, Port: 8080, Protocol: dataplanev1.Protocol_TCP}
	wl := TypedResources{TypeURL: dataplanev1.WorkloadType}
	for i, ip := range v.ips {
		svc.Backends = append(svc.Backends, &dataplanev1.Backend{Ip: ip, Port: 8080})
		w := &dataplanev1.Workload{Namespace: "default", Name: "echo-" + ip, Ips: []string{ip}, Identity: uint32(100 + i), Node: node}
		wl.Names = append(wl.Names, "default/echo-"+ip)
		wl.Items = append(wl.Items, w)
	}
	return []TypedResources{
		{TypeURL: dataplanev1.NamespaceListenerType, Names: []string{"default"}, Items: []types.Resource{
			&dataplanev1.NamespaceListener{Namespace: "default", NamespaceId: 1, OutboundPort: 15001, InboundPort: 15006}}},
		wl,
		{TypeURL: dataplanev1.ServiceType, Names: []string{"default/echo:8080/TCP"}, Items: []types.Resource{svc}},
	}, []config.Diagnostic{{Severity: config.SeverityInfo, Message: "dataplane for " + node}}
}

// TestNodeAgentClientGetsDataplane runs the node agent's real Delta ADS
// client (nodeagent/ads) against the server.
func TestNodeAgentClientGetsDataplane(t *testing.T) {
	src := newFakeSource("127.0.0.11")
	srv := startServer(t, dpSource{src})

	var mu sync.Mutex
	var applied []*ads.Resources
	fail := false
	client, err := ads.New(ads.Config{
		Node: "worker-1", ControlPlane: srv.addr, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Applier: ads.ApplierFunc(func(_ context.Context, r *ads.Resources) error {
			mu.Lock()
			defer mu.Unlock()
			if fail {
				return errors.New("map full")
			}
			applied = append(applied, r)
			return nil
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- client.Run(ctx) }()
	defer func() { cancel(); <-done }()

	last := func() *ads.Resources {
		mu.Lock()
		defer mu.Unlock()
		if len(applied) == 0 {
			return nil
		}
		return applied[len(applied)-1]
	}
	eventually(t, "first dataplane applied", func() bool {
		r := last()
		return r != nil && len(r.Workloads) == 1 && len(r.Services) == 1 && len(r.Listeners) == 1
	})
	if w := last().Workloads["default/echo-127.0.0.11"]; w.GetNode() != "worker-1" || w.GetIdentity() != 100 {
		t.Fatalf("workload = %v", w)
	}
	eventually(t, "dataplane types ACKed", func() bool {
		n := nodeStatus(t, srv.Server, "worker-1")
		synced := 0
		for _, ts := range n.Types {
			if ts.Type == "Workload" || ts.Type == "Service" || ts.Type == "NamespaceListener" {
				if ts.State == "SYNCED" {
					synced++
				}
			}
		}
		return synced == 3
	})

	src.set(false, "127.0.0.11", "127.0.0.12")
	eventually(t, "second workload applied", func() bool {
		r := last()
		return len(r.Workloads) == 2 && len(r.Services["default/echo:8080/TCP"].GetBackends()) == 2
	})

	mu.Lock()
	fail = true
	mu.Unlock()
	src.set(false, "127.0.0.13")
	eventually(t, "the agent's NACK in sync status", func() bool {
		for _, ts := range nodeStatus(t, srv.Server, "worker-1").Types {
			if ts.NACK != nil && ts.NACK.Detail != "" {
				return true
			}
		}
		return false
	})
	if d := httpGet(t, srv.debug.URL+"/debug/syncz"); !containsAll(d, "NamespaceListener", "Workload", "NACK worker-1", "map full") {
		t.Fatalf("syncz:\n%s", d)
	}
	if d := httpGet(t, srv.debug.URL+"/debug/config_dump?node=worker-1"); !containsAll(d, `"dataplane"`, `"Workload"`, "127.0.0.13") {
		t.Fatalf("config_dump lacks the served dataplane:\n%s", d)
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

const agentMeshYAML = `apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: Service
metadata:
  name: cart
  namespace: shop
spec:
  clusterIP: 10.96.7.7
  selector: {app: cart}
  ports:
  - name: http
    port: 8080
---
apiVersion: v1
kind: Pod
metadata:
  name: cart-1
  namespace: shop
  labels: {app: cart}
spec:
  nodeName: worker-1
  serviceAccountName: cart
  containers: [{name: c, image: c}]
status:
  phase: Running
  podIP: 10.1.0.7
`

// TestControlPlaneServesNodeAgent: meshd's wiring with the real
// translators serves a pod's workload and service to the agent of its
// node, over the agent's real ADS client.
func TestControlPlaneServesNodeAgent(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mesh.yaml"), []byte(agentMeshYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	quietLog := slog.New(slog.NewTextHandler(io.Discard, nil))
	cp, err := StartControlPlane(ControlPlaneConfig{ConfigDir: dir, XDSAddr: "127.0.0.1:0", DebugAddr: "127.0.0.1:0", Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := cp.Stop(); err != nil {
			t.Error(err)
		}
	}()
	got := make(chan *ads.Resources, 16)
	client, err := ads.New(ads.Config{Node: "worker-1", ControlPlane: cp.XDSAddr(), Logger: quietLog,
		Applier: ads.ApplierFunc(func(_ context.Context, r *ads.Resources) error { got <- r; return nil })})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- client.Run(ctx) }()
	defer func() { cancel(); <-done }()

	deadline := time.After(wait)
	for {
		select {
		case r := <-got:
			w := r.Workloads["shop/cart-1"]
			s := r.Services["shop/cart:8080/TCP"]
			if w == nil || s == nil || r.Listeners["shop"] == nil {
				continue // a partial first set; wait for the full one
			}
			if w.GetSpiffeId() != "spiffe://cluster.local/ns/shop/sa/cart" || len(s.GetBackends()) != 1 || s.GetBackends()[0].GetIp() != "10.1.0.7" {
				t.Fatalf("workload %v, service %v", w, s)
			}
			return
		case <-deadline:
			t.Fatalf("the agent never got its workload; syncz:\n%s", httpGet(t, "http://"+cp.DebugAddr()+"/debug/syncz"))
		}
	}
}
