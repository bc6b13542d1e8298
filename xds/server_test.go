package xds

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.uber.org/goleak"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/nodemesh/nodemesh/translate"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	wait  = 5 * time.Second
	quiet = 300 * time.Millisecond // bounded wait for "no push"
)

func endpointIPs(t *testing.T, anys []*anypb.Any) []string {
	t.Helper()
	var ips []string
	for _, a := range anys {
		cla := &endpointv3.ClusterLoadAssignment{}
		if err := a.UnmarshalTo(cla); err != nil {
			t.Fatal(err)
		}
		for _, lle := range cla.GetEndpoints() {
			for _, e := range lle.GetLbEndpoints() {
				ips = append(ips, e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress())
			}
		}
	}
	return ips
}

func nodeStatus(t *testing.T, s *Server, id string) NodeStatus {
	t.Helper()
	for _, n := range s.Status() {
		if n.ID == id {
			return n
		}
	}
	t.Fatalf("node %q not in status %+v", id, s.Status())
	return NodeStatus{}
}

func typeStatus(t *testing.T, s *Server, id, typeURL string) TypeStatus {
	t.Helper()
	for _, ts := range nodeStatus(t, s, id).Types {
		if ts.TypeURL == typeURL {
			return ts
		}
	}
	t.Fatalf("no %s in status", typeURL)
	return TypeStatus{}
}

// eventually retries cond for up to wait.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSotWPushesChangesOnly(t *testing.T) {
	src := newFakeSource("127.0.0.11")
	srv := startServer(t, src)
	c := newSotwClient(t, srv.addr, envoyNode("node-a"))

	c.send(resourcev3.ClusterType, "", "", nil)
	cds := c.recv(wait)
	if len(cds.GetResources()) != 1 || cds.GetVersionInfo() == "" {
		t.Fatalf("CDS: got %d resources, version %q", len(cds.GetResources()), cds.GetVersionInfo())
	}
	c.send(resourcev3.ClusterType, cds.GetVersionInfo(), cds.GetNonce(), nil)
	c.send(resourcev3.EndpointType, "", "", nil, fakeCluster)
	eds := c.recv(wait)
	if got := endpointIPs(t, eds.GetResources()); len(got) != 1 || got[0] != "127.0.0.11" {
		t.Fatalf("EDS endpoints = %v", got)
	}
	c.send(resourcev3.EndpointType, eds.GetVersionInfo(), eds.GetNonce(), nil, fakeCluster)
	eventually(t, "EDS ACK in status", func() bool {
		ts := typeStatus(t, srv.Server, "node-a", resourcev3.EndpointType)
		return ts.Acked == eds.GetVersionInfo() && ts.State == "SYNCED"
	})

	// An endpoint change pushes EDS only, with a new version.
	src.set(false, "127.0.0.11", "127.0.0.12")
	eds2 := c.recv(wait)
	if eds2.GetTypeUrl() != resourcev3.EndpointType || eds2.GetVersionInfo() == eds.GetVersionInfo() {
		t.Fatalf("after endpoint change got %s version %s (was %s)", typeShort(eds2.GetTypeUrl()), eds2.GetVersionInfo(), eds.GetVersionInfo())
	}
	if got := endpointIPs(t, eds2.GetResources()); len(got) != 2 {
		t.Fatalf("EDS endpoints after change = %v", got)
	}
	c.send(resourcev3.EndpointType, eds2.GetVersionInfo(), eds2.GetNonce(), nil, fakeCluster)
	c.expectNothing(quiet)

	// A change signal that changes nothing pushes nothing.
	before := srv.metrics.skipped.Load()
	src.touch()
	c.expectNothing(quiet)
	if srv.metrics.skipped.Load() == before {
		t.Fatal("unchanged store: the skip counter did not move, so no rebuild was tried")
	}
}

