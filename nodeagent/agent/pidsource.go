package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/nodemesh/nodemesh/identity"
)

// SVIDRequest says how the agent names a service account to
// Config.WorkloadSVIDs.
type SVIDRequest string

const (
	// SVIDByID asks by SPIFFE ID only: the built-in CA through meshd,
	// which issues it only to the node of one of the service account's
	// pods.
	SVIDByID SVIDRequest = "id"
	// SVIDByPID asks by the PID of a live process of one of the service
	// account's pods on this node (found in the pod's cgroup,
	// Config.PodCgroup): SPIRE's agent attests that process itself (its
	// k8s workload attestor: pod UID, namespace, service account), so it
	// issues only SVIDs of entries matching a pod that really runs here.
	// The SVID must also have the service account's SPIFFE ID.
	SVIDByPID SVIDRequest = "pid"
	// SVIDBySelectors asks by the selectors k8s:ns:<ns> and k8s:sa:<sa>,
	// with no process. SPIRE then checks nothing about the node: with
	// entries that match on every node (parented to an alias of all
	// nodes), every node's agent can get every service account's SVID.
	// Only for clusters that trust every node with every identity.
	SVIDBySelectors SVIDRequest = "selectors"
)

// svidRequest is the effective SVIDRequest: by PID for SPIRE, by ID for
// any other source, unless set.
func svidRequest(by SVIDRequest, src identity.Source) SVIDRequest {
	if by != "" {
		return by
	}
	if _, ok := src.(*identity.SPIRE); ok {
		return SVIDByPID
	}
	return SVIDByID
}

// pidCheckInterval is how often the process an SVID subscription attests
// is checked to be still in its pod's cgroup.
const pidCheckInterval = time.Second

// attestTimeout is how long a subscription by PID waits for an SVID with
// the service account's ID before it gives up on that process and tries
// the next one of the pods (say a pause container no entry matches).
const attestTimeout = 30 * time.Second

// podRef is a local pod; UID is "" when the control plane sent none.
type podRef struct{ Namespace, Name, UID string }

func (p podRef) String() string { return p.Namespace + "/" + p.Name }

// pidSource is one service account's SVID source for SVIDByPID: each
// watch subscribes by the PID of a live process of one of the account's
// pods and ends when that process leaves the pod's cgroup, the pod leaves
// the node, or no SVID of the account came for it within attestTimeout;
// the rotator then watches again (after its RetryInterval) with another
// process. With no process found (pods starting), the watch fails and is
// retried likewise. It never falls back to selectors.
type pidSource struct {
	src    identity.Watcher
	pods   func() []podRef                         // the account's pods on the node now
	cgroup func(namespace, pod, uid string) string // Config.PodCgroup
	// onPick reports the process a subscription attests ("" when none).
	onPick         func(desc string)
	check, timeout time.Duration

	mu   sync.Mutex
	skip int // candidates to pass over: those that gave no SVID
}

var _ identity.Watcher = (*pidSource)(nil)

type pidCandidate struct {
	pid int32
	pod podRef
}

// candidates lists the processes of the account's pods: each pod's in
// order, those of its cgroup first, then of the cgroups below (containers).
func (p *pidSource) candidates() ([]pidCandidate, []string) {
	var out []pidCandidate
	var missing []string
	for _, pod := range p.pods() {
		dir := p.cgroup(pod.Namespace, pod.Name, pod.UID)
		if dir == "" {
			missing = append(missing, pod.String()+" (no cgroup)")
			continue
		}
		pids, err := cgroupPIDs(dir)
		if err != nil {
			missing = append(missing, fmt.Sprintf("%s (%v)", pod, err))
			continue
		}
		if len(pids) == 0 {
			missing = append(missing, pod.String()+" (no process in "+dir+")")
		}
		for _, pid := range pids {
			out = append(out, pidCandidate{pid, pod})
		}
	}
	return out, missing
}

