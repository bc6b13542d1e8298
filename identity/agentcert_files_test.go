package identity

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Files mode: the certificate and key are re-read when they change; a
// certificate for another node, another key or other roots is refused and
// the previous one stays.
func TestAgentCertFilesReload(t *testing.T) {
	ca := newTestCA(t, CAConfig{Now: time.Now})
	dir := t.TempDir()
	certFile, keyFile, rootsFile := filepath.Join(dir, "cert-chain.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "root-cert.pem")
	writeAgent := func(node string) {
		t.Helper()
		svid, err := ca.NewAgentSVID(node)
		if err != nil {
			t.Fatal(err)
		}
		chain, key := marshalSVID(t, svid)
		writeFile(t, certFile, chain)
		writeFile(t, keyFile, key)
	}
	writeRoots(t, rootsFile, ca)
	writeAgent("node-a")
	a, err := NewAgentCert(AgentCertConfig{TrustDomain: testTD, Node: "node-a", RootsFile: rootsFile, CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatalf("NewAgentCert: %v", err)
	}
	first := currentSerial(t, a)
	checkStatus(t, a, AgentCertFiles, 1) // unchanged files: no reload

	writeAgent("node-a")
	checkStatus(t, a, AgentCertFiles, 2)
	second := currentSerial(t, a)
	if second == first {
		t.Fatal("reload kept the serial")
	}

	other := newTestCA(t, CAConfig{Now: time.Now})
	otherSVID, err := other.NewAgentSVID("node-a")
	if err != nil {
		t.Fatal(err)
	}
	otherChain, otherKey := marshalSVID(t, otherSVID)
	for _, tc := range []struct {
		name  string
		write func()
		want  string
	}{
		{"another node", func() { writeAgent("node-b") }, `bound to node "node-b"`},
		{"another key", func() {
			svid, err := ca.NewAgentSVID("node-a")
			if err != nil {
				t.Fatal(err)
			}
			chain, _ := marshalSVID(t, svid)
			writeFile(t, certFile, chain)
		}, "does not match"},
		{"another CA", func() { writeFile(t, certFile, otherChain); writeFile(t, keyFile, otherKey) }, "could not verify"},
		{"not PEM", func() { writeFile(t, certFile, []byte("junk")) }, certFile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.write()
			a.check(t.Context())
			st := a.Status()
			if !strings.Contains(st.LastError, tc.want) {
				t.Errorf("last error %q; want it to contain %q", st.LastError, tc.want)
			}
			if got := currentSerial(t, a); got != second {
				t.Errorf("serial %s; want the previous %s kept", got, second)
			}
		})
	}

	// A good pair again is taken on the next round.
	writeAgent("node-a")
	checkStatus(t, a, AgentCertFiles, 3)

	_, err = NewAgentCert(AgentCertConfig{TrustDomain: testTD, Node: "node-b", RootsFile: rootsFile, CertFile: certFile, KeyFile: keyFile})
	if err == nil || !strings.Contains(err.Error(), `this agent is node "node-b"`) || !strings.Contains(err.Error(), certFile) {
		t.Errorf("NewAgentCert for the wrong node = %v; want a node mismatch naming %s", err, certFile)
	}
	_, err = NewAgentCert(AgentCertConfig{TrustDomain: testTD, Node: "node-a", RootsFile: rootsFile, CertFile: certFile, KeyFile: filepath.Join(dir, "nope")})
	if err == nil || !strings.Contains(err.Error(), "key file "+filepath.Join(dir, "nope")) {
		t.Errorf("NewAgentCert with a missing key = %v; want it named", err)
	}
}

// The roots file is re-read when it changes; a bad version keeps the old
// roots; roots that no longer verify the certificate make it due at once.
func TestAgentCertRootsReload(t *testing.T) {
	clock := newFakeClock()
	ca := newTestCA(t, CAConfig{Now: clock.Now})
	svc, err := NewCertService(CertServiceConfig{Signer: ca, Tokens: tokenTable{"tok-a": "node-a"}})
	if err != nil {
		t.Fatal(err)
	}
	addr := startTokenCertService(t, ca, svc)
	other := newTestCA(t, CAConfig{Now: time.Now})
	a, dir := tokenAgent(t, other, addr, clock) // roots of the wrong CA: meshd does not verify
	roots := filepath.Join(dir, "roots.pem")
	a.check(t.Context())
	if st := a.Status(); st.Updates != 0 || !strings.Contains(st.LastError, "x509svid") && !strings.Contains(st.LastError, "certificate") {
		t.Fatalf("with the wrong roots: %d updates, last error %q; want a verification failure", st.Updates, st.LastError)
	}

	writeRoots(t, roots, ca)
	clock.Add(time.Second) // past the backoff
	checkStatus(t, a, AgentCertToken, 1)
	if st := a.Status(); st.Roots != 1 {
		t.Fatalf("roots %d; want 1", st.Roots)
	}

	writeFile(t, roots, []byte("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n"))
	a.check(t.Context())
	if st := a.Status(); !strings.Contains(st.LastError, "roots file "+roots) || st.Roots != 1 {
		t.Fatalf("broken roots: last error %q, roots %d; want the file named and the old root kept", st.LastError, st.Roots)
	}
	if b, err := a.GetX509BundleForTrustDomain(testTD); err != nil || !b.HasX509Authority(ca.Root()) {
		t.Fatalf("bundle after a broken roots file = %v, %v; want the old root", b, err)
	}

	if _, err := ca.RotateRoot(); err != nil {
		t.Fatal(err)
	}
	writeRoots(t, roots, ca) // old and new root
	a.check(t.Context())
	if st := a.Status(); st.Roots != 2 || st.Updates != 1 {
		t.Fatalf("after the rotation: roots %d, updates %d; want 2 roots and the certificate kept", st.Roots, st.Updates)
	}
	if a.renewalDue(clock.Now()) {
		t.Fatal("renewal due although both roots are trusted")
	}
	writeFile(t, roots, EncodeCertsPEM(ca.Bundle().X509Authorities()[:1])) // the new root only
	if _, err := a.reloadRoots(); err != nil {
		t.Fatal(err)
	}
	if !a.renewalDue(clock.Now()) {
		t.Fatal("renewal not due although the roots no longer verify the certificate")
	}
}

// kubelet updates a ConfigMap volume by writing a new timestamped directory
// and swapping the ..data symlink that the file's own symlink goes
// through; the file is re-read although its path never changes.
func TestAgentCertRootsConfigMapSwap(t *testing.T) {
	ca := newTestCA(t, CAConfig{Now: time.Now})
	dir := t.TempDir()
	version := func(name string, ca *CA) {
		t.Helper()
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		writeRoots(t, filepath.Join(dir, name, "root-cert.pem"), ca)
		if err := os.Symlink(name, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..v1", ca)
	roots := filepath.Join(dir, "root-cert.pem")
	if err := os.Symlink(filepath.Join("..data", "root-cert.pem"), roots); err != nil {
		t.Fatal(err)
	}
	svid, err := ca.NewAgentSVID("node-a")
	if err != nil {
		t.Fatal(err)
	}
	chain, key := marshalSVID(t, svid)
	writeFile(t, filepath.Join(dir, "cert.pem"), chain)
	writeFile(t, filepath.Join(dir, "key.pem"), key)
	a, err := NewAgentCert(AgentCertConfig{TrustDomain: testTD, Node: "node-a", RootsFile: roots,
		CertFile: filepath.Join(dir, "cert.pem"), KeyFile: filepath.Join(dir, "key.pem")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.RotateRoot(); err != nil {
		t.Fatal(err)
	}
	version("..v2", ca) // both roots
	a.check(t.Context())
	if st := a.Status(); st.Roots != 2 || st.LastError != "" {
		t.Fatalf("after the ..data swap: %d roots, last error %q; want 2 and none", st.Roots, st.LastError)
	}
}