func TestSotWNACKShowsInStatus(t *testing.T) {
	src := newFakeSource("127.0.0.11")
	srv := startServer(t, src)
	c := newSotwClient(t, srv.addr, grpcNode("client-1", "default"))

	c.send(resourcev3.ListenerType, "", "", nil, fakeListener)
	lds := c.recv(wait)
	if len(lds.GetResources()) != 1 {
		t.Fatalf("LDS: %d resources", len(lds.GetResources()))
	}
	c.send(resourcev3.ListenerType, "", lds.GetNonce(), &statuspb.Status{Code: int32(codes.InvalidArgument), Message: "listener rejected: no router"}, fakeListener)
	eventually(t, "NACK in status", func() bool {
		ts := typeStatus(t, srv.Server, "client-1", resourcev3.ListenerType)
		return ts.NACK != nil
	})
	ts := typeStatus(t, srv.Server, "client-1", resourcev3.ListenerType)
	if ts.State != "NACK" || ts.NACK.Version != lds.GetVersionInfo() || ts.NACK.Detail != "listener rejected: no router" {
		t.Fatalf("status = %+v, nack %+v", ts, ts.NACK)
	}
	var err error = ts.NACK
	if !strings.Contains(err.Error(), "client-1 rejected LDS") {
		t.Fatalf("NACK error text: %v", err)
	}
	n := nodeStatus(t, srv.Server, "client-1")
	if n.Kind != "grpc" || n.Namespace != "default" {
		t.Fatalf("node status = %+v", n)
	}
	if got := src.translations(translate.Proxy{Kind: translate.ProxylessGRPC, Namespace: "default"}); got == 0 {
		t.Fatal("the proxyless client was not translated as ProxylessGRPC/default")
	}

	text := httpGet(t, srv.debug.URL+"/debug/syncz")
	for _, want := range []string{"client-1", "grpc", "NACK", "listener rejected: no router"} {
		if !strings.Contains(text, want) {
			t.Errorf("syncz table lacks %q:\n%s", want, text)
		}
	}
	metrics := httpGet(t, srv.debug.URL+"/metrics")
	if !strings.Contains(metrics, `nodemesh_xds_nacks_total{type="LDS"} 1`) {
		t.Errorf("metrics lack the NACK:\n%s", metrics)
	}
}

func TestDeltaPushesChangesOnly(t *testing.T) {
	src := newFakeSource("127.0.0.11")
	srv := startServer(t, src)
	c := newDeltaClient(t, srv.addr, envoyNode("node-d"))

	c.send(&discoveryv3.DeltaDiscoveryRequest{Node: c.node, TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{fakeCluster}})
	r := c.recv(wait)
	if len(r.GetResources()) != 1 || r.GetSystemVersionInfo() == "" {
		t.Fatalf("delta EDS: %d resources, version %q", len(r.GetResources()), r.GetSystemVersionInfo())
	}
	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: r.GetNonce()})
	eventually(t, "delta ACK", func() bool {
		return typeStatus(t, srv.Server, "node-d", resourcev3.EndpointType).Acked == r.GetSystemVersionInfo()
	})

	src.touch()
	c.expectNothing(quiet)

	src.set(false, "127.0.0.13")
	r2 := c.recv(wait)
	cla := &endpointv3.ClusterLoadAssignment{}
	if err := r2.GetResources()[0].GetResource().UnmarshalTo(cla); err != nil {
		t.Fatal(err)
	}
	if got := cla.GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetAddress(); got != "127.0.0.13" {
		t.Fatalf("delta EDS after change: %s", got)
	}
	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: r2.GetNonce(),
		ErrorDetail: &statuspb.Status{Code: 3, Message: "bad endpoint"}})
	eventually(t, "delta NACK", func() bool {
		n := typeStatus(t, srv.Server, "node-d", resourcev3.EndpointType).NACK
		return n != nil && n.Detail == "bad endpoint" && n.Version == r2.GetSystemVersionInfo()
	})
}

