package ads

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeApplier records every Apply and fails when fail says so.
type fakeApplier struct {
	mu      sync.Mutex
	calls   []*Resources // every call, accepted or not
	applied *Resources   // last accepted
	fail    func(*Resources) error
}

func (f *fakeApplier) Apply(_ context.Context, r *Resources) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, r)
	if f.fail != nil {
		if err := f.fail(r); err != nil {
			return err
		}
	}
	f.applied = r
	return nil
}

func (f *fakeApplier) state() (calls int, applied *Resources) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls), f.applied
}

func (f *fakeApplier) setFail(fn func(*Resources) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = fn
}

func testService(ns, name string, port uint32, backends ...string) *dataplanev1.Service {
	s := &dataplanev1.Service{Namespace: ns, Name: name, Vips: []string{"10.96.0.10"}, Port: port, Protocol: dataplanev1.Protocol_TCP}
	for _, b := range backends {
		s.Backends = append(s.Backends, &dataplanev1.Backend{Ip: b, Port: 8080, Node: "node-a"})
	}
	return s
}

func testWorkload(ns, name, ip string, id uint32) *dataplanev1.Workload {
	return &dataplanev1.Workload{Namespace: ns, Name: name, Ips: []string{ip}, Identity: id, ServiceAccount: "default", Node: "node-a", NamespaceId: 7}
}

// seed fills cp with a small mesh and returns what the client should apply.
func seed(cp *controlPlane) *Resources {
	want := &Resources{
		Listeners: map[string]*dataplanev1.NamespaceListener{
			"shop": {Namespace: "shop", NamespaceId: 7, OutboundPort: 15001, InboundPort: 15006},
		},
		Workloads: map[string]*dataplanev1.Workload{
			"shop/web-0": testWorkload("shop", "web-0", "10.0.1.5", 100),
			"shop/db-0":  testWorkload("shop", "db-0", "10.0.1.6", 101),
		},
		Services: map[string]*dataplanev1.Service{
			"shop/web:80/TCP": testService("shop", "web", 80, "10.0.1.5"),
		},
		Policies: map[string]*dataplanev1.Policy{
			"shop/db-allow-web": {Namespace: "shop", Name: "db-allow-web", Action: dataplanev1.Action_ALLOW, Selected: []uint32{101},
				Rules: []*dataplanev1.PolicyRule{{Sources: []uint32{100}, Ports: []uint32{5432}, Protocol: dataplanev1.Protocol_TCP}}},
		},
	}
	for n, r := range want.Listeners {
		cp.set(dataplanev1.NamespaceListenerType, n, r)
	}
	for n, r := range want.Workloads {
		cp.set(dataplanev1.WorkloadType, n, r)
	}
	for n, r := range want.Services {
		cp.set(dataplanev1.ServiceType, n, r)
	}
	for n, r := range want.Policies {
		cp.set(dataplanev1.PolicyType, n, r)
	}
	return want
}

