package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/nodemesh/nodemesh/bpf"
)

var cmpOpts = cmp.Options{cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmpopts.EquateEmpty()}

func noCgroups(path string) (uint64, error) {
	return 0, fmt.Errorf("no cgroups in unit tests: %s", path)
}

func svc(vip string, port uint16, backends ...string) Service {
	s := Service{VIP: netip.MustParseAddr(vip), Port: port, Proto: TCP}
	for _, b := range backends {
		ap := netip.MustParseAddrPort(b)
		s.Backends = append(s.Backends, Backend{IP: ap.Addr(), Port: ap.Port()})
	}
	return s
}

// sim replays writes on plain maps and checks after every single write
// that the programs could never pick a slot or backend that is not there.
// (Cumulative weights may briefly disagree with the master's total while a
// weight change is written: the program's binary search stays within slots
// 1..count whatever the weights, so that only skews a few picks.)
type sim struct {
	services map[bpf.MeshSvcKey]bpf.MeshSvcValue
	backends map[uint32]bpf.MeshBackend
}

func newSim(t *testing.T, m Maps) *sim {
	t.Helper()
	s, err := m.Services.Dump()
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Backends.Dump()
	if err != nil {
		t.Fatal(err)
	}
	return &sim{services: s, backends: b}
}

func (s *sim) replay(t *testing.T, ops []Op) {
	t.Helper()
	for i, op := range ops {
		switch op.Table {
		case bpf.MeshMapServices:
			k := op.Key.(bpf.MeshSvcKey)
			if op.Delete {
				delete(s.services, k)
			} else {
				s.services[k] = op.Value.(bpf.MeshSvcValue)
			}
		case bpf.MeshMapBackends:
			k := op.Key.(uint32)
			if op.Delete {
				delete(s.backends, k)
			} else {
				s.backends[k] = op.Value.(bpf.MeshBackend)
			}
		}
		if err := s.consistent(); err != nil {
			t.Fatalf("after write %d (%s): %v", i, op, err)
		}
	}
}

func (s *sim) consistent() error {
	for k, m := range s.services {
		if k.Slot != 0 {
			continue
		}
		for slot := uint32(1); slot <= m.Count; slot++ {
			sk := k
			sk.Slot = uint16(slot)
			v, ok := s.services[sk]
			if !ok {
				return fmt.Errorf("service %v: count %d but slot %d missing", k.Vip.Netip(), m.Count, slot)
			}
			if _, ok := s.backends[v.BackendId]; !ok {
				return fmt.Errorf("service %v slot %d: backend %d missing", k.Vip.Netip(), slot, v.BackendId)
			}
		}
	}
	return nil
}

func TestApplyWriteOrderNeverExposesHalfWrittenService(t *testing.T) {
	steps := []struct {
		name  string
		state State
	}{
		{"create", State{Services: []Service{svc("10.0.0.1", 80, "192.168.0.1:8080", "192.168.0.2:8080")}}},
		{"grow", State{Services: []Service{svc("10.0.0.1", 80, "192.168.0.1:8080", "192.168.0.2:8080", "192.168.0.3:8080", "192.168.0.4:8080")}}},
		{"replace backends", State{Services: []Service{svc("10.0.0.1", 80, "192.168.1.1:8080", "192.168.1.2:8080")}}},
		{"shrink", State{Services: []Service{svc("10.0.0.1", 80, "192.168.1.2:8080")}}},
		{"add and remove", State{Services: []Service{svc("10.0.0.2", 80, "192.168.1.2:8080", "192.168.2.2:8080")}}},
		{"empty", State{}},
	}
	var log OpLog
	m := NewFakeMaps(&log)
	ctx := context.Background()
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			sm := newSim(t, m)
			log.Reset()
			if _, err := ApplyToMaps(ctx, m, step.state, noCgroups); err != nil {
				t.Fatal(err)
			}
			ops := log.Ops()
			if len(ops) == 0 {
				t.Fatal("no writes")
			}
			sm.replay(t, ops)
			got, err := DumpMaps(m)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(step.state.Canonical(), got, cmpOpts); diff != "" {
				t.Errorf("maps differ (-want +got):\n%s", diff)
			}
			log.Reset()
			st, err := ApplyToMaps(ctx, m, step.state, noCgroups)
			if err != nil {
				t.Fatal(err)
			}
			if ops := log.Ops(); len(ops) != 0 || st.Puts+st.Deletes != 0 {
				t.Errorf("second apply wrote %d entries: %v", len(ops), ops)
			}
		})
	}
}

