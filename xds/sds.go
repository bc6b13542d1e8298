package xds

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/protobuf/proto"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/translate/secure"
)

// secretCache holds one SVID per workload identity (shared by every node
// with pods of that service account) and the trust bundle, as SDS Secret
// messages. The messages are immutable: a rotation replaces them, so the
// server's content hashes see the change.
type secretCache struct {
	issuer Issuer
	td     spiffeid.TrustDomain
	now    func() time.Time

	mu     sync.Mutex
	svids  map[string]*issued // SPIFFE ID -> current SVID
	bundle *tlsv3.Secret
	roots  []byte // PEM of the bundle in bundle
	gen    uint64 // bumped by every change
}

type issued struct {
	leaf   *x509.Certificate
	secret *tlsv3.Secret
}

func newSecretCache(issuer Issuer, td spiffeid.TrustDomain, now func() time.Time) *secretCache {
	return &secretCache{issuer: issuer, td: td, now: now, svids: map[string]*issued{}}
}

func (c *secretCache) epoch() uint64 {
	if c == nil {
		return 0 // no issuer: no secrets, one epoch
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// forNode returns the Secret resources of ids plus the trust bundle,
// issuing what is missing or due for rotation.
func (c *secretCache) forNode(ids []spiffeid.ID) (TypedResources, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := TypedResources{TypeURL: resourcev3.SecretType}
	if err := c.refreshBundle(); err != nil {
		return out, err
	}
	out.Names = append(out.Names, c.bundle.Name)
	out.Items = append(out.Items, c.bundle)
	var firstErr error
	for _, id := range ids {
		is, err := c.get(id)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		out.Names = append(out.Names, is.secret.Name)
		out.Items = append(out.Items, types.Resource(is.secret))
	}
	return out, firstErr
}

func (c *secretCache) get(id spiffeid.ID) (*issued, error) {
	is := c.svids[id.String()]
	if is != nil && !identity.NeedsRotation(is.leaf, c.now()) {
		return is, nil
	}
	return c.issue(id)
}

func (c *secretCache) issue(id spiffeid.ID) (*issued, error) {
	svid, err := c.issuer.NewSVID(id)
	if err != nil {
		return nil, fmt.Errorf("issue SVID for %s: %w", id, err)
	}
	s, err := svidSecret(secure.SecretName(id), svid)
	if err != nil {
		return nil, err
	}
	is := &issued{leaf: svid.Certificates[0], secret: s}
	c.svids[id.String()] = is
	c.gen++
	return is, nil
}

// refreshBundle rebuilds the bundle secret when the issuer's roots changed
// (a root rotation adds the new root beside the old one).
func (c *secretCache) refreshBundle() error {
	roots := identity.EncodeCertsPEM(c.issuer.Bundle().X509Authorities())
	if len(roots) == 0 {
		return fmt.Errorf("trust bundle of %s is empty", c.td)
	}
	if c.bundle != nil && bytes.Equal(roots, c.roots) {
		return nil
	}
	c.roots = roots
	c.bundle = &tlsv3.Secret{
		Name: secure.BundleSecretName(c.td),
		Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inline(roots),
		}},
	}
	c.gen++
	return nil
}

// prune forgets the SVIDs of identities not in keep (service accounts
// with no pods left), so they are neither kept nor rotated.
func (c *secretCache) prune(keep map[string]bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range c.svids {
		if !keep[id] {
			delete(c.svids, id)
		}
	}
}

// rotate re-issues SVIDs past half their lifetime and refreshes the
// bundle; it returns how many secrets changed.
func (c *secretCache) rotate() (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	before := c.gen
	var firstErr error
	if err := c.refreshBundle(); err != nil {
		firstErr = err
	}
	now := c.now()
	for _, is := range c.svids {
		if !identity.NeedsRotation(is.leaf, now) {
			continue
		}
		id, err := spiffeid.FromString(is.secret.Name)
		if err == nil {
			_, err = c.issue(id)
		}
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return int(c.gen - before), firstErr
}

// have lists the names of the secrets cached for ids and the bundle.
func (c *secretCache) have(ids []spiffeid.ID) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	if c.bundle != nil {
		out = append(out, c.bundle.Name)
	}
	for _, id := range ids {
		if c.svids[id.String()] != nil {
			out = append(out, id.String())
		}
	}
	return out
}

// svidSecret is an SDS TLS certificate: the chain and the key, inline PEM.
func svidSecret(name string, svid *x509svid.SVID) (*tlsv3.Secret, error) {
	chain, key, err := svid.Marshal()
	if err != nil {
		return nil, fmt.Errorf("encode SVID %s: %w", name, err)
	}
	return &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(chain),
			PrivateKey:       inline(key),
		}},
	}, nil
}

func inline(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

// redactSecret hides private keys from debug output: a TLS certificate
// secret keeps its chain, its key becomes "[redacted]".
func redactSecret(r types.Resource) types.Resource {
	s, ok := r.(*tlsv3.Secret)
	if !ok || s.GetTlsCertificate() == nil {
		return r
	}
	cp := proto.Clone(s).(*tlsv3.Secret)
	cp.GetTlsCertificate().PrivateKey = &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "[redacted]"}}
	return cp
}