// startClient runs a client against cp until the test ends; opts adjust
// its config.
func startClient(t *testing.T, cp *controlPlane, app Applier, opts ...func(*Config)) *Client {
	t.Helper()
	cfg := Config{
		Node:         "node-a",
		ControlPlane: cp.addr,
		Applier:      app,
		Logger:       slog.New(slog.DiscardHandler),
		Backoff:      Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
	}
	for _, o := range opts {
		o(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return c
}

func noRetry(c *Config) { c.NoRetry = true }

func acked(c *Client, typ string, n int) func() bool {
	return func() bool { return c.Status().Types[typ].Acks >= n }
}

func allAcked(c *Client, n int) func() bool {
	return func() bool {
		for _, typ := range dataplanev1.Types {
			if c.Status().Types[typ].Acks < n {
				return false
			}
		}
		return true
	}
}

// acks returns the ACKs (nonce set, no error) and NACKs seen by the server.
func acksAndNacks(reqs []*discovery.DeltaDiscoveryRequest) (acks, nacks []*discovery.DeltaDiscoveryRequest) {
	for _, r := range reqs {
		switch {
		case r.GetResponseNonce() == "":
		case r.GetErrorDetail() != nil:
			nacks = append(nacks, r)
		default:
			acks = append(acks, r)
		}
	}
	return acks, nacks
}

func TestClientAppliesInitialSetOnce(t *testing.T) {
	cp := newControlPlane(t)
	want := seed(cp)
	app := &fakeApplier{}
	c := startClient(t, cp, app)

	waitFor(t, "all types acked", allAcked(c, 1))
	calls, got := app.state()
	if calls != 1 {
		t.Errorf("Apply called %d times for the initial sync, want 1 (full set at once)", calls)
	}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("applied set (-want +got):\n%s", diff)
	}

	// The client counts an ACK once sent; wait for the server to read them.
	waitFor(t, "server saw 4 ACKs", func() bool {
		_, reqs, _ := cp.seen()
		acks, _ := acksAndNacks(reqs)
		return len(acks) >= 4
	})
	resps, reqs, _ := cp.seen()
	if len(resps) != 4 {
		t.Errorf("server sent %d responses, want 4 (one per type)", len(resps))
	}
	acks, nacks := acksAndNacks(reqs)
	if len(nacks) != 0 {
		t.Errorf("unexpected NACKs: %v", nacks)
	}
	ackedNonces := map[string]bool{}
	for _, a := range acks {
		ackedNonces[a.GetTypeUrl()+"/"+a.GetResponseNonce()] = true
	}
	for _, r := range resps {
		if !ackedNonces[r.GetTypeUrl()+"/"+r.GetNonce()] {
			t.Errorf("response %s nonce %s was not ACKed", r.GetTypeUrl(), r.GetNonce())
		}
	}
	// The subscription is an explicit wildcard carrying the node name.
	first := reqs[0]
	if first.GetNode().GetId() != "node-a" || !slices.Equal(first.GetResourceNamesSubscribe(), []string{"*"}) {
		t.Errorf("first request node=%q subscribe=%v, want node-a and [*]", first.GetNode().GetId(), first.GetResourceNamesSubscribe())
	}
	st := c.Status()
	if !st.Connected || !st.Synced || c.Ready() != nil {
		t.Errorf("status connected=%v synced=%v ready=%v, want connected, synced, ready", st.Connected, st.Synced, c.Ready())
	}
	if n := st.Types[dataplanev1.WorkloadType].Resources; n != 2 {
		t.Errorf("status holds %d workloads, want 2", n)
	}

	// The same over HTTP.
	rec := httptest.NewRecorder()
	c.StatusHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/ads", nil))
	var viaHTTP Status
	if err := json.Unmarshal(rec.Body.Bytes(), &viaHTTP); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, rec.Body)
	}
	if !viaHTTP.Synced || viaHTTP.Types[dataplanev1.ServiceType].Acks != 1 || viaHTTP.Types[dataplanev1.ServiceType].Nonce == "" {
		t.Errorf("status over HTTP = %+v, want synced with one service ACK and its nonce", viaHTTP)
	}
	rec = httptest.NewRecorder()
	c.StatusHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/ads?ready", nil))
	if rec.Code != 200 {
		t.Errorf("?ready = %d %s, want 200", rec.Code, rec.Body)
	}
}

func TestClientSingleChangeSendsOnlyThatResource(t *testing.T) {
	cp := newControlPlane(t)
	want := seed(cp)
	app := &fakeApplier{}
	c := startClient(t, cp, app)
	waitFor(t, "initial sync", allAcked(c, 1))
	before, _, _ := cp.seen()

	changed := testService("shop", "web", 80, "10.0.1.5", "10.0.2.9")
	cp.set(dataplanev1.ServiceType, "shop/web:80/TCP", changed)
	waitFor(t, "service change acked", acked(c, dataplanev1.ServiceType, 2))

	after, _, _ := cp.seen()
	sent := after[len(before):]
	if len(sent) != 1 || len(sent[0].GetResources()) != 1 || sent[0].GetResources()[0].GetName() != "shop/web:80/TCP" {
		t.Fatalf("server sent %d responses after one change (%v), want one response with only shop/web:80/TCP", len(sent), sent)
	}
	calls, got := app.state()
	if calls != 2 {
		t.Errorf("Apply called %d times, want 2", calls)
	}
	want.Services["shop/web:80/TCP"] = changed
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("applied set after change (-want +got):\n%s", diff)
	}

	// A removal arrives as removed_resources and leaves the rest in place.
	cp.del(dataplanev1.WorkloadType, "shop/db-0")
	waitFor(t, "workload removal acked", acked(c, dataplanev1.WorkloadType, 2))
	final, _, _ := cp.seen()
	last := final[len(final)-1]
	if !slices.Equal(last.GetRemovedResources(), []string{"shop/db-0"}) || len(last.GetResources()) != 0 {
		t.Errorf("removal response: removed=%v resources=%d, want [shop/db-0] and none", last.GetRemovedResources(), len(last.GetResources()))
	}
	_, got = app.state()
	delete(want.Workloads, "shop/db-0")
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("applied set after removal (-want +got):\n%s", diff)
	}
}

