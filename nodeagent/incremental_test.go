package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// randomState draws services from a small pool so that steps add, change,
// share and drop backends and services.
func randomState(r *rand.Rand) State {
	var s State
	for v := 0; v < 30; v++ {
		if r.IntN(4) == 0 {
			continue
		}
		svc := Service{VIP: netip.AddrFrom4([4]byte{10, 0, 0, byte(v)}), Port: 80, Proto: TCP}
		if r.IntN(5) == 0 {
			svc.L7ProxyPort = 15001
		}
		weighted := r.IntN(2) == 0
		seen := map[int]bool{}
		for i, n := 0, r.IntN(6); i < n; i++ {
			b := r.IntN(40)
			if seen[b] {
				continue
			}
			seen[b] = true
			be := Backend{IP: netip.AddrFrom4([4]byte{192, 168, 0, byte(b)}), Port: 8080}
			if weighted {
				be.Weight = uint32(1 + r.IntN(100))
			}
			svc.Backends = append(svc.Backends, be)
		}
		s.Services = append(s.Services, svc)
	}
	return s
}

// TestReconcilerIncrementalMatchesFull applies random state sequences
// incrementally and checks after each step that the maps hold what a full
// reconcile computes, that no backend leaks, and that every single write
// kept the services consistent. Some steps fail half-way (injected fault):
// the next apply must be a full one and repair.
func TestReconcilerIncrementalMatchesFull(t *testing.T) {
	for seed := uint64(1); seed <= 5; seed++ {
		t.Run(fmt.Sprintf("seed %d", seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 42))
			var log OpLog
			base := NewFakeMaps(&log)
			failAt := -1
			injected := errors.New("injected")
			faulty := FaultyMaps(base, func(_ string, _ bool, n int) error {
				if n == failAt {
					return injected
				}
				return nil
			})
			rec := NewReconciler(faulty, noCgroups)
			ctx := context.Background()
			writes, failures := 0, 0
			for step := 0; step < 60; step++ {
				s := randomState(r)
				sm := newSim(t, base)
				log.Reset()
				failAt = -1
				if step%7 == 3 {
					failAt = writes + r.IntN(5)
				}
				_, err := rec.Apply(ctx, s)
				sm.replay(t, log.Ops())
				writes += len(log.Ops())
				if failAt >= 0 && err != nil {
					if !errors.Is(err, injected) {
						t.Fatalf("step %d: %v", step, err)
					}
					writes++ // the failed write was counted
					failures++
					continue
				}
				if err != nil {
					t.Fatalf("step %d: %v", step, err)
				}
				got, err := DumpMaps(base)
				if err != nil {
					t.Fatalf("step %d: %v", step, err)
				}
				if diff := cmp.Diff(s.Canonical(), got, cmpOpts); diff != "" {
					t.Fatalf("step %d: maps differ from the state (-want +got):\n%s", step, diff)
				}
				backends, _ := base.Backends.Dump()
				want := map[netip.AddrPort]bool{}
				for _, svc := range s.Services {
					for _, b := range svc.Backends {
						want[netip.AddrPortFrom(b.IP, b.Port)] = true
					}
				}
				if len(backends) != len(want) {
					t.Fatalf("step %d: %d backends in the map, %d in use", step, len(backends), len(want))
				}
				log.Reset()
				if st, err := rec.Apply(ctx, s); err != nil || len(log.Ops()) != 0 {
					t.Fatalf("step %d: re-apply wrote %d entries (%+v, %v)", step, len(log.Ops()), st, err)
				}
			}
			if failures == 0 {
				t.Fatal("no injected fault hit an apply")
			}
			t.Logf("%d applies failed half-way and were repaired", failures)
		})
	}
}