func TestRefusedSnapshotKeepsLastGood(t *testing.T) {
	src := newFakeSource("127.0.0.11")
	srv := startServer(t, src)
	c := newSotwClient(t, srv.addr, envoyNode("node-b"))
	c.send(resourcev3.RouteType, "", "", nil, fakeRoute)
	rds := c.recv(wait)
	c.send(resourcev3.RouteType, rds.GetVersionInfo(), rds.GetNonce(), nil, fakeRoute)

	src.set(true, "127.0.0.12") // route to a missing cluster: refused
	eventually(t, "check error in status", func() bool { return nodeStatus(t, srv.Server, "node-b").Error != "" })
	c.expectNothing(quiet)
	if e := nodeStatus(t, srv.Server, "node-b").Error; !strings.Contains(e, `references CDS "outbound|8080||missing"`) {
		t.Fatalf("error = %q", e)
	}
	dump := httpGet(t, srv.debug.URL+"/debug/config_dump?node=node-b")
	if !strings.Contains(dump, "127.0.0.11") || strings.Contains(dump, "127.0.0.12") {
		t.Fatalf("config_dump should still show the last good config:\n%s", dump)
	}
	if m := httpGet(t, srv.debug.URL+"/metrics"); !strings.Contains(m, "nodemesh_xds_snapshot_check_errors_total 1") {
		t.Fatalf("metrics lack the check error:\n%s", m)
	}

	src.set(false, "127.0.0.12") // fixed: served again, error cleared
	eventually(t, "error cleared", func() bool { return nodeStatus(t, srv.Server, "node-b").Error == "" })
	c.expectNothing(quiet) // RDS content is the same as before the breakage
}

func TestBadNodeMetadataIsRefused(t *testing.T) {
	srv := startServer(t, newFakeSource("127.0.0.11"))
	c := newSotwClient(t, srv.addr, grpcNode("client-x", "")) // grpc without NAMESPACE
	c.send(resourcev3.ListenerType, "", "", nil, fakeListener)
	select {
	case err := <-c.errs:
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "NAMESPACE") {
			t.Fatalf("stream error = %v", err)
		}
	case r := <-c.resps:
		t.Fatalf("got a response: %v", r)
	case <-time.After(wait):
		t.Fatal("stream not refused")
	}
}

func TestDebugEndpoints(t *testing.T) {
	srv := startServer(t, newFakeSource("127.0.0.11"))
	c := newSotwClient(t, srv.addr, envoyNode("node-c"))
	c.send(resourcev3.ClusterType, "", "", nil)
	c.recv(wait)

	var st []NodeStatus
	if err := json.Unmarshal([]byte(httpGet(t, srv.debug.URL+"/debug/syncz?format=json")), &st); err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 || st[0].ID != "node-c" || st[0].Kind != "node" || len(st[0].Types) != 4 {
		t.Fatalf("syncz json = %+v", st)
	}
	var dump struct {
		Node     string
		Versions map[string]string
		Config   map[string][]json.RawMessage
	}
	if err := json.Unmarshal([]byte(httpGet(t, srv.debug.URL+"/debug/config_dump?node=node-c")), &dump); err != nil {
		t.Fatal(err)
	}
	if dump.Node != "node-c" || len(dump.Config["clusters"]) != 1 || len(dump.Versions) != 4 {
		t.Fatalf("config_dump = %+v", dump)
	}
	resp, err := http.Get(srv.debug.URL + "/debug/config_dump?node=nobody")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown node: status %d", resp.StatusCode)
	}
	if d := httpGet(t, srv.debug.URL+"/debug/diagnostics"); !strings.Contains(d, "Warning Service/default/echo: fake diagnostic for node") {
		t.Fatalf("diagnostics = %q", d)
	}
	m := httpGet(t, srv.debug.URL+"/metrics")
	for _, want := range []string{"nodemesh_xds_streams 1", "nodemesh_xds_nodes 1", `nodemesh_xds_pushes_total{type="CDS"} 1`, "nodemesh_xds_translate_seconds_count 1"} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q:\n%s", want, m)
		}
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, b)
	}
	return string(b)
}