func TestClientNACKKeepsPreviousState(t *testing.T) {
	cp := newControlPlane(t)
	want := seed(cp)
	app := &fakeApplier{fail: func(r *Resources) error {
		for name, s := range r.Services {
			if slices.Contains(s.GetVips(), "not-an-ip") {
				return fmt.Errorf("service %s: vip %q is not an IP address", name, "not-an-ip")
			}
		}
		return nil
	}}
	c := startClient(t, cp, app, noRetry) // Envoy's semantics alone; retries: TestClientRetriesRejectedUpdates
	waitFor(t, "initial sync", allAcked(c, 1))

	bad := testService("shop", "api", 9090, "10.0.1.5")
	bad.Vips = []string{"not-an-ip"}
	cp.set(dataplanev1.ServiceType, "shop/api:9090/TCP", bad)
	waitFor(t, "nack", func() bool { return c.Status().Types[dataplanev1.ServiceType].Nacks == 1 })
	waitFor(t, "server saw the NACK", func() bool {
		_, reqs, _ := cp.seen()
		_, nacks := acksAndNacks(reqs)
		return len(nacks) >= 1
	})

	resps, reqs, _ := cp.seen()
	_, nacks := acksAndNacks(reqs)
	if len(nacks) != 1 {
		t.Fatalf("server saw %d NACKs, want 1", len(nacks))
	}
	nack := nacks[0]
	const wantMsg = `service shop/api:9090/TCP: vip "not-an-ip" is not an IP address`
	if nack.GetTypeUrl() != dataplanev1.ServiceType || nack.GetResponseNonce() != resps[len(resps)-1].GetNonce() || nack.GetErrorDetail().GetMessage() != wantMsg {
		t.Errorf("NACK = type %s nonce %s message %q; want type %s nonce %s message %q",
			nack.GetTypeUrl(), nack.GetResponseNonce(), nack.GetErrorDetail().GetMessage(),
			dataplanev1.ServiceType, resps[len(resps)-1].GetNonce(), wantMsg)
	}
	if got := c.Status().Types[dataplanev1.ServiceType].LastNack; got != wantMsg {
		t.Errorf("status LastNack = %q, want %q", got, wantMsg)
	}
	_, got := app.state()
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("state after NACK must be the previous one (-want +got):\n%s", diff)
	}

	// A later good change applies on top of the last good state; the rejected
	// resource stays out.
	moved := testWorkload("shop", "web-0", "10.0.1.50", 100)
	cp.set(dataplanev1.WorkloadType, "shop/web-0", moved)
	waitFor(t, "workload change acked", acked(c, dataplanev1.WorkloadType, 2))
	want.Workloads["shop/web-0"] = moved
	_, got = app.state()
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("state after a good change following a NACK (-want +got):\n%s", diff)
	}

	// Fixing the resource gets it applied and ACKed.
	bad.Vips = []string{"10.96.0.20"}
	cp.set(dataplanev1.ServiceType, "shop/api:9090/TCP", bad)
	waitFor(t, "fixed service acked", acked(c, dataplanev1.ServiceType, 2))
	want.Services["shop/api:9090/TCP"] = bad
	_, got = app.state()
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("state after fix (-want +got):\n%s", diff)
	}
}

