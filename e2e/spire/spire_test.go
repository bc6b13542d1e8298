package spire

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var td = spiffeid.RequireTrustDomainFromString("nodemesh.test")

// Environment of the helper subprocess (TestHelperUnauthorizedDelegate).
const (
	helperEnv      = "NODEMESH_SPIRE_HELPER"
	helperAdminEnv = "NODEMESH_SPIRE_HELPER_ADMIN"
	helperWLEnv    = "NODEMESH_SPIRE_HELPER_WL"
)

func mustID(t *testing.T, ns, sa string) spiffeid.ID {
	t.Helper()
	id, err := identity.WorkloadID(td, ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// The node agent's path through SPIRE: its own SVID from the Workload API,
// then a workload's SVID from the Delegated Identity API; a caller that is
// not an authorized delegate is refused.
func TestSPIREOwnAndDelegatedSVIDs(t *testing.T) {
	srv := StartServer(t, td)
	meshAgent := identity.AgentID(td)
	web := mustID(t, "demo", "web")
	intruder := mustID(t, "demo", "intruder")
	uid, gid := os.Getuid(), os.Getgid()
	const intruderGID = 4343
	const webTTL = 20 * time.Second

	// Entries are registered before the agent starts, under the ID it will
	// get from the join token, so its first sync brings them.
	agent := StartAgent(t, srv, AgentConfig{AuthorizedDelegates: []spiffeid.ID{meshAgent}}, func(agentID spiffeid.ID) {
		// This test process is the "node agent": uid and gid as it runs.
		srv.CreateEntry(t, Entry{Parent: agentID, ID: meshAgent, Selectors: []string{"unix:uid:" + strconv.Itoa(uid), "unix:gid:" + strconv.Itoa(gid)}})
		// A pod's workload, attested by the delegate's selectors, with
		// a short lifetime so that SPIRE renews it during the test.
		srv.CreateEntry(t, Entry{Parent: agentID, ID: web, Selectors: []string{"unix:uid:4242"}, X509SVIDTTL: webTTL})
		// Same uid, another primary gid: the unauthorised subprocess.
		srv.CreateEntry(t, Entry{Parent: agentID, ID: intruder, Selectors: []string{"unix:uid:" + strconv.Itoa(uid), "unix:gid:" + strconv.Itoa(intruderGID)}})
	})

	src, err := identity.NewSPIRE(identity.SPIREConfig{WorkloadAPIAddr: agent.WorkloadAPIAddr, AdminSocketAddr: agent.AdminAddr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()

	start := time.Now()
	own, err := src.FetchOwnSVID(ctx)
	if err != nil {
		t.Fatalf("FetchOwnSVID: %v", err)
	}
	t.Logf("own SVID %s after %s", own.ID, time.Since(start).Round(time.Millisecond))
	if own.ID != meshAgent {
		t.Fatalf("own SVID is %s, want %s", own.ID, meshAgent)
	}
	bundle, err := src.TrustBundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(own.Certificates, bundle); err != nil {
		t.Errorf("own SVID does not verify with SPIRE's bundle: %v", err)
	}

	start = time.Now()
	svid, err := src.SVIDFor(ctx, identity.Workload{ID: web, Selectors: []identity.Selector{{Type: "unix", Value: "uid:4242"}}})
	if err != nil {
		t.Fatalf("SVIDFor(web): %v", err)
	}
	t.Logf("delegated SVID %s after %s", svid.ID, time.Since(start).Round(time.Millisecond))
	if svid.ID != web {
		t.Fatalf("delegated SVID is %s, want %s", svid.ID, web)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
		t.Errorf("delegated SVID does not verify: %v", err)
	}
	if ns, sa, err := identity.ParseWorkloadID(svid.ID); err != nil || ns != "demo" || sa != "web" {
		t.Errorf("ParseWorkloadID(%s) = %q, %q, %v", svid.ID, ns, sa, err)
	}

	// The same through the Rotator, as SDS will use it: it follows SPIRE's
	// own renewal (at half-life) over the Delegated Identity API stream.
	rot, err := identity.NewRotator(identity.RotatorConfig{Source: src, Workload: identity.Workload{ID: web, Selectors: []identity.Selector{{Type: "unix", Value: "uid:4242"}}}})
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rot.Run(rctx) }()
	sub := rot.Subscribe()
	var updates []identity.Update
	for len(updates) < 2 {
		upd, err := sub.Next(ctx)
		if err != nil {
			t.Fatalf("rotator: %v after %d updates", err, len(updates))
		}
		if id, _, err := x509svid.Verify(upd.SVID.Certificates, upd.Bundle); err != nil || id != web {
			t.Errorf("rotator update: %s, %v; want a verified SVID of %s", id, err, web)
		}
		if len(updates) > 0 {
			prev := updates[len(updates)-1].SVID.Certificates[0]
			if upd.SVID.Certificates[0].Equal(prev) {
				continue // same SVID, new bundle: not a renewal
			}
			t.Logf("renewed SVID received %s after the previous one's NotBefore (lifetime %s)",
				time.Since(prev.NotBefore).Round(time.Second), prev.NotAfter.Sub(prev.NotBefore))
			if time.Now().After(prev.NotAfter) {
				t.Errorf("renewed SVID arrived after the previous one expired")
			}
		}
		updates = append(updates, upd)
	}
	rcancel()
	<-done

	// Selectors no entry matches: no SVID, the call ends with the context.
	sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
	_, err = src.SVIDFor(sctx, identity.Workload{Selectors: []identity.Selector{{Type: "unix", Value: "uid:999999"}}})
	scancel()
	if err == nil {
		t.Error("SVIDFor with unregistered selectors returned an SVID")
	}

	t.Run("unauthorized delegate", func(t *testing.T) {
		if os.Getuid() != 0 {
			t.Skip("needs root to run the second caller with another gid")
		}
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperUnauthorizedDelegate$", "-test.v")
		cmd.Env = append(os.Environ(), helperEnv+"=1", helperAdminEnv+"="+agent.AdminAddr, helperWLEnv+"="+agent.WorkloadAPIAddr)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: intruderGID, Groups: []uint32{}}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helper process: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), "RESULT code=PermissionDenied") {
			t.Fatalf("helper process was not refused with PermissionDenied:\n%s", out)
		}
		if !strings.Contains(string(out), "not configured as an authorized delegate") {
			t.Errorf("refusal is not SPIRE's authorized-delegate check:\n%s", out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "RESULT ") {
				t.Log("second caller: " + line)
			}
		}
		if !strings.Contains(string(out), "own="+intruder.String()) {
			t.Errorf("helper did not run as %s:\n%s", intruder, out)
		}
	})
}

// TestHelperUnauthorizedDelegate is the second caller of
// TestSPIREOwnAndDelegatedSVIDs, run as a subprocess with another gid. It
// does nothing in a normal test run.
func TestHelperUnauthorizedDelegate(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("helper process of TestSPIREOwnAndDelegatedSVIDs; runs only as its subprocess")
	}
	src, err := identity.NewSPIRE(identity.SPIREConfig{WorkloadAPIAddr: os.Getenv(helperWLEnv), AdminSocketAddr: os.Getenv(helperAdminEnv)})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	// Its own identity first: proves the agent knows this caller (so the
	// refusal below is about delegation, not "no identity issued").
	own, err := src.FetchOwnSVID(ctx)
	if err != nil {
		t.Fatalf("FetchOwnSVID: %v", err)
	}
	_, err = src.SVIDFor(ctx, identity.Workload{Selectors: []identity.Selector{{Type: "unix", Value: "uid:4242"}}})
	fmt.Printf("RESULT code=%s own=%s err=%v\n", status.Code(err), own.ID, err)
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("SVIDFor as %s: %v, want PermissionDenied", own.ID, err)
	}
}
