package identity

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"testing"
)

func TestAgentSVIDBindsNode(t *testing.T) {
	ca := newTestCA(t, CAConfig{})
	svid, err := ca.NewAgentSVID("node-1.example")
	if err != nil {
		t.Fatalf("NewAgentSVID: %v", err)
	}
	id, err := verifyAt(svid.Certificates, ca.Bundle(), t0)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if id != AgentID(ca.TrustDomain()) {
		t.Errorf("agent SVID id = %s, want %s", id, AgentID(ca.TrustDomain()))
	}
	leaf := svid.Certificates[0]
	if len(leaf.URIs) != 1 || len(leaf.DNSNames) != 0 {
		t.Errorf("agent SVID SANs: uris %v dns %v; want exactly the agent URI", leaf.URIs, leaf.DNSNames)
	}
	node, err := AgentNode(leaf, ca.TrustDomain())
	if err != nil || node != "node-1.example" {
		t.Errorf("AgentNode = %q, %v; want node-1.example", node, err)
	}

	// Through a CSR: the CSR's subject is ignored, the node comes from the
	// authenticated caller.
	csr := newCSR(t, ecKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "node-2"}})
	chain, err := ca.SignAgentCSR(csr, "node-3", 0)
	if err != nil {
		t.Fatal(err)
	}
	if node, err := AgentNode(chain[0], ca.TrustDomain()); err != nil || node != "node-3" {
		t.Errorf("AgentNode(SignAgentCSR) = %q, %v; want node-3", node, err)
	}
}

func TestAgentNodeRejects(t *testing.T) {
	ca := newTestCA(t, CAConfig{})
	workload, err := ca.NewSVID(mustWorkloadID(t, "demo", "web"))
	if err != nil {
		t.Fatal(err)
	}
	// A workload whose CSR asks for a node name in its subject gets none.
	csr := newCSR(t, ecKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "node-1"}})
	spoof, err := ca.SignCSR(csr, mustWorkloadID(t, "demo", "web"), 0)
	if err != nil {
		t.Fatal(err)
	}
	// The agent's id signed without a node (e.g. through the Istio API by
	// a caller allowed the agent identity) does not name a node either.
	noNode, err := ca.SignCSR(newCSR(t, ecKey(t), nil), AgentID(ca.TrustDomain()), 0)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*x509.Certificate{
		"workload svid":          workload.Certificates[0],
		"workload asking for cn": spoof[0],
		"agent id without node":  noNode[0],
		"nil":                    nil,
	} {
		t.Run(name, func(t *testing.T) {
			if node, err := AgentNode(c, ca.TrustDomain()); !errors.Is(err, ErrNotAgent) {
				t.Errorf("AgentNode = %q, %v; want ErrNotAgent", node, err)
			}
		})
	}
	for _, bad := range []string{"", "Node_1", "-node", "a/b"} {
		if _, err := ca.NewAgentSVID(bad); err == nil {
			t.Errorf("NewAgentSVID(%q) succeeded", bad)
		}
	}
}