func TestClientReconnectsAndResyncsWithoutReapplying(t *testing.T) {
	cp := newControlPlane(t)
	want := seed(cp)
	app := &fakeApplier{}
	c := startClient(t, cp, app)
	waitFor(t, "initial sync", allAcked(c, 1))
	callsBefore, _ := app.state()

	// The control plane goes away for a while: the client retries with
	// backoff and tears nothing down.
	cp.stop()
	waitFor(t, "disconnect seen", func() bool { return !c.Status().Connected })
	time.Sleep(400 * time.Millisecond)
	down := c.Status()
	if down.Reconnects < 2 {
		t.Errorf("reconnect attempts while the server was down = %d, want >= 2 (backoff 20ms..200ms over 400ms)", down.Reconnects)
	}
	if down.Reconnects > 20 {
		t.Errorf("reconnect attempts while the server was down = %d, backoff is not backing off", down.Reconnects)
	}
	if calls, _ := app.state(); calls != callsBefore {
		t.Errorf("Apply called while the control plane was away (%d -> %d calls)", callsBefore, calls)
	}
	if c.Ready() != nil {
		t.Errorf("client not ready while the control plane is away: %v (the kernel keeps the last set)", c.Ready())
	}

	cp.restart() // same content, fresh server and caches
	waitFor(t, "resubscribed and acked", allAcked(c, 2))

	resps, reqs, _ := cp.seen()
	for _, r := range resps[4:] { // after the first server's four
		if len(r.GetResources()) != 0 || len(r.GetRemovedResources()) != 0 {
			t.Errorf("restarted server sent %d resources / %d removals for %s, want nothing new", len(r.GetResources()), len(r.GetRemovedResources()), r.GetTypeUrl())
		}
	}
	var initial map[string]map[string]string
	for _, r := range reqs {
		if r.GetResponseNonce() == "" && len(r.GetInitialResourceVersions()) > 0 {
			if initial == nil {
				initial = map[string]map[string]string{}
			}
			initial[r.GetTypeUrl()] = r.GetInitialResourceVersions()
		}
	}
	if len(initial[dataplanev1.WorkloadType]) != 2 || len(initial[dataplanev1.ServiceType]) != 1 {
		t.Errorf("re-subscription initial_resource_versions = %v, want the 2 workloads and 1 service held", initial)
	}
	if calls, _ := app.state(); calls != callsBefore {
		t.Errorf("unchanged state re-applied after reconnect (%d -> %d calls)", callsBefore, calls)
	}

	// The new stream is live.
	extra := testWorkload("shop", "web-1", "10.0.1.7", 102)
	cp.set(dataplanev1.WorkloadType, "shop/web-1", extra)
	waitFor(t, "change after reconnect applied", acked(c, dataplanev1.WorkloadType, 3))
	want.Workloads["shop/web-1"] = extra
	_, got := app.state()
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("state after reconnect and change (-want +got):\n%s", diff)
	}
}

func TestClientFirstApplyFailureKeepsFullSet(t *testing.T) {
	cp := newControlPlane(t)
	want := seed(cp)
	app := &fakeApplier{}
	app.setFail(func(*Resources) error { return errors.New("maps not ready") })
	c := startClient(t, cp, app, noRetry)
	waitFor(t, "nacks of the initial set", func() bool {
		for _, typ := range dataplanev1.Types {
			if c.Status().Types[typ].Nacks < 1 {
				return false
			}
		}
		return true
	})
	if err := c.Ready(); !errors.Is(err, ErrNotSynced) {
		t.Errorf("Ready() = %v, want ErrNotSynced", err)
	}
	rec := httptest.NewRecorder()
	c.StatusHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/ads?ready", nil))
	if rec.Code != 503 {
		t.Errorf("?ready before the first apply = %d, want 503", rec.Code)
	}
	// The next response must be applied over the whole set, not over nothing.
	app.setFail(nil)
	extra := testWorkload("shop", "web-1", "10.0.1.7", 102)
	cp.set(dataplanev1.WorkloadType, "shop/web-1", extra)
	waitFor(t, "applied", acked(c, dataplanev1.WorkloadType, 1))
	want.Workloads["shop/web-1"] = extra
	_, got := app.state()
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("state after a failed first apply (-want +got):\n%s", diff)
	}
}

