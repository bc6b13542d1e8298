package identity

// How a node agent's certificate names its node.
//
// Every node agent has the same SPIFFE ID, AgentID(td). An X.509-SVID carries
// exactly one URI SAN, so the node cannot be a second SPIFFE ID. It is bound
// in the Subject common name of the agent's SVID instead:
//
//	URI SAN:    spiffe://<td>/ns/nodemesh-system/sa/mesh-agent
//	Subject CN: <node name>
//
// Not a DNS SAN: a DNS SAN would make the certificate valid for the node
// name as a TLS server host name for any web-PKI client, an authority the
// agent must not have. The common name confers none (Go and Envoy ignore it
// for host names), and only the CA sets it: SignCSR never copies a CSR's
// subject, and workload SVIDs have an empty subject. AgentNode trusts the
// common name only on a certificate whose SPIFFE ID is the agent's.
//
// With SPIRE as the upstream (meshd and mesh-agent --spire-socket), SPIRE
// signs the agent's SVID, and SPIRE sets the Subject CN of an X.509-SVID to
// the first DNS name of its registration entry (e2e/spire checks it with
// spire-server 1.13.3: an entry with -dns node-b gives CN node-b). So the
// node agent's entry carries the node name as its first DNS name:
//
//	spire-server entry create -spiffeID spiffe://<td>/ns/nodemesh-system/sa/mesh-agent \
//	    -parentID <the node's SPIRE agent> -selector ... -dns <node name>
//
// (with spire-controller-manager: a ClusterSPIFFEID selecting the mesh-agent
// pods, with dnsNameTemplates ["{{ .PodSpec.NodeName }}"]). The trade-off:
// there the node name is also a DNS SAN, so the SVID is valid as a server
// certificate for that host name to any client that trusts the trust
// domain's bundle (not the web PKI). A node agent serves TLS to no one under
// that name, and mesh clients authorise peers by SPIFFE ID, not host name,
// so what it adds is small; but anyone who can create SPIRE entries with DNS
// names can already mint such certificates, and the registration must be as
// tightly held as the node attestation behind it: an entry with the agent's
// ID and another node's DNS name lets that agent speak for the other node.

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"k8s.io/apimachinery/pkg/util/validation"
)

// ErrNotAgent is returned by AgentNode for a certificate that is not a node
// agent's SVID.
var ErrNotAgent = errors.New("not a node agent certificate")

// SignAgentCSR signs the node agent's SVID for node: AgentID with node in the
// Subject common name. As with SignCSR the CSR's own names are ignored, and
// the caller must have authenticated the node (join token, Kubernetes token
// review) before calling.
func (ca *CA) SignAgentCSR(csr *x509.CertificateRequest, node string, ttl time.Duration) ([]*x509.Certificate, error) {
	if err := ValidNodeName(node); err != nil {
		return nil, fmt.Errorf("sign agent csr: %w", err)
	}
	if csr == nil {
		return nil, errors.New("sign agent csr: nil csr")
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("sign agent csr for node %q: bad csr signature: %w", node, err)
	}
	if err := checkLeafKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("sign agent csr for node %q: %w", node, err)
	}
	return ca.sign(csr.PublicKey, AgentID(ca.cfg.TrustDomain), node, ttl)
}

// NewAgentSVID generates a key and signs the node agent's SVID for node.
func (ca *CA) NewAgentSVID(node string) (*x509svid.SVID, error) {
	if err := ValidNodeName(node); err != nil {
		return nil, fmt.Errorf("new agent svid: %w", err)
	}
	return ca.newSVID(AgentID(ca.cfg.TrustDomain), node)
}

// AgentNode returns the node bound to a node agent's certificate (see the
// comment at the top of this file). The certificate must already have been
// verified against the trust bundle (as the mTLS handshake does); AgentNode
// checks that its SPIFFE ID is AgentID(td) and that it names a node.
func AgentNode(cert *x509.Certificate, td spiffeid.TrustDomain) (string, error) {
	if cert == nil {
		return "", fmt.Errorf("agent node: %w: no certificate", ErrNotAgent)
	}
	id, err := x509svid.IDFromCert(cert)
	if err != nil {
		return "", fmt.Errorf("agent node: %w: %w", ErrNotAgent, err)
	}
	if want := AgentID(td); id != want {
		return "", fmt.Errorf("agent node: %w: SPIFFE ID %s, want %s", ErrNotAgent, id, want)
	}
	node := cert.Subject.CommonName
	if err := ValidNodeName(node); err != nil {
		return "", fmt.Errorf("agent node: %w: %w", ErrNotAgent, err)
	}
	return node, nil
}

// ValidNodeName checks that node is a Kubernetes node name (a DNS subdomain).
func ValidNodeName(node string) error {
	if node == "" {
		return errors.New("empty node name")
	}
	if errs := validation.IsDNS1123Subdomain(node); len(errs) > 0 {
		return fmt.Errorf("node name %q: %s", node, errs[0])
	}
	return nil
}
