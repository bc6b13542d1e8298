package spire

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/translate/secure"
	"github.com/nodemesh/nodemesh/xds"
)

// meshdRefusesOtherID: meshd run as root gets the agent's SVID from SPIRE
// and refuses to start, naming it.
func (m *spireMesh) meshdRefusesOtherID(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, m.bins.meshd, m.meshdArgs...).CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("meshd as root: %v (want a refusal at start)\n%s", err, out)
	}
	if want := "SPIRE issued meshd the SVID " + m.agentID.String(); !strings.Contains(string(out), want) {
		t.Fatalf("meshd's error does not say %q:\n%s", want, out)
	}
}

// agentAccepted: the agent syncs, and meshd shows node-a connected with
// its types ACKed.
func (m *spireMesh) agentAccepted(t *testing.T) {
	t0 := time.Now()
	waitFor(t, "mesh-agent synced", 45*time.Second, func() error {
		if err := m.meshAgent.checkRunning(); err != nil {
			t.Fatal(err)
		}
		st, err := agentADS(m.statusAddr)
		if err != nil {
			return err
		}
		if !st.Synced {
			return fmt.Errorf("not synced: %+v", st)
		}
		m.reconnects = st.Reconnects
		return nil
	})
	t.Logf("mesh-agent synced with meshd over mTLS %s after the check began", time.Since(t0).Round(time.Millisecond))
	body, err := httpGet("http://" + m.debugAddr + "/debug/syncz?format=json")
	if err != nil {
		t.Fatal(err)
	}
	var nodes []xds.NodeStatus
	if err := json.Unmarshal([]byte(body), &nodes); err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 1 || nodes[0].ID != "node-a" || nodes[0].Streams < 1 {
		t.Fatalf("meshd's syncz: want node-a connected:\n%s", body)
	}
	acked := 0
	for _, ty := range nodes[0].Types {
		if ty.Acked != "" && ty.Acked == ty.Sent {
			acked++
		}
	}
	if acked == 0 {
		t.Fatalf("node-a ACKed nothing:\n%s", body)
	}
	t.Logf("meshd: node-a connected, %d types ACKed", acked)
}

// noSecretsFromMeshd: meshd names the pod's SDS secret in node-a's config
// but serves no secret: the agent does, from SPIRE.
func (m *spireMesh) noSecretsFromMeshd(t *testing.T) {
	body, err := httpGet("http://" + m.debugAddr + "/debug/config_dump?node=node-a")
	if err != nil {
		t.Fatal(err)
	}
	var dump struct {
		Dataplane map[string]json.RawMessage `json:"dataplane"`
	}
	if err := json.Unmarshal([]byte(body), &dump); err != nil {
		t.Fatal(err)
	}
	for typ := range dump.Dataplane {
		if typ == "SDS" || strings.Contains(typ, "Secret") {
			t.Errorf("meshd serves node-a %s in SPIRE mode", typ)
		}
	}
	if !strings.Contains(body, `"`+m.web.String()+`"`) {
		t.Errorf("node-a's config does not name the SDS secret %s:\n%s", m.web, body)
	}
}

// renewals: meshd presents SPIRE's renewed SVID to new connections
// without a restart, and the agent's stream outlives the renewals.
func (m *spireMesh) renewals(t *testing.T) {
	if m.reconnects < 0 {
		t.Skip("the agent never synced")
	}
	var renewed *x509.Certificate
	waitFor(t, "meshd's renewed SVID", 2*shortTTL, func() error {
		renewed = m.meshdCert(t)
		if renewed.Equal(m.firstMeshd) {
			return fmt.Errorf("meshd still presents serial %s", m.firstMeshd.SerialNumber)
		}
		return nil
	})
	if err := m.meshd.checkRunning(); err != nil {
		t.Fatal(err)
	}
	t.Logf("meshd presents SPIRE's renewed SVID (serial %s -> %s) %s after the first one's NotBefore, without a restart",
		m.firstMeshd.SerialNumber, renewed.SerialNumber, renewed.NotBefore.Sub(m.firstMeshd.NotBefore).Round(time.Second))
	st, err := agentADS(m.statusAddr)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Connected || st.Reconnects != m.reconnects {
		t.Fatalf("the agent's stream did not survive the renewals: connected %v, reconnects %d -> %d (%s)", st.Connected, m.reconnects, st.Reconnects, st.LastError)
	}
}

