package spire

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/nodemesh/nodemesh/identity"
)

// podProcess is the process of a pod: /bin/sleep as its own uid and gid,
// started right into the pod's cgroup (a directory under the agent's
// --cgroup named <namespace>_<pod>, as agent.CgroupLayout finds it).
type podProcess struct {
	cgroup string
	uid    uint32
	cmd    *exec.Cmd
	exited chan struct{}
}

// startPod creates the pod's cgroup below parent and starts its process.
func startPod(t *testing.T, parent, name string, uid uint32) *podProcess {
	t.Helper()
	p := &podProcess{cgroup: filepath.Join(parent, name), uid: uid}
	if err := os.Mkdir(p.cgroup, 0o755); err != nil {
		t.Fatal(err)
	}
	p.start(t)
	return p
}

func (p *podProcess) start(t *testing.T) {
	t.Helper()
	dir, err := os.Open(p.cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	cmd := exec.Command("/bin/sleep", "600")
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, UseCgroupFD: true, CgroupFD: int(dir.Fd()),
		Credential: &syscall.Credential{Uid: p.uid, Gid: p.uid, Groups: []uint32{}}}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the process of pod %s: %v", filepath.Base(p.cgroup), err)
	}
	p.cmd, p.exited = cmd, make(chan struct{})
	go func(exited chan struct{}) {
		_ = cmd.Wait()
		close(exited)
	}(p.exited)
}

func (p *podProcess) pid() int32 { return int32(p.cmd.Process.Pid) }

func (p *podProcess) stop() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// remove kills the process and removes the cgroup.
func (p *podProcess) remove(t *testing.T) {
	p.stop()
	if err := os.Remove(p.cgroup); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Logf("remove pod cgroup %s: %v", p.cgroup, err)
	}
}

// svidStatus is the part of mesh-agent's /status on one service account.
type svidStatus struct {
	SPIFFEID, Serial, Process, LastError string
	Pods                                 int
}

func agentSVIDs(statusAddr string) (requestBy string, accounts map[string]svidStatus, err error) {
	var st struct {
		WorkloadSVIDs struct {
			RequestBy string       `json:"requestBy"`
			Accounts  []svidStatus `json:"accounts"`
		} `json:"workloadSVIDs"`
	}
	body, err := httpGet("http://" + statusAddr + "/status")
	if err != nil {
		return "", nil, err
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		return "", nil, fmt.Errorf("status %s: %w", body, err)
	}
	accounts = map[string]svidStatus{}
	for _, a := range st.WorkloadSVIDs.Accounts {
		accounts[a.SPIFFEID] = a
	}
	return st.WorkloadSVIDs.RequestBy, accounts, nil
}

// svidByPID: the agent asked SPIRE for web's SVID by the PID of the
// process in web-0's cgroup (the only thing web's entry matches: uid
// 4712), and holds it.
func (m *spireMesh) svidByPID(t *testing.T) {
	want := fmt.Sprintf("pid %d of pod demo/web-0", m.webPod.pid())
	var web svidStatus
	waitFor(t, "web's SVID attested by pid", 30*time.Second, func() error {
		by, accounts, err := agentSVIDs(m.statusAddr)
		if err != nil {
			return err
		}
		web = accounts[m.web.String()]
		if by != "pid" || web.Process != want || web.Serial == "" {
			return fmt.Errorf("requestBy %q, web %+v; want %s with an SVID", by, web, want)
		}
		return nil
	})
	svid, err := x509svid.Load(filepath.Join(m.workloadCerts, "demo", "web", "cert-chain.pem"), filepath.Join(m.workloadCerts, "demo", "web", "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("agent: web's SVID (file serial %s, status serial %s) through %s", svid.Certificates[0].SerialNumber, web.Serial, web.Process)
}

// noSVIDWithoutMatchingProcess: db has a pod on node-a, but its process
// (uid 4713) matches no entry: the agent gets nothing for db, although
// SPIRE holds an entry of db with the k8s selectors that asking by
// selectors (the insecure opt-in) would get from any node.
func (m *spireMesh) noSVIDWithoutMatchingProcess(t *testing.T) {
	want := fmt.Sprintf("pid %d of pod demo/db-0", m.dbPod.pid())
	waitFor(t, "db attested by pid", 30*time.Second, func() error {
		_, accounts, err := agentSVIDs(m.statusAddr)
		if err != nil {
			return err
		}
		if db := accounts[m.db.String()]; db.Process != want {
			return fmt.Errorf("db %+v; want %s", db, want)
		}
		return nil
	})
	// Give SPIRE the time it took for web (the entries are synced).
	time.Sleep(3 * time.Second)
	_, accounts, err := agentSVIDs(m.statusAddr)
	if err != nil {
		t.Fatal(err)
	}
	if db := accounts[m.db.String()]; db.Serial != "" || db.Pods != 1 {
		t.Errorf("db %+v: want one pod and no SVID", db)
	}
	if _, err := os.Stat(filepath.Join(m.workloadCerts, "demo", "db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("db's files: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	bySel, err := m.own.SVIDFor(ctx, identity.Workload{ID: m.db, Selectors: []identity.Selector{{Type: "k8s", Value: "ns:demo"}, {Type: "k8s", Value: "sa:db"}}})
	if err != nil {
		t.Fatalf("db's SVID by selectors (the entry this test made): %v", err)
	}
	t.Logf("agent: no SVID for db (%s matches no entry); by selectors SPIRE would have handed out %s (serial %s)", want, bySel.ID, bySel.Certificates[0].SerialNumber)
}

// newPodProcess: web's process exits and another one starts in the pod;
// the agent attests the new one and keeps serving web's SVID.
func (m *spireMesh) newPodProcess(t *testing.T) {
	old := m.webPod.pid()
	m.webPod.stop()
	m.webPod.start(t)
	want := fmt.Sprintf("pid %d of pod demo/web-0", m.webPod.pid())
	t0 := time.Now()
	waitFor(t, "web attested through its new process", 30*time.Second, func() error {
		_, accounts, err := agentSVIDs(m.statusAddr)
		if err != nil {
			return err
		}
		if web := accounts[m.web.String()]; web.Process != want || web.Serial == "" {
			return fmt.Errorf("web %+v; want %s", web, want)
		}
		return nil
	})
	t.Logf("pid %d exited; the agent attests %s after %s", old, want, time.Since(t0).Round(time.Millisecond))
}