func (p *pidSource) pick() (pidCandidate, error) {
	cands, missing := p.candidates()
	if len(cands) == 0 {
		p.onPick("")
		if len(missing) == 0 {
			return pidCandidate{}, errors.New("no pods of the service account on the node")
		}
		return pidCandidate{}, fmt.Errorf("no live process to attest yet (pods starting?): %s", strings.Join(missing, ", "))
	}
	p.mu.Lock()
	c := cands[p.skip%len(cands)]
	p.mu.Unlock()
	p.onPick(fmt.Sprintf("pid %d of pod %s", c.pid, c.pod))
	return c, nil
}

// alive: the process is still in the cgroup of a pod of the account.
func (p *pidSource) alive(c pidCandidate) bool {
	found := false
	for _, pod := range p.pods() {
		found = found || pod == c.pod
	}
	if !found {
		return false
	}
	dir := p.cgroup(c.pod.Namespace, c.pod.Name, c.pod.UID)
	if dir == "" {
		return false
	}
	pids, err := cgroupPIDs(dir)
	if err != nil {
		return false
	}
	for _, pid := range pids {
		if pid == c.pid {
			return true
		}
	}
	return false
}

var (
	errProcessGone = errors.New("the attested process left its pod")
	errNoSVID      = errors.New("no SVID of the service account for the attested process")
)

// WatchSVIDs implements identity.Watcher: it subscribes by PID (w.ID kept,
// so only an SVID of the account is taken; w's selectors are ignored).
func (p *pidSource) WatchSVIDs(ctx context.Context, w identity.Workload, fn func(*x509svid.SVID) error) error {
	c, err := p.pick()
	if err != nil {
		return err
	}
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var mu sync.Mutex
	got := false
	go func() {
		tick := time.NewTicker(p.check)
		defer tick.Stop()
		deadline := time.Now().Add(p.timeout)
		for {
			select {
			case <-wctx.Done():
				return
			case <-tick.C:
			}
			if !p.alive(c) {
				cancel(errProcessGone)
				return
			}
			mu.Lock()
			none := !got
			mu.Unlock()
			if none && time.Now().After(deadline) {
				cancel(errNoSVID)
				return
			}
		}
	}()
	err = p.src.WatchSVIDs(wctx, identity.Workload{ID: w.ID, PID: c.pid}, func(svid *x509svid.SVID) error {
		mu.Lock()
		got = true
		mu.Unlock()
		return fn(svid)
	})
	switch cause := context.Cause(wctx); {
	case ctx.Err() != nil:
		return err
	case errors.Is(cause, errProcessGone):
		return fmt.Errorf("pid %d of pod %s: %w; attesting another", c.pid, c.pod, cause)
	case errors.Is(cause, errNoSVID):
		p.mu.Lock()
		p.skip++
		p.mu.Unlock()
		return fmt.Errorf("pid %d of pod %s: %w within %s (does a SPIRE entry parented to this node's agent match the pod?)", c.pid, c.pod, cause, p.timeout)
	case err != nil:
		p.mu.Lock()
		p.skip++
		p.mu.Unlock()
		return fmt.Errorf("pid %d of pod %s: %w", c.pid, c.pod, err)
	}
	return nil
}

// SVIDFor implements identity.Source, by PID like WatchSVIDs.
func (p *pidSource) SVIDFor(ctx context.Context, w identity.Workload) (*x509svid.SVID, error) {
	c, err := p.pick()
	if err != nil {
		return nil, err
	}
	return p.src.SVIDFor(ctx, identity.Workload{ID: w.ID, PID: c.pid})
}

func (p *pidSource) TrustBundle(ctx context.Context) (*x509bundle.Bundle, error) {
	return p.src.TrustBundle(ctx)
}

// cgroupPIDs lists the processes of a cgroup v2 directory and of the
// cgroups below it (a pod's containers), the directory's own first.
func cgroupPIDs(dir string) ([]int32, error) {
	var pids []int32
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path != dir && errors.Is(err, fs.ErrNotExist) {
				return nil // a container cgroup went away meanwhile
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		f, err := os.Open(filepath.Join(path, "cgroup.procs"))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			pid, err := strconv.ParseInt(strings.TrimSpace(sc.Text()), 10, 32)
			if err != nil || pid <= 0 {
				continue
			}
			pids = append(pids, int32(pid))
		}
		return sc.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("listing processes of cgroup %s: %w", dir, err)
	}
	return pids, nil
}
