package envoy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strconv"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// SecretProvider is where the proxy takes the SDS secrets it answers
// itself (ProxyConfig.Secrets): in nodemesh, the node agent's workload
// SVIDs (named by SPIFFE ID) and trust bundle (a validation context named
// spiffe://<trust domain>), as translate/secure names them.
type SecretProvider interface {
	// Secrets returns the current secrets by name and a channel that is
	// closed at the next change. The map is not modified afterwards: a
	// change comes as a new map.
	Secrets() (map[string]*tlsv3.Secret, <-chan struct{})
}

// secretVersion is a secret's content hash: Envoy gets a push only when a
// secret it asked for really changed.
func secretVersion(s *tlsv3.Secret) string {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(s)
	if err != nil {
		return "unmarshalable"
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// isSecretRequest reports whether a request is for SDS.
func isSecretRequest(typeURL string) bool { return typeURL == resourcev3.SecretType }

// serveSotWSecrets answers the SotW Secret requests of one Envoy stream
// from p.cfg.Secrets until ctx ends or a send fails. Requests name the
// secrets wanted (none on the first request, or "*": all of them); a
// response carries those that exist and is sent when that set or one of
// them changes, so ACKs and NACKs get no answer. A secret the provider
// does not have (a service account without pods on the node) is left out:
// Envoy keeps waiting for it.
func (p *Proxy) serveSotWSecrets(ctx context.Context, reqs <-chan *discovery.DiscoveryRequest, send func(*discovery.DiscoveryResponse) error) error {
	var (
		names            []string
		wildcard, active bool
		last             string // version of the last response
		nonce            int
	)
	current, changed := p.cfg.Secrets.Secrets()
	for {
		select {
		case <-ctx.Done():
			return nil
		case req := <-reqs:
			p.noteSecretNACK(req.GetErrorDetail().GetMessage(), req.GetResponseNonce())
			if !active {
				wildcard = len(req.GetResourceNames()) == 0
			}
			active = true
			names = slices.Clone(req.GetResourceNames())
			if slices.Contains(names, "*") {
				wildcard = true
			}
		case <-changed:
			current, changed = p.cfg.Secrets.Secrets()
		}
		if !active {
			continue
		}
		want := names
		if wildcard {
			want = sortedKeys(current)
		}
		resp := &discovery.DiscoveryResponse{TypeUrl: resourcev3.SecretType}
		h := sha256.New()
		for _, n := range sortedUnique(want) {
			s, ok := current[n]
			if !ok {
				continue
			}
			a, err := anypb.New(s)
			if err != nil {
				continue
			}
			h.Write([]byte(n + "=" + secretVersion(s) + ";"))
			resp.Resources = append(resp.Resources, a)
		}
		version := hex.EncodeToString(h.Sum(nil)[:8])
		if version == last || (last == "" && len(resp.Resources) == 0) {
			continue
		}
		nonce++
		resp.VersionInfo, resp.Nonce = version, "local-sds-"+strconv.Itoa(nonce)
		if err := send(resp); err != nil {
			return err
		}
		last = version
		p.secretPushes.Add(1)
	}
}

// serveDeltaSecrets answers the Delta Secret requests of one Envoy stream
// from p.cfg.Secrets: each subscribed secret (or every one, for a wildcard
// subscription) is sent when Envoy does not have its current version yet;
// a secret that was sent and is gone (its service account left the node)
// is sent as removed.
func (p *Proxy) serveDeltaSecrets(ctx context.Context, reqs <-chan *discovery.DeltaDiscoveryRequest, send func(*discovery.DeltaDiscoveryResponse) error) error {
	var (
		subscribed       = map[string]bool{}
		has              = map[string]string{} // name -> version Envoy holds
		wildcard, active bool
		nonce            int
	)
	current, changed := p.cfg.Secrets.Secrets()
	for {
		select {
		case <-ctx.Done():
			return nil
		case req := <-reqs:
			p.noteSecretNACK(req.GetErrorDetail().GetMessage(), req.GetResponseNonce())
			if !active {
				// A reconnecting Envoy says what it holds already.
				for n, v := range req.GetInitialResourceVersions() {
					has[n] = v
				}
				wildcard = len(req.GetResourceNamesSubscribe()) == 0
			}
			active = true
			for _, n := range req.GetResourceNamesSubscribe() {
				if n == "*" {
					wildcard = true
					continue
				}
				if _, initial := req.GetInitialResourceVersions()[n]; !initial {
					delete(has, n) // a (re)subscription is answered
				}
				subscribed[n] = true
			}
			for _, n := range req.GetResourceNamesUnsubscribe() {
				if n == "*" {
					wildcard = false
					continue
				}
				delete(subscribed, n)
				delete(has, n)
			}
		case <-changed:
			current, changed = p.cfg.Secrets.Secrets()
		}
		if !active {
			continue
		}
		resp := deltaSecretsDiff(current, subscribed, wildcard, has)
		if len(resp.Resources) == 0 && len(resp.RemovedResources) == 0 {
			continue
		}
		nonce++
		resp.Nonce = "local-sds-" + strconv.Itoa(nonce)
		if err := send(resp); err != nil {
			return err
		}
		p.secretPushes.Add(1)
	}
}

// deltaSecretsDiff builds the response that brings Envoy from has to
// current for the names it wants, and records what it sends in has.
func deltaSecretsDiff(current map[string]*tlsv3.Secret, subscribed map[string]bool, wildcard bool, has map[string]string) *discovery.DeltaDiscoveryResponse {
	resp := &discovery.DeltaDiscoveryResponse{TypeUrl: resourcev3.SecretType}
	wanted := func(n string) bool { return subscribed[n] || wildcard }
	for _, n := range sortedKeys(current) {
		if !wanted(n) {
			continue
		}
		v := secretVersion(current[n])
		if has[n] == v {
			continue
		}
		a, err := anypb.New(current[n])
		if err != nil {
			continue
		}
		resp.Resources = append(resp.Resources, &discovery.Resource{Name: n, Version: v, Resource: a})
		has[n] = v
	}
	for _, n := range sortedKeys(has) {
		if _, ok := current[n]; !ok && wanted(n) {
			resp.RemovedResources = append(resp.RemovedResources, n)
			delete(has, n)
		}
	}
	return resp
}

func (p *Proxy) noteSecretNACK(detail, nonce string) {
	if detail == "" {
		return
	}
	p.secretNACKs.Add(1)
	p.log.Warn("envoy rejected locally served secrets", "type_url", resourcev3.SecretType, "nonce", nonce, "error", detail)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func sortedUnique(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return slices.Compact(s)
}
