package e2e

import (
	"bytes"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/nodeagent/ads"
)

// agentCertStatus is the part of mesh-agent's /status this test reads.
type agentCertStatus struct {
	ADS            ads.Status               `json:"ads"`
	XDSCredentials identity.AgentCertStatus `json:"xdsCredentials"`
}

// TestAgentCertProcess runs the real cmd/mesh-agent binary against an
// in-process meshd with mTLS and token bootstrap (xds.StartControlPlane;
// meshd's own token authenticator needs a Kubernetes API): node n1 with
// --xds-token and --xds-root-cert gets its certificate from meshd and
// renews it over mTLS; node n2 with --xds-cert-dir picks up rewritten
// certificate files without a restart. Both stay synced on their first
// ADS stream, n1's past the expiry of the certificate it was opened with. Bad flag combinations exit with an error naming the flag.
func TestAgentCertProcess(t *testing.T) {
	c := NewCluster(t, Config{})
	RequireBPFFS(t)
	bin := buildMeshAgent(t)
	m := &meshADS{t: t, c: c, dir: t.TempDir(), vip: netip.MustParseAddr("10.78.0.97"), webVIP: netip.MustParseAddr("10.78.0.98"),
		agents: map[string]*runningAgent{}}
	m.write("mesh.yaml", m.meshYAML(m.echoCandidates()))
	ca, err := identity.NewCA(identity.CAConfig{SVIDTTL: 10 * time.Second}) // renewed 5s after issue
	if err != nil {
		t.Fatal(err)
	}
	tokenNode, filesNode := c.Nodes[0], c.Nodes[1]
	m.startSecureMeshd(ca, nodeTokens{"tok-" + tokenNode.Name: tokenNode.Name})
	t.Cleanup(m.stopMeshd)

	dir := t.TempDir()
	roots := filepath.Join(dir, "roots.pem")
	token := filepath.Join(dir, "token")
	writeFileAt(t, roots, identity.EncodeCertsPEM(ca.Bundle().X509Authorities()))
	writeFileAt(t, token, []byte("tok-"+tokenNode.Name+"\n"))
	certDir := filepath.Join(dir, filesNode.Name)
	writeAgentFiles := func() string {
		t.Helper()
		svid, err := ca.NewAgentSVID(filesNode.Name)
		if err != nil {
			t.Fatal(err)
		}
		chain, key, err := svid.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		writeFileAt(t, filepath.Join(certDir, "cert-chain.pem"), chain)
		writeFileAt(t, filepath.Join(certDir, "key.pem"), key)
		writeFileAt(t, filepath.Join(certDir, "root-cert.pem"), identity.EncodeCertsPEM(ca.Bundle().X509Authorities()))
		return svid.Certificates[0].SerialNumber.Text(16)
	}
	firstFiles := writeAgentFiles()

	t.Run("bad-flags", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"--xds-token", token}, "--xds-token needs --xds-root-cert"},
			{[]string{"--xds-token", token, "--xds-root-cert", roots, "--xds-cert-dir", certDir}, "exclude each other"},
			{[]string{"--xds-token", filepath.Join(dir, "missing"), "--xds-root-cert", roots}, "--xds-token: open " + filepath.Join(dir, "missing")},
		} {
			args := append([]string{"--node", tokenNode.Name, "--control-plane", m.xdsAddr, "--cgroup", tokenNode.Cgroup, "--pin-dir", c.PinDir(tokenNode)}, tc.args...)
			out, err := exec.Command(bin, args...).CombinedOutput()
			if err == nil || !strings.Contains(string(out), tc.want) {
				t.Errorf("mesh-agent %s: %v, %q; want an error containing %q", strings.Join(tc.args, " "), err, out, tc.want)
			}
		}
	})

	statusAddr := map[string]string{}
	logs := map[string]*bytes.Buffer{}
	procs := map[string]*exec.Cmd{}
	c.OnCleanup(func() {
		for _, n := range c.Nodes {
			if p := procs[n.Name]; p != nil && p.ProcessState == nil {
				_ = p.Process.Kill()
				_ = p.Wait()
			}
			m.uninstall(n)
		}
	})
	defer func() {
		if t.Failed() {
			for name, l := range logs {
				t.Logf("mesh-agent %s:\n%s", name, tail(l.String(), 3000))
			}
		}
	}()
	for n, creds := range map[*Node][]string{
		tokenNode: {"--xds-token", token, "--xds-root-cert", roots},
		filesNode: {"--xds-cert-dir", certDir},
	} {
		statusAddr[n.Name] = freeAddr(t)
		args := append([]string{"--node", n.Name, "--control-plane", m.xdsAddr, "--cgroup", n.Cgroup, "--pin-dir", c.PinDir(n),
			"--node-ip", n.IP.String(), "--status-addr", statusAddr[n.Name], "--envoy", filepath.Join(dir, "no-envoy")}, creds...)
		cmd := exec.Command(bin, args...)
		logs[n.Name] = &bytes.Buffer{}
		cmd.Stderr = logs[n.Name]
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		procs[n.Name] = cmd
	}
	status := func(n *Node) agentCertStatus {
		t.Helper()
		var st agentCertStatus
		getJSONURL(t, "http://"+statusAddr[n.Name]+"/status", &st)
		return st
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range c.Nodes {
		for httpCode("http://"+statusAddr[n.Name]+"/readyz") != http.StatusOK {
			if time.Now().After(deadline) {
				t.Fatalf("mesh-agent on %s never became ready: %+v", n.Name, status(n))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	first := status(tokenNode).XDSCredentials
	if first.Mode != identity.AgentCertToken || first.Via != identity.AgentCertToken || first.Node != tokenNode.Name {
		t.Fatalf("%s: credentials %+v; want a certificate for %s by token", tokenNode.Name, first, tokenNode.Name)
	}
	if st := status(filesNode).XDSCredentials; st.Mode != identity.AgentCertFiles || st.Serial != firstFiles || st.Node != filesNode.Name {
		t.Fatalf("%s: credentials %+v; want serial %s from the files", filesNode.Name, st, firstFiles)
	}

	secondFiles := writeAgentFiles()
	deadline = time.Now().Add(30 * time.Second)
	for {
		tok, files := status(tokenNode), status(filesNode)
		if tok.XDSCredentials.Via == "mtls" && tok.XDSCredentials.Serial != first.Serial && files.XDSCredentials.Serial == secondFiles {
			if tok.XDSCredentials.Node != tokenNode.Name || files.XDSCredentials.Updates != 2 {
				t.Fatalf("after renewal: %+v and %+v", tok.XDSCredentials, files.XDSCredentials)
			}
			t.Logf("%s renewed over mtls: %s -> %s; %s reloaded its files: %s -> %s", tokenNode.Name, first.Serial,
				tok.XDSCredentials.Serial, filesNode.Name, firstFiles, secondFiles)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no renewal and reload within 30s: %+v; %+v", tok.XDSCredentials, files.XDSCredentials)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Until(first.NotAfter.Add(time.Second))) // the first stream outlives the first certificate
	for _, n := range c.Nodes {
		if st := status(n).ADS; !st.Connected || !st.Synced || st.Reconnects != 0 {
			t.Errorf("%s: ADS connected %v, synced %v, %d reconnects (%s); want the first stream still up", n.Name, st.Connected, st.Synced, st.Reconnects, st.LastError)
		}
	}
}

// writeFileAt writes data to path (creating its directory) atomically.
func writeFileAt(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