func TestBackoffDelay(t *testing.T) {
	b := Backoff{Initial: 100 * time.Millisecond, Max: time.Second, Jitter: 0.2}
	for _, tc := range []struct {
		attempt int
		base    time.Duration
	}{{0, 100 * time.Millisecond}, {1, 200 * time.Millisecond}, {3, 800 * time.Millisecond}, {4, time.Second}, {50, time.Second}} {
		t.Run(fmt.Sprint(tc.attempt), func(t *testing.T) {
			lo, hi := time.Duration(float64(tc.base)*0.8), time.Duration(float64(tc.base)*1.2)
			seen := map[time.Duration]bool{}
			for range 50 {
				d := b.Delay(tc.attempt)
				if d < lo || d > hi {
					t.Fatalf("Delay(%d) = %v, want within [%v, %v]", tc.attempt, d, lo, hi)
				}
				seen[d] = true
			}
			if len(seen) < 2 {
				t.Errorf("Delay(%d) is not jittered: %v", tc.attempt, seen)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	app := ApplierFunc(func(context.Context, *Resources) error { return nil })
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // substring; "" = valid
	}{
		{"ok", Config{Node: "n", ControlPlane: "127.0.0.1:1", Applier: app}, ""},
		{"no node", Config{ControlPlane: "127.0.0.1:1", Applier: app}, "node is required"},
		{"no control plane", Config{Node: "n", Applier: app}, "control plane address or connection is required"},
		{"no applier", Config{Node: "n", ControlPlane: "x:1"}, "applier is required"},
		{"bad type", Config{Node: "n", ControlPlane: "x:1", Applier: app, Types: []string{"type.googleapis.com/foo"}}, `type "type.googleapis.com/foo" is not a dataplane type`},
		{"bad jitter", Config{Node: "n", ControlPlane: "x:1", Applier: app, Backoff: Backoff{Jitter: 1.5}}, "jitter"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Validate() = %v, want error containing %q", err, tc.want)
			}
		})
	}
}

// TestClientLargeInitialSync syncs 10,000 services (a first response far
// above gRPC's default 4 MiB message limit) through the real server.
func TestClientLargeInitialSync(t *testing.T) {
	cp := newControlPlane(t)
	const n = 10000
	batch := map[string]types.Resource{}
	for i := range n {
		svc := &dataplanev1.Service{Namespace: "big", Name: fmt.Sprint("svc", i), Vips: []string{fmt.Sprintf("10.%d.%d.%d", 96+i>>16, i>>8&255, i&255)}, Port: 80, Protocol: dataplanev1.Protocol_TCP}
		for b := range 10 {
			svc.Backends = append(svc.Backends, &dataplanev1.Backend{Ip: fmt.Sprintf("10.200.%d.%d", i>>8&255, (i+b)&255), Port: uint32(8000 + b), Node: "node-with-a-long-name-" + fmt.Sprint(b)})
		}
		batch[fmt.Sprintf("big/svc%d:80/TCP", i)] = svc
	}
	if err := cp.caches[dataplanev1.ServiceType].UpdateResources(batch, nil); err != nil {
		t.Fatal(err)
	}
	app := &fakeApplier{}
	start := time.Now()
	c := startClient(t, cp, app)
	waitForWithin(t, time.Minute, "large sync", allAcked(c, 1)) // slow under -race on a loaded machine
	took := time.Since(start)
	resps, _, _ := cp.seen()
	size := 0
	for _, r := range resps {
		size += proto.Size(r)
	}
	if size <= 4<<20 {
		t.Fatalf("test setup: responses total %d bytes, want more than gRPC's 4 MiB default", size)
	}
	if _, got := app.state(); len(got.Services) != n {
		t.Errorf("applied %d services, want %d", len(got.Services), n)
	}
	t.Logf("initial sync of %d services (%.1f MiB) took %v", n, float64(size)/(1<<20), took)
}

// TestClientResyncsChangesMadeWhileAway: the control plane changed while the
// client was disconnected; on reconnect only the differences come over the
// wire (a changed workload, a removed service) and the client ends up with
// the control plane's set.
func TestClientResyncsChangesMadeWhileAway(t *testing.T) {
	cp := newControlPlane(t)
	want := seed(cp)
	app := &fakeApplier{}
	c := startClient(t, cp, app)
	waitFor(t, "initial sync", allAcked(c, 1))

	cp.stop()
	waitFor(t, "disconnect seen", func() bool { return !c.Status().Connected })
	moved := testWorkload("shop", "db-0", "10.0.1.66", 101)
	cp.set(dataplanev1.WorkloadType, "shop/db-0", moved)
	cp.del(dataplanev1.ServiceType, "shop/web:80/TCP")
	before, _, _ := cp.seen()
	cp.restart()
	waitFor(t, "resynced", allAcked(c, 2))

	after, _, _ := cp.seen()
	sent, removed := map[string]bool{}, map[string]bool{}
	for _, r := range after[len(before):] {
		for _, res := range r.GetResources() {
			sent[res.GetName()] = true
		}
		for _, name := range r.GetRemovedResources() {
			removed[name] = true
		}
	}
	if !cmp.Equal(sent, map[string]bool{"shop/db-0": true}) || !cmp.Equal(removed, map[string]bool{"shop/web:80/TCP": true}) {
		t.Errorf("after reconnect the server sent %v and removed %v; want only shop/db-0 and the removal of shop/web:80/TCP", sent, removed)
	}
	want.Workloads["shop/db-0"] = moved
	delete(want.Services, "shop/web:80/TCP")
	_, got := app.state()
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("state after resync (-want +got):\n%s", diff)
	}
}

