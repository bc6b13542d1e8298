package ads

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/nodeagent"
)

var nodeIP = netip.MustParseAddr("10.77.0.1")

func stateConfig() StateConfig {
	return StateConfig{
		Node:    "node-a",
		ProxyIP: nodeIP,
		PodCgroup: func(ns, pod, uid string) string {
			return "/sys/fs/cgroup/pods/" + ns + "_" + pod + "/" + uid
		},
	}
}

// meshResources is a small node: two namespaces, a dual-stack L7 service, a
// plain service, a local and a remote pod, an ALLOW and a DENY policy.
func meshResources() *Resources {
	return &Resources{
		Listeners: map[string]*dataplanev1.NamespaceListener{
			"shop": {Namespace: "shop", OutboundPort: 15001, InboundPort: 15006, Accelerate: true},
			"blog": {Namespace: "blog", OutboundPort: 15011, InboundPort: 15016},
		},
		Workloads: map[string]*dataplanev1.Workload{
			"shop/web-0": {Namespace: "shop", Name: "web-0", Ips: []string{"10.77.1.10", "fd00::10"}, Identity: 100, Node: "node-a",
				PodUid: "5c0f2e1a-7d3b-4f6e-8a9c-1b2d3e4f5a6b"},
			"shop/db-0": {Namespace: "shop", Name: "db-0", Ips: []string{"10.77.2.10"}, Identity: 101, Node: "node-b"},
		},
		Services: map[string]*dataplanev1.Service{
			"shop/web:80/TCP": {Namespace: "shop", Name: "web", Vips: []string{"10.96.0.10", "fd00:96::10"}, Port: 80, Protocol: dataplanev1.Protocol_TCP, L7: true,
				Backends: []*dataplanev1.Backend{{Ip: "10.77.1.10", Port: 8080, Weight: 3}, {Ip: "10.77.1.11", Port: 8080}, {Ip: "fd00::10", Port: 8080}}},
			"shop/db:5432/TCP": {Namespace: "shop", Name: "db", Vips: []string{"10.96.0.11"}, Port: 5432,
				Backends: []*dataplanev1.Backend{{Ip: "10.77.2.10", Port: 5432}}},
			"blog/dns:53/UDP": {Namespace: "blog", Name: "dns", Vips: []string{"10.96.0.53"}, Port: 53, Protocol: dataplanev1.Protocol_UDP, L7: true},
		},
		Policies: map[string]*dataplanev1.Policy{
			"shop/db-allow-web": {Namespace: "shop", Name: "db-allow-web", Action: dataplanev1.Action_ALLOW, Selected: []uint32{101},
				Rules: []*dataplanev1.PolicyRule{{Sources: []uint32{100}, Ports: []uint32{5432, 5433}, Protocol: dataplanev1.Protocol_TCP}}},
			"shop/deny-web-5433": {Namespace: "shop", Name: "deny-web-5433", Action: dataplanev1.Action_DENY, Selected: []uint32{101},
				Rules: []*dataplanev1.PolicyRule{{Sources: []uint32{100}, Ports: []uint32{5433}, Protocol: dataplanev1.Protocol_TCP}}},
			"shop/lockdown": {Namespace: "shop", Name: "lockdown", Action: dataplanev1.Action_ALLOW, Selected: []uint32{100}},
		},
	}
}