func TestApplyGrowWritesSlotsBeforeCount(t *testing.T) {
	var log OpLog
	m := NewFakeMaps(&log)
	ctx := context.Background()
	if _, err := ApplyToMaps(ctx, m, State{Services: []Service{svc("10.0.0.1", 80, "192.168.0.1:80")}}, noCgroups); err != nil {
		t.Fatal(err)
	}
	log.Reset()
	if _, err := ApplyToMaps(ctx, m, State{Services: []Service{svc("10.0.0.1", 80, "192.168.0.1:80", "192.168.0.2:80")}}, noCgroups); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, op := range log.Ops() {
		switch k := op.Key.(type) {
		case bpf.MeshSvcKey:
			got = append(got, fmt.Sprintf("%s slot %d", verb(op), k.Slot))
		default:
			got = append(got, fmt.Sprintf("%s %s", verb(op), op.Table))
		}
	}
	want := []string{"put backends", "put slot 2", "put slot 0"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("write order (-want +got):\n%s", diff)
	}

	log.Reset()
	if _, err := ApplyToMaps(ctx, m, State{}, noCgroups); err != nil {
		t.Fatal(err)
	}
	got = nil
	for _, op := range log.Ops() {
		if k, ok := op.Key.(bpf.MeshSvcKey); ok {
			got = append(got, fmt.Sprintf("%s slot %d", verb(op), k.Slot))
		} else {
			got = append(got, fmt.Sprintf("%s %s", verb(op), op.Table))
		}
	}
	want = []string{"delete slot 0", "delete slot 1", "delete slot 2", "delete backends", "delete backends"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("removal order (-want +got):\n%s", diff)
	}
}

func verb(op Op) string {
	if op.Delete {
		return "delete"
	}
	return "put"
}

func TestApplyKeepsBackendIDsAndSharesThem(t *testing.T) {
	m := NewFakeMaps(&OpLog{})
	ctx := context.Background()
	s := State{Services: []Service{svc("10.0.0.1", 80, "192.168.0.1:80"), svc("10.0.0.2", 80, "192.168.0.1:80", "192.168.0.2:80")}}
	st, err := ApplyToMaps(ctx, m, s, noCgroups)
	if err != nil {
		t.Fatal(err)
	}
	if st.Backends != 2 {
		t.Fatalf("backends = %d, want 2 (shared)", st.Backends)
	}
	before, _ := m.Backends.Dump()
	s.Services = append(s.Services, svc("10.0.0.3", 80, "192.168.0.3:80"))
	if _, err := ApplyToMaps(ctx, m, s, noCgroups); err != nil {
		t.Fatal(err)
	}
	after, _ := m.Backends.Dump()
	for id, b := range before {
		if after[id] != b {
			t.Errorf("backend id %d changed from %v to %v", id, b.AddrPort(), after[id].AddrPort())
		}
	}
}

// TestApplyFaults fails every single write in turn: the maps stay
// consistent for the programs, the error is returned, and the next apply
// converges.
func TestApplyFaults(t *testing.T) {
	ctx := context.Background()
	from := State{Services: []Service{svc("10.0.0.1", 80, "192.168.0.1:80", "192.168.0.2:80"), svc("10.0.0.2", 53, "192.168.0.9:53")},
		Workloads: []Workload{{IP: netip.MustParseAddr("192.168.0.1"), Identity: 5, Namespace: "a"}},
		Policies:  []PolicyRule{{DstIdentity: 5, SrcIdentity: 6, Verdict: Allow}}}
	to := State{Services: []Service{svc("10.0.0.1", 80, "192.168.0.2:80", "192.168.0.3:80", "192.168.0.4:80"), svc("10.0.0.3", 80, "192.168.0.1:80")},
		Workloads: []Workload{{IP: netip.MustParseAddr("192.168.0.2"), Identity: 7, Namespace: "b"}},
		Policies:  []PolicyRule{{DstIdentity: 7, Verdict: Deny}}}
	injected := errors.New("injected fault")
	for n := 0; ; n++ {
		var log OpLog
		base := NewFakeMaps(&log)
		if _, err := ApplyToMaps(ctx, base, from, noCgroups); err != nil {
			t.Fatal(err)
		}
		sm := newSim(t, base)
		log.Reset()
		faulty := FaultyMaps(base, func(_ string, _ bool, i int) error {
			if i == n {
				return injected
			}
			return nil
		})
		_, err := ApplyToMaps(ctx, faulty, to, noCgroups)
		sm.replay(t, log.Ops())
		if err == nil {
			if n < 5 {
				t.Fatalf("fault at write %d: apply did not fail", n)
			}
			t.Logf("checked a fault at each of %d writes", n)
			return
		}
		if !errors.Is(err, injected) {
			t.Fatalf("fault at write %d: error %v does not wrap the fault", n, err)
		}
		if _, err := ApplyToMaps(ctx, base, to, noCgroups); err != nil {
			t.Fatalf("fault at write %d: recovery apply: %v", n, err)
		}
		got, _ := DumpMaps(base)
		if diff := cmp.Diff(to.Canonical(), got, cmpOpts); diff != "" {
			t.Fatalf("fault at write %d: not converged (-want +got):\n%s", n, diff)
		}
	}
}