func TestManyNodesShareTranslationPerProxy(t *testing.T) {
	src := newFakeSource("127.0.0.11")
	srv := startServer(t, src)
	var clients []*sotwClient
	for _, n := range []string{"node-1", "node-2", "node-3"} {
		clients = append(clients, newSotwClient(t, srv.addr, envoyNode(n)))
	}
	for i := range 3 { // three proxyless clients in one namespace: one proxy
		clients = append(clients, newSotwClient(t, srv.addr, grpcNode(fmt.Sprintf("client-%d", i), "shop")))
	}
	versions := map[string]string{}
	for _, c := range clients {
		c.send(resourcev3.EndpointType, "", "", nil, fakeCluster)
		r := c.recv(wait)
		c.send(resourcev3.EndpointType, r.GetVersionInfo(), r.GetNonce(), nil, fakeCluster)
		versions[r.GetVersionInfo()] = c.node.GetId()
	}
	if len(versions) != 1 {
		t.Fatalf("equal content, different versions: %v", versions)
	}
	shop := translate.Proxy{Kind: translate.ProxylessGRPC, Namespace: "shop"}
	before := src.translations(shop)

	src.set(false, "127.0.0.21")
	for _, c := range clients {
		r := c.recv(wait)
		if got := endpointIPs(t, r.GetResources()); len(got) != 1 || got[0] != "127.0.0.21" {
			t.Fatalf("%s got %v", c.node.GetId(), got)
		}
	}
	if got := src.translations(shop) - before; got != 1 {
		t.Fatalf("three clients of one proxy kind and namespace were translated %d times, want once", got)
	}
	if n := len(srv.Status()); n != 6 {
		t.Fatalf("status lists %d nodes, want 6", n)
	}
}

func TestNACKClearedByLaterACK(t *testing.T) {
	src := newFakeSource("127.0.0.11")
	srv := startServer(t, src)
	c := newSotwClient(t, srv.addr, envoyNode("node-n"))
	c.send(resourcev3.EndpointType, "", "", nil, fakeCluster)
	r1 := c.recv(wait)
	c.send(resourcev3.EndpointType, r1.GetVersionInfo(), r1.GetNonce(), nil, fakeCluster)

	src.set(false, "127.0.0.12")
	r2 := c.recv(wait)
	// A NACK carries the last accepted version. The refused version is
	// not sent again (that would loop): the next push is a new version.
	c.send(resourcev3.EndpointType, r1.GetVersionInfo(), r2.GetNonce(), &statuspb.Status{Message: "no"}, fakeCluster)
	eventually(t, "NACK", func() bool {
		n := typeStatus(t, srv.Server, "node-n", resourcev3.EndpointType).NACK
		return n != nil && n.Version == r2.GetVersionInfo()
	})

	c.expectNothing(quiet)

	src.set(false, "127.0.0.13")
	r3 := c.recv(wait)
	if r3.GetVersionInfo() == r2.GetVersionInfo() || r3.GetVersionInfo() == r1.GetVersionInfo() {
		t.Fatalf("after the fix got version %s again", r3.GetVersionInfo())
	}
	c.send(resourcev3.EndpointType, r3.GetVersionInfo(), r3.GetNonce(), nil, fakeCluster)
	eventually(t, "ACK of the fixed version", func() bool {
		ts := typeStatus(t, srv.Server, "node-n", resourcev3.EndpointType)
		return ts.NACK == nil && ts.State == "SYNCED" && ts.Acked == r3.GetVersionInfo()
	})
	if ts := typeStatus(t, srv.Server, "node-n", resourcev3.EndpointType); ts.NACKs != 1 {
		t.Fatalf("%d NACKs counted, want 1", ts.NACKs)
	}
}

func TestNodeForgottenAfterLastStream(t *testing.T) {
	srv := startServer(t, newFakeSource("127.0.0.11"))
	ctxClient := newSotwClient(t, srv.addr, envoyNode("node-gone"))
	ctxClient.send(resourcev3.ClusterType, "", "", nil)
	ctxClient.recv(wait)
	if _, _, ok := srv.NodeConfig("node-gone"); !ok {
		t.Fatal("connected node has no config")
	}
	_ = ctxClient.stream.CloseSend()
	eventually(t, "node removed", func() bool { return len(srv.Status()) == 0 })
	if _, _, ok := srv.NodeConfig("node-gone"); ok {
		t.Fatal("config of a gone node still served")
	}
	if got := srv.metrics.nodes.Load(); got != 0 {
		t.Fatalf("nodes gauge = %d", got)
	}
}

