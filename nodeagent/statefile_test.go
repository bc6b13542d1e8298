package nodeagent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

type recordingApplier struct {
	mu     sync.Mutex
	states []State
}

func (r *recordingApplier) Apply(_ context.Context, s State) (Stats, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.states = append(r.states, s)
	return Stats{}, nil
}

func (r *recordingApplier) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.states)
}

func TestParseStateErrorsNameTheField(t *testing.T) {
	tests := []struct{ name, yaml, want string }{
		{"unknown field", "services:\n- vip: 10.0.0.1\n  prot: 80\n", `unknown field "prot"`},
		{"bad address", "services:\n- vip: 10.0.0.300\n  port: 80\n  proto: TCP\n", "10.0.0.300"},
		{"bad proto", "services:\n- vip: 10.0.0.1\n  port: 80\n  proto: SCTP\n", `unknown protocol "SCTP"`},
		{"invalid state", "services:\n- vip: 10.0.0.1\n  port: 80\n  proto: TCP\n  backends:\n  - {ip: 10.1.0.1}\n", "services[0] (10.0.0.1:80/TCP): backends[0].port"},
		{"unsafe acceleration", "accelerate:\n- namespace: shop\n", "spliceSafe"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseState([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	s, err := ParseState([]byte("services:\n- vip: 10.0.0.1\n  port: 53\n  proto: udp\n  backends:\n  - {ip: 10.1.0.1, port: 5353, weight: 2}\npolicies:\n- {dstIdentity: 5, verdict: deny}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Services[0].Proto != UDP || s.Services[0].Backends[0].Weight != 2 || s.Policies[0].Verdict != Deny {
		t.Errorf("parsed %+v", s)
	}
}

func TestWatchStateFileKeepsLastGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.yaml")
	write := func(s string) { // atomically, as documented
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write("services:\n- {vip: 10.0.0.1, port: 80, proto: TCP}\n")
	var a recordingApplier
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- WatchStateFile(ctx, WatchConfig{Path: path, Interval: 10 * time.Millisecond}, &a) }()
	waitFor(t, func() bool { return a.count() == 1 })
	write("services:\n- {vip: 10.0.0.1, port: 80, proto: BOGUS}\n")
	time.Sleep(100 * time.Millisecond)
	if a.count() != 1 {
		t.Fatalf("a bad file was applied")
	}
	write("")
	time.Sleep(50 * time.Millisecond)
	write("services:\n- {vip: 10.0.0.2, port: 80, proto: TCP}\n")
	waitFor(t, func() bool { return a.count() == 2 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := a.count(); n != 2 {
		t.Fatalf("%d applies, want 2 (the bad and the empty file are not applied)", n)
	}
	if got := a.states[1].Services; len(got) != 1 || got[0].VIP.String() != "10.0.0.2" {
		t.Errorf("second apply has services %+v", got)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("condition not met within 2s")
}
