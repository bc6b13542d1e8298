package agent

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/nodeagent/envoy"
	"github.com/nodemesh/nodemesh/translate/secure"
)

var _ envoy.SecretProvider = (*svidManager)(nil)

// Secrets implements envoy.SecretProvider: the SVID of each local service
// account (a TLS certificate named by its SPIFFE ID) and the trust bundle
// (a validation context named spiffe://<trust domain>), as meshd's SDS
// names them (translate/secure.SecretName, BundleSecretName), so the
// listeners and clusters meshd sends find them.
func (m *svidManager) Secrets() (map[string]*tlsv3.Secret, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.secrets, m.changed
}

// publish rebuilds the secrets from the current SVIDs and bundle and tells
// the watchers.
func (m *svidManager) publish() {
	m.mu.Lock()
	defer m.mu.Unlock()
	next := make(map[string]*tlsv3.Secret, len(m.accounts)+1)
	if m.bundle != nil {
		name := secure.BundleSecretName(m.bundle.TrustDomain())
		next[name] = bundleSecret(name, m.bundle)
	}
	for _, a := range m.accounts {
		if a.svid == nil {
			continue
		}
		name := secure.SecretName(a.ID)
		s, err := svidSecret(name, a.svid)
		if err != nil {
			m.log.Error("encoding workload SVID secret", "spiffe_id", a.ID, "error", err)
			continue
		}
		next[name] = s
	}
	m.secrets = next
	close(m.changed)
	m.changed = make(chan struct{})
}

func svidSecret(name string, svid *x509svid.SVID) (*tlsv3.Secret, error) {
	chain, key, err := svid.Marshal()
	if err != nil {
		return nil, err
	}
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: inline(chain),
		PrivateKey:       inline(key),
	}}}, nil
}

func bundleSecret(name string, b *x509bundle.Bundle) *tlsv3.Secret {
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: inline(identity.EncodeCertsPEM(b.X509Authorities())),
	}}}
}

func inline(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}