// TestClientRetriesRejectedUpdates: after Apply failed, the client
// re-subscribes after a backoff, so a transient failure heals with no new
// change on the control plane, and a bad resource keeps being NACKed.
func TestClientRetriesRejectedUpdates(t *testing.T) {
	cp := newControlPlane(t)
	want := seed(cp)
	app := &fakeApplier{}
	c := startClient(t, cp, app)
	waitFor(t, "initial sync", allAcked(c, 1))

	// A transient failure: the next Apply fails once.
	var failed atomic.Bool
	app.setFail(func(*Resources) error {
		if failed.CompareAndSwap(false, true) {
			return errors.New("bpf map update: no memory")
		}
		return nil
	})
	changed := testService("shop", "web", 80, "10.0.1.5", "10.0.3.3")
	cp.set(dataplanev1.ServiceType, "shop/web:80/TCP", changed)
	waitFor(t, "the change applied by the retry", func() bool {
		_, got := app.state()
		return proto.Equal(got.Services["shop/web:80/TCP"], changed)
	})
	want.Services["shop/web:80/TCP"] = changed
	_, got := app.state()
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("state after the retry (-want +got):\n%s", diff)
	}
	st := c.Status()
	if ts := st.Types[dataplanev1.ServiceType]; ts.Nacks != 1 || ts.LastNack != "bpf map update: no memory" || !ts.LastAck.After(ts.LastNackTime) {
		t.Errorf("service status %+v, want one NACK followed by an ACK", ts)
	}
	if st.Reconnects != 1 {
		t.Errorf("reconnects = %d, want 1 (the re-subscription)", st.Reconnects)
	}

	// A bad resource: NACKed again on each retry, with growing backoff;
	// the applied state stays.
	app.setFail(func(r *Resources) error {
		if _, ok := r.Services["shop/bad:1/TCP"]; ok {
			return errors.New("service shop/bad:1/TCP: bad")
		}
		return nil
	})
	cp.set(dataplanev1.ServiceType, "shop/bad:1/TCP", testService("shop", "bad", 1))
	waitFor(t, "three more NACKs", func() bool { return c.Status().Types[dataplanev1.ServiceType].Nacks >= 4 })
	if _, got := app.state(); !cmp.Equal(want, got, protocmp.Transform()) {
		t.Errorf("state changed while a bad resource was retried:\n%s", cmp.Diff(want, got, protocmp.Transform()))
	}
}
