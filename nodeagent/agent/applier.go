package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/nodemesh/nodemesh/nodeagent"
	"github.com/nodemesh/nodemesh/nodeagent/ads"
)

// Kernel is the part of *nodeagent.Dataplane the applier writes to.
type Kernel interface {
	Apply(ctx context.Context, s nodeagent.State) (nodeagent.Stats, error)
}

// Applier is the ads.Applier of the agent: resources -> nodeagent.State
// (plus the node's host workload) -> kernel maps. It returns only after the
// maps are written, so the client's ACK means "in the kernel".
type Applier struct {
	kernel Kernel
	conv   *ads.Converter
	host   *nodeagent.Workload
	log    *slog.Logger

	mu   sync.Mutex
	last ApplyStatus
}

// ApplyStatus describes the agent's last apply.
type ApplyStatus struct {
	At       time.Time       `json:"at,omitzero"`
	Duration time.Duration   `json:"duration"`
	Applies  int             `json:"applies"`
	Failures int             `json:"failures"`
	Error    string          `json:"error,omitempty"` // of the last failure; cleared by a success
	Stats    nodeagent.Stats `json:"stats"`           // of the last success
}

// NewApplier returns the Applier writing to kernel. nodeIP, when valid, is
// added as a workload with nodeagent.IdentityHost unless a resource claims
// that address.
func NewApplier(kernel Kernel, cfg ads.StateConfig, nodeIP netip.Addr, log *slog.Logger) *Applier {
	a := &Applier{kernel: kernel, conv: ads.NewConverter(cfg), log: log}
	if nodeIP.IsValid() {
		a.host = &nodeagent.Workload{IP: nodeIP, Identity: nodeagent.IdentityHost, Local: true}
	}
	return a
}

// Apply converts res and writes it to the kernel. The ADS client calls it
// from one goroutine.
func (a *Applier) Apply(ctx context.Context, res *ads.Resources) error {
	start := time.Now()
	st, err := a.conv.Convert(res)
	if err == nil {
		a.addHost(&st)
		var stats nodeagent.Stats
		stats, err = a.kernel.Apply(ctx, st)
		if err != nil {
			err = fmt.Errorf("applying dataplane state: %w", err)
		} else {
			for _, w := range stats.Warnings {
				a.log.Warn("dataplane apply", "warning", w)
			}
			a.record(start, stats, nil)
			return nil
		}
	}
	a.record(start, nodeagent.Stats{}, err)
	return err
}

func (a *Applier) addHost(st *nodeagent.State) {
	if a.host == nil {
		return
	}
	for _, w := range st.Workloads {
		if w.IP == a.host.IP {
			a.log.Warn("a workload resource claims the node IP; not adding the host workload", "ip", w.IP, "identity", w.Identity)
			return
		}
	}
	st.Workloads = append(st.Workloads, *a.host)
}

func (a *Applier) record(start time.Time, stats nodeagent.Stats, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.last.At, a.last.Duration = start, time.Since(start)
	if err != nil {
		a.last.Failures++
		a.last.Error = err.Error()
		return
	}
	a.last.Applies++
	a.last.Error = ""
	a.last.Stats = stats
}

// Status returns the last apply's outcome. Safe for concurrent use.
func (a *Applier) Status() ApplyStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last
}