func TestToState(t *testing.T) {
	got, err := ToState(meshResources(), stateConfig())
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr
	want := nodeagent.State{
		Services: []nodeagent.Service{
			{VIP: ip("10.96.0.53"), Port: 53, Proto: nodeagent.UDP, L7ProxyPort: 15011},
			{VIP: ip("10.96.0.11"), Port: 5432, Proto: nodeagent.TCP, Backends: []nodeagent.Backend{{IP: ip("10.77.2.10"), Port: 5432}}},
			{VIP: ip("10.96.0.10"), Port: 80, Proto: nodeagent.TCP, L7ProxyPort: 15001, Backends: []nodeagent.Backend{
				{IP: ip("10.77.1.10"), Port: 8080, Weight: 3}, {IP: ip("10.77.1.11"), Port: 8080, Weight: 1}}},
			{VIP: ip("fd00:96::10"), Port: 80, Proto: nodeagent.TCP, L7ProxyPort: 15001, Backends: []nodeagent.Backend{{IP: ip("fd00::10"), Port: 8080}}},
		},
		Workloads: []nodeagent.Workload{
			{IP: ip("10.77.2.10"), Identity: 101, Namespace: "shop"},
			{IP: ip("10.77.1.10"), Identity: 100, Namespace: "shop", Local: true, Cgroup: "/sys/fs/cgroup/pods/shop_web-0/5c0f2e1a-7d3b-4f6e-8a9c-1b2d3e4f5a6b"},
			{IP: ip("fd00::10"), Identity: 100, Namespace: "shop", Local: true, Cgroup: "/sys/fs/cgroup/pods/shop_web-0/5c0f2e1a-7d3b-4f6e-8a9c-1b2d3e4f5a6b"},
		},
		Policies: []nodeagent.PolicyRule{
			{DstIdentity: 100, SrcIdentity: nodeagent.IdentityHost, Verdict: nodeagent.Allow},
			{DstIdentity: 101, SrcIdentity: 100, Port: 5432, Proto: nodeagent.TCP, Verdict: nodeagent.Allow},
			{DstIdentity: 101, SrcIdentity: 100, Port: 5433, Proto: nodeagent.TCP, Verdict: nodeagent.Deny},
		},
		Redirects: []nodeagent.Redirect{
			{Namespace: "blog", ProxyIP: nodeIP, ProxyPort: 15011},
			{Namespace: "shop", ProxyIP: nodeIP, ProxyPort: 15001},
		},
		Accelerate: []nodeagent.Acceleration{{Namespace: "shop", SpliceSafe: true}},
	}
	if diff := cmp.Diff(want.Canonical(), got.Canonical(), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("ToState (-want +got):\n%s", diff)
	}
	// What we produce is what the kernel half accepts.
	if err := got.Validate(); err != nil {
		t.Errorf("nodeagent rejects the converted state: %v", err)
	}
	// Deterministic up to order: a second conversion is the same state.
	again, _ := ToState(meshResources(), stateConfig())
	if diff := cmp.Diff(got.Canonical(), again.Canonical(), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("ToState is not deterministic:\n%s", diff)
	}
}

func TestToStateErrorsNameTheResource(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(r *Resources, cfg *StateConfig)
		want   string
	}{
		{"bad vip", func(r *Resources, _ *StateConfig) { r.Services["shop/db:5432/TCP"].Vips = []string{"10.96.0.300"} },
			`service shop/db:5432/TCP: vips[0]: "10.96.0.300" is not an IP address`},
		{"no vips", func(r *Resources, _ *StateConfig) { r.Services["shop/db:5432/TCP"].Vips = nil },
			`service shop/db:5432/TCP: vips: empty`},
		{"bad backend ip", func(r *Resources, _ *StateConfig) { r.Services["shop/web:80/TCP"].Backends[2].Ip = "web-0" },
			`service shop/web:80/TCP: backends[2].ip: "web-0" is not an IP address`},
		{"backend port", func(r *Resources, _ *StateConfig) { r.Services["shop/web:80/TCP"].Backends[0].Port = 70000 },
			`service shop/web:80/TCP: backends[0].port: 70000 is not a port`},
		{"service port 0", func(r *Resources, _ *StateConfig) { r.Services["blog/dns:53/UDP"].Port = 0 },
			`service blog/dns:53/UDP: port: 0 is not a port`},
		{"protocol", func(r *Resources, _ *StateConfig) { r.Services["blog/dns:53/UDP"].Protocol = 9 },
			`service blog/dns:53/UDP: protocol: 9 is not TCP or UDP`},
		{"duplicate vip", func(r *Resources, _ *StateConfig) {
			r.Services["shop/db:5432/TCP"].Vips = []string{"10.96.0.53"}
			r.Services["shop/db:5432/TCP"].Port = 53
			r.Services["shop/db:5432/TCP"].Protocol = dataplanev1.Protocol_UDP
		},
			`service shop/db:5432/TCP: 10.96.0.53:53/UDP is also served by service blog/dns:53/UDP`},
		{"workload ip", func(r *Resources, _ *StateConfig) { r.Workloads["shop/db-0"].Ips = []string{"::ffff:zz"} },
			`workload shop/db-0: ips[0]: "::ffff:zz" is not an IP address`},
		{"workload identity", func(r *Resources, _ *StateConfig) { r.Workloads["shop/db-0"].Identity = 1 },
			`workload shop/db-0: identity: 1 is reserved`},
		{"workload same ip", func(r *Resources, _ *StateConfig) { r.Workloads["shop/web-0"].Ips = []string{"10.77.2.10"} },
			`workload shop/web-0: ips[0]: 10.77.2.10 is also the IP of workload shop/db-0`},
		{"policy action", func(r *Resources, _ *StateConfig) {
			r.Policies["shop/lockdown"].Action = dataplanev1.Action_ACTION_UNSPECIFIED
		},
			`policy shop/lockdown: action: ACTION_UNSPECIFIED is not ALLOW or DENY`},
		{"policy port", func(r *Resources, _ *StateConfig) { r.Policies["shop/db-allow-web"].Rules[0].Ports[1] = 65536 },
			`policy shop/db-allow-web: rules[0].ports[1]: 65536 is not a port`},
		{"policy too large", func(r *Resources, _ *StateConfig) {
			p := r.Policies["shop/db-allow-web"]
			p.Selected = make([]uint32, 2000)
			for i := range p.Selected {
				p.Selected[i] = uint32(1000 + i)
			}
			p.Rules[0].Sources = make([]uint32, 1000)
		}, `policy shop/db-allow-web: expands to 4000000 kernel rules (selected x sources x ports), more than 1048576`},
		{"two listeners for a namespace", func(r *Resources, _ *StateConfig) {
			r.Listeners["zz-blog-again"] = &dataplanev1.NamespaceListener{Namespace: "blog", OutboundPort: 15021}
		}, `namespace listener zz-blog-again: namespace "blog" also has namespace listener blog`},
		{"too many backends", func(r *Resources, _ *StateConfig) {
			s := r.Services["shop/db:5432/TCP"]
			for i := range 70000 {
				s.Backends = append(s.Backends, &dataplanev1.Backend{Ip: "10.77.2.10", Port: uint32(1 + i%60000)})
			}
		}, `service shop/db:5432/TCP: backends: 70001 is more than 65535`},
		{"weight overflow", func(r *Resources, _ *StateConfig) {
			s := r.Services["shop/db:5432/TCP"]
			s.Backends[0].Weight = 1 << 31
			s.Backends = append(s.Backends, &dataplanev1.Backend{Ip: "10.77.2.11", Port: 5432, Weight: 1 << 31})
		}, `service shop/db:5432/TCP: backends[1].weight: the total weight overflows 32 bits`},
		{"listener port", func(r *Resources, _ *StateConfig) { r.Listeners["blog"].OutboundPort = 0 },
			`namespace listener blog: outbound_port: 0 is not a port`},
		{"no proxy ip", func(_ *Resources, cfg *StateConfig) { cfg.ProxyIP = netip.Addr{} },
			`namespace listener blog: no node proxy address configured`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, cfg := meshResources(), stateConfig()
			tc.mutate(r, &cfg)
			_, err := ToState(r, cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ToState error = %v\nwant it to contain %q", err, tc.want)
			}
		})
	}
}