func TestChangesAreDebounced(t *testing.T) {
	src := newFakeSource("127.0.0.11")
	srv := startServer(t, src)
	c := newSotwClient(t, srv.addr, envoyNode("node-q"))
	c.send(resourcev3.EndpointType, "", "", nil, fakeCluster)
	r := c.recv(wait)
	c.send(resourcev3.EndpointType, r.GetVersionInfo(), r.GetNonce(), nil, fakeCluster)

	envoy := translate.Proxy{Kind: translate.SharedEnvoy, Node: "node-q"}
	before := src.translations(envoy)
	for i := range 10 { // a burst well inside the 5ms debounce
		src.set(false, fmt.Sprintf("127.0.1.%d", i))
	}
	pushes := 0
	for {
		r = c.recv(wait)
		pushes++
		c.send(resourcev3.EndpointType, r.GetVersionInfo(), r.GetNonce(), nil, fakeCluster)
		if got := endpointIPs(t, r.GetResources()); len(got) == 1 && got[0] == "127.0.1.9" {
			break
		}
	}
	c.expectNothing(quiet)
	if got := src.translations(envoy) - before; pushes > 2 || got > 2 {
		t.Fatalf("10 changes in a burst gave %d pushes and %d translations, want 1 (2 if the burst straddled the window)", pushes, got)
	}
}

// panicSource panics in Translate once armed.
type panicSource struct {
	*fakeSource
	armed *atomic.Bool
}

func (p panicSource) Current() View { return panicView{p.fakeSource.Current().(fakeView), p.armed} }

type panicView struct {
	fakeView
	armed *atomic.Bool
}

func (v panicView) Translate(p translate.Proxy) *translate.NodeConfig {
	if v.armed.Load() {
		panic("index out of range [3] with length 3")
	}
	return v.fakeView.Translate(p)
}

func TestTranslatePanicKeepsLastGood(t *testing.T) {
	src := newFakeSource("127.0.0.11")
	armed := &atomic.Bool{}
	srv := startServer(t, panicSource{src, armed})
	c := newSotwClient(t, srv.addr, envoyNode("node-p"))
	c.send(resourcev3.EndpointType, "", "", nil, fakeCluster)
	r := c.recv(wait)
	c.send(resourcev3.EndpointType, r.GetVersionInfo(), r.GetNonce(), nil, fakeCluster)

	armed.Store(true)
	src.set(false, "127.0.0.12")
	eventually(t, "panic recorded", func() bool {
		return strings.Contains(nodeStatus(t, srv.Server, "node-p").Error, "translate panicked: index out of range")
	})
	c.expectNothing(quiet)

	armed.Store(false)
	src.set(false, "127.0.0.13")
	r = c.recv(wait)
	if got := endpointIPs(t, r.GetResources()); len(got) != 1 || got[0] != "127.0.0.13" {
		t.Fatalf("after recovery: %v", got)
	}
}

func TestUnchangedContentIsNotCheckedAgain(t *testing.T) {
	src := newFakeSource("127.0.0.11")
	var checks atomic.Int64
	s, err := NewServer(Config{Source: src, Debounce: time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Check: func(nc *translate.NodeConfig) error { checks.Add(1); return CheckNodeConfig(nc) }})
	if err != nil {
		t.Fatal(err)
	}
	ns := &nodeState{id: "n", proxy: translate.Proxy{Node: "n"}}
	s.nodes["n"] = ns
	s.rebuildAll(src.Current())
	if checks.Load() != 1 || ns.served == nil {
		t.Fatalf("first build: %d checks, served %v", checks.Load(), ns.served != nil)
	}
	src.touch()
	s.rebuildAll(src.Current())
	if checks.Load() != 1 {
		t.Fatalf("unchanged content checked again (%d checks)", checks.Load())
	}
	src.set(false, "127.0.0.12")
	s.rebuildAll(src.Current())
	if checks.Load() != 2 {
		t.Fatalf("changed content: %d checks, want 2", checks.Load())
	}
	s.Shutdown()
}