func TestApplyPolicyModes(t *testing.T) {
	m := NewFakeMaps(&OpLog{})
	s := State{Policies: []PolicyRule{
		{DstIdentity: 10, SrcIdentity: 11, Verdict: Allow},
		{DstIdentity: 10, SrcIdentity: 11, Verdict: Deny}, // duplicate: DENY wins
		{DstIdentity: 20, Port: 22, Proto: TCP, Verdict: Deny},
	}}
	if _, err := ApplyToMaps(context.Background(), m, s, noCgroups); err != nil {
		t.Fatal(err)
	}
	modes, _ := m.PolicyMode.Dump()
	if diff := cmp.Diff(map[uint32]uint32{10: bpf.ModeDefaultDeny}, modes); diff != "" {
		t.Errorf("modes (-want +got):\n%s", diff)
	}
	rules, _ := m.Policy.Dump()
	if v := rules[bpf.MeshPolicyKey{DstIdentity: 10, SrcIdentity: 11}]; v.Verdict != bpf.VerdictDeny {
		t.Errorf("duplicate rule verdict = %d, want DENY", v.Verdict)
	}
}

func TestApplyCgroupWorkloads(t *testing.T) {
	m := NewFakeMaps(&OpLog{})
	resolve := func(p string) (uint64, error) {
		if p == "/cg/pod-a" {
			return 42, nil
		}
		return 0, fmt.Errorf("%s: no such cgroup", p)
	}
	s := State{Workloads: []Workload{
		{IP: netip.MustParseAddr("10.1.0.1"), Identity: 5, Namespace: "a", Local: true, Cgroup: "/cg/pod-a"},
		{IP: netip.MustParseAddr("10.1.0.2"), Identity: 6, Namespace: "a", Local: true, Cgroup: "/cg/gone"},
	}}
	st, err := ApplyToMaps(context.Background(), m, s, resolve)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Warnings) != 1 || !strings.Contains(st.Warnings[0], "10.1.0.2") {
		t.Errorf("warnings %v, want one naming 10.1.0.2", st.Warnings)
	}
	cg, _ := m.Cgroups.Dump()
	if diff := cmp.Diff(map[uint64]bpf.MeshEndpointInfo{42: {Identity: 5, Ns: NamespaceID("a"), Flags: bpf.EndpointLocal}}, cg,
		cmpopts.IgnoreUnexported(bpf.MeshEndpointInfo{})); diff != "" {
		t.Errorf("cgroups (-want +got):\n%s", diff)
	}
}

func TestValidate(t *testing.T) {
	ip := netip.MustParseAddr
	tests := []struct {
		name  string
		state State
		want  string // substring of the error; "" = valid
	}{
		{"valid", State{Services: []Service{svc("10.0.0.1", 80, "10.1.0.1:80")}}, ""},
		{"backend port", State{Services: []Service{svc("10.0.0.1", 80, "10.1.0.1:80", "10.1.0.2:0")}},
			"services[0] (10.0.0.1:80/TCP): backends[1].port: must not be 0"},
		{"family mismatch", State{Services: []Service{svc("10.0.0.1", 80, "[fd00::1]:80")}}, "backends[0].ip: fd00::1 is not of the VIP's family"},
		{"duplicate backend", State{Services: []Service{svc("10.0.0.1", 80, "10.1.0.1:80", "10.1.0.2:80", "10.1.0.1:80")}}, "backends[2]: 10.1.0.1:80 duplicates backends[0]"},
		{"duplicate service", State{Services: []Service{svc("10.0.0.1", 80), svc("10.0.0.1", 80)}}, "services[1] (10.0.0.1:80/TCP): duplicate of services[0]"},
		{"bad proto", State{Services: []Service{{VIP: ip("10.0.0.1"), Port: 1, Proto: 1}}}, "proto: proto(1) is not TCP or UDP"},
		{"workload identity", State{Workloads: []Workload{{IP: ip("10.1.0.1")}}}, "workloads[0] (10.1.0.1): identity: 0 is reserved"},
		{"relative cgroup", State{Workloads: []Workload{{IP: ip("10.1.0.1"), Identity: 3, Cgroup: "kubepods/x"}}}, "cgroup: \"kubepods/x\" is not an absolute path"},
		{"policy verdict", State{Policies: []PolicyRule{{DstIdentity: 3}}}, "policies[0] (dst identity 3): verdict"},
		{"redirect port", State{Redirects: []Redirect{{Namespace: "a", ProxyIP: ip("10.0.0.9")}}}, "redirects[0] (namespace \"a\"): proxyPort"},
		{"acceleration unsafe", State{Accelerate: []Acceleration{{Namespace: "a"}}}, "accelerate[0] (namespace \"a\"): spliceSafe"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.state.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	err := (&State{Accelerate: []Acceleration{{Namespace: "a"}}}).Validate()
	if !errors.Is(err, ErrAccelerationUnsafe) {
		t.Errorf("error %v is not ErrAccelerationUnsafe", err)
	}
	// An invalid state writes nothing.
	var log OpLog
	if _, err := ApplyToMaps(context.Background(), NewFakeMaps(&log), State{Accelerate: []Acceleration{{Namespace: "a"}}}, noCgroups); err == nil || len(log.Ops()) != 0 {
		t.Errorf("invalid state: err %v, %d writes", err, len(log.Ops()))
	}
}