func TestToStateMergesDuplicateBackends(t *testing.T) {
	r := meshResources()
	r.Services["shop/db:5432/TCP"].Backends = []*dataplanev1.Backend{
		{Ip: "10.77.2.10", Port: 5432, Weight: 2}, {Ip: "::ffff:10.77.2.10", Port: 5432, Weight: 5}, {Ip: "10.77.2.11", Port: 5432},
	}
	st, err := ToState(r, stateConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st.Services {
		if s.Port != 5432 {
			continue
		}
		// Weights 2 and 1 (0 means 1) stay: they differ.
		want := []nodeagent.Backend{{IP: netip.MustParseAddr("10.77.2.10"), Port: 5432, Weight: 2}, {IP: netip.MustParseAddr("10.77.2.11"), Port: 5432, Weight: 1}}
		if diff := cmp.Diff(want, s.Backends, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
			t.Errorf("backends (-want +got):\n%s", diff)
		}
	}
	if err := st.Validate(); err != nil {
		t.Errorf("kernel half rejects the merged state: %v", err)
	}
}

// TestDataplaneApplierOnFakeMaps runs the conversion into the kernel half's
// real diff-and-write code over its in-memory maps, and reads it back.
func TestDataplaneApplierOnFakeMaps(t *testing.T) {
	maps := nodeagent.NewFakeMaps(&nodeagent.OpLog{})
	dp := fakeMapsDataplane{maps}
	cfg := stateConfig()
	cfg.PodCgroup = nil // the fake resolves no cgroups
	app := NewDataplaneApplier(dp, cfg)
	res := meshResources()
	if err := app.Apply(context.Background(), res); err != nil {
		t.Fatal(err)
	}
	want, _ := ToState(res, cfg)
	got, err := nodeagent.DumpMaps(maps)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want.Canonical(), got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("maps after apply (-want +got):\n%s", diff)
	}

	// A bad resource is refused before anything is written.
	// (A new message, as the client delivers: messages are never mutated.)
	bad := proto.Clone(res.Services["shop/db:5432/TCP"]).(*dataplanev1.Service)
	bad.Vips = []string{"nope"}
	res.Services["shop/db:5432/TCP"] = bad
	if err := app.Apply(context.Background(), res); err == nil || !strings.Contains(err.Error(), "service shop/db:5432/TCP") {
		t.Fatalf("Apply(bad) = %v, want an error naming the service", err)
	}
	after, _ := nodeagent.DumpMaps(maps)
	if diff := cmp.Diff(got, after, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("maps changed by a rejected apply:\n%s", diff)
	}
}

type fakeMapsDataplane struct{ m nodeagent.Maps }

func (f fakeMapsDataplane) Apply(ctx context.Context, s nodeagent.State) (nodeagent.Stats, error) {
	return nodeagent.ApplyToMaps(ctx, f.m, s, func(string) (uint64, error) { return 0, nil })
}