// workloadSVIDFiles: the agent writes the pod's SVID from SPIRE where a
// proxyless gRPC workload's file_watcher reads it.
func (m *spireMesh) workloadSVIDFiles(t *testing.T) {
	dir := filepath.Join(m.workloadCerts, "demo", "web")
	var svid *x509svid.SVID
	waitFor(t, "workload cert files", 20*time.Second, func() error {
		var err error
		svid, err = x509svid.Load(filepath.Join(dir, "cert-chain.pem"), filepath.Join(dir, "key.pem"))
		return err
	})
	roots, err := x509bundle.Load(td, filepath.Join(dir, "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if id, _, err := x509svid.Verify(svid.Certificates, roots); err != nil || id != m.web {
		t.Fatalf("%s holds %s (%v); want an SVID of %s verified by root-cert.pem", dir, id, err, m.web)
	}
	t.Logf("%s: SVID %s (serial %s) from SPIRE", dir, svid.ID, svid.Certificates[0].SerialNumber)
}

// impostor: an agent SVID whose entry names node-b. mesh-agent itself
// refuses it for --node node-a and says how to fix the entry; a client
// that tries anyway is refused by meshd for node-a and served as node-b.
func (m *spireMesh) impostor(t *testing.T) {
	impostor := &syscall.Credential{Uid: 0, Gid: impostorGID, Groups: []uint32{}}
	ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, m.bins.agent, m.agentArgs...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: impostor}
	out, err := cmd.CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("mesh-agent with node-b's SVID: %v (want a refusal at start)\n%s", err, out)
	}
	if !strings.Contains(string(out), `names node "node-b"`) || !strings.Contains(string(out), "-dns node-a") {
		t.Fatalf("mesh-agent's error does not name node-b and the fix:\n%s", out)
	}
	t.Logf("mesh-agent: %s", strings.TrimSpace(string(out)))

	helper := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperImpostorAgent$", "-test.v")
	helper.Env = append(os.Environ(), impostorEnv+"=1", impostorWLEnv+"="+m.agent.WorkloadAPIAddr, impostorXDSEnv+"="+m.xdsAddr)
	helper.SysProcAttr = &syscall.SysProcAttr{Credential: impostor}
	out, err = helper.CombinedOutput()
	if err != nil {
		t.Fatalf("helper process: %v\n%s", err, out)
	}
	for _, want := range []string{"RESULT node-a code=PermissionDenied", "RESULT node-b code=OK", "cn=node-b"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("helper output lacks %q:\n%s", want, out)
		}
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "RESULT ") || strings.HasPrefix(line, "SVID ") {
			t.Log("impostor: " + line)
		}
	}
}

// workloadSVIDOverSDS plays the node's Envoy: it asks mesh-agent's local SDS
// for the SVID of web (a pod of node-a in meshd's config) and the bundle,
// checks them against what SPIRE hands out (this test process holds the
// agent's identity, an authorized delegate), and waits for SPIRE's renewal
// to reach it.
func (m *spireMesh) workloadSVIDOverSDS(t *testing.T) {
	sp, envoySocket, web, ttl := m.own, m.envoySocket, m.web, shortTTL
	ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
	defer cancel()
	bundle, err := sp.TrustBundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+envoySocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{secure.SecretName(web), secure.BundleSecretName(td)}
	req := &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: resourcev3.SecretType, ResourceNames: names}
	// recvSVID waits for a response holding web's SVID and ACKs it.
	recvSVID := func() *x509svid.SVID {
		t.Helper()
		for {
			if err := st.Send(req); err != nil {
				t.Fatal(err)
			}
			resp, err := st.Recv()
			if err != nil {
				t.Fatalf("local SDS: %v", err)
			}
			req.VersionInfo, req.ResponseNonce = resp.GetVersionInfo(), resp.GetNonce()
			for _, a := range resp.GetResources() {
				sec := &tlsv3.Secret{}
				if err := a.UnmarshalTo(sec); err != nil {
					t.Fatal(err)
				}
				if sec.GetName() != secure.SecretName(web) {
					continue
				}
				tc := sec.GetTlsCertificate()
				svid, err := x509svid.Parse(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
				if err != nil {
					t.Fatalf("secret %s: %v", sec.GetName(), err)
				}
				return svid
			}
		}
	}
	t0 := time.Now()
	first := recvSVID()
	if id, _, err := x509svid.Verify(first.Certificates, bundle); err != nil || id != web {
		t.Fatalf("local SDS served %s (%v); want an SVID of %s from SPIRE's CA", id, err, web)
	}
	leaf := first.Certificates[0]
	t.Logf("local SDS served %s (serial %s, lifetime %s) %s after asking", web, leaf.SerialNumber, leaf.NotAfter.Sub(leaf.NotBefore), time.Since(t0).Round(time.Millisecond))
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got > ttl+time.Minute {
		t.Errorf("SVID lifetime %s: not the entry's %s (not issued by SPIRE for this entry?)", got, ttl)
	}
	// The SVID SPIRE's Delegated Identity API hands this process is the
	// same one (or its renewal).
	direct, err := sp.SVIDFor(ctx, identity.Workload{ID: web, PID: m.webPod.pid()})
	if err != nil {
		t.Fatal(err)
	}
	if !direct.Certificates[0].Equal(leaf) && direct.Certificates[0].NotBefore.Before(leaf.NotBefore) {
		t.Errorf("SPIRE's SVID for %s (serial %s) is not the agent's (serial %s)", web, direct.Certificates[0].SerialNumber, leaf.SerialNumber)
	}
	for {
		next := recvSVID()
		if next.Certificates[0].Equal(leaf) {
			continue // same SVID (a bundle update)
		}
		if time.Now().After(leaf.NotAfter) {
			t.Errorf("renewed SVID arrived after the previous one expired")
		}
		t.Logf("renewed SVID (serial %s) pushed over local SDS %s after the first one's NotBefore", next.Certificates[0].SerialNumber, time.Since(leaf.NotBefore).Round(time.Second))
		return
	}
}
