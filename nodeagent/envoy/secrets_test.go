package envoy

import (
	"context"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	sotwclient "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
)

// fakeSecrets is a SecretProvider whose secrets the test sets.
type fakeSecrets struct {
	mu      sync.Mutex
	secrets map[string]*tlsv3.Secret
	changed chan struct{}
}

func newFakeSecrets() *fakeSecrets {
	return &fakeSecrets{secrets: map[string]*tlsv3.Secret{}, changed: make(chan struct{})}
}

func (f *fakeSecrets) Secrets() (map[string]*tlsv3.Secret, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.secrets, f.changed
}

// set replaces secret name (nil: removes it) with a certificate secret
// whose chain is content.
func (f *fakeSecrets) set(name, content string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	next := make(map[string]*tlsv3.Secret, len(f.secrets)+1)
	for k, v := range f.secrets {
		next[k] = v
	}
	if content == "" {
		delete(next, name)
	} else {
		next[name] = &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: content}}}}}
	}
	f.secrets = next
	close(f.changed)
	f.changed = make(chan struct{})
}

const (
	svidName   = "spiffe://cluster.local/ns/shop/sa/web"
	bundleName = "spiffe://cluster.local"
)

func startSecretProxy(t *testing.T, u *upstreamCP, secrets SecretProvider) (*Proxy, *grpc.ClientConn) {
	t.Helper()
	up, err := grpc.NewClient(u.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "xds.sock")
	p, err := NewProxy(ProxyConfig{Socket: sock, Node: "node-a", Upstream: up, Secrets: secrets, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	envoy, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		envoy.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("proxy Run: %v", err)
		}
		up.Close()
	})
	return p, envoy
}

func chainOf(t *testing.T, a *anypb.Any) (string, string) {
	t.Helper()
	var s tlsv3.Secret
	if err := a.UnmarshalTo(&s); err != nil {
		t.Fatal(err)
	}
	return s.GetName(), s.GetTlsCertificate().GetCertificateChain().GetInlineString()
}

func secretsOf(t *testing.T, res []*anypb.Any) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, a := range res {
		n, c := chainOf(t, a)
		out[n] = c
	}
	return out
}

// upstreamSawSecrets reports whether any request for secrets reached the
// control plane.
func upstreamSawSecrets(u *upstreamCP) bool {
	sotw, delta, _ := u.requests()
	for _, r := range sotw {
		if r.GetTypeUrl() == resource.SecretType {
			return true
		}
	}
	for _, r := range delta {
		if r.GetTypeUrl() == resource.SecretType {
			return true
		}
	}
	return false
}

// TestProxyLocalSecretsSotW: go-control-plane's SotW ADS client, standing
// in for Envoy on the socket, gets its secrets from the provider and the
// renewed one pushed; its clusters still come from the control plane,
// which never hears of secrets.
func TestProxyLocalSecretsSotW(t *testing.T) {
	u := newUpstreamCP(t)
	u.setClusters("v1", "shop/web")
	fs := newFakeSecrets()
	fs.set(svidName, "chain-1")
	fs.set(bundleName, "roots-1")
	p, conn := startSecretProxy(t, u, fs)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	sds := sotwclient.NewADSClient(ctx, &corev3.Node{Id: "node-a"}, resource.SecretType) // wildcard: every secret
	if err := sds.InitConnect(conn, grpc.WaitForReady(true)); err != nil {
		t.Fatal(err)
	}
	r, err := sds.Fetch()
	if err != nil {
		t.Fatal(err)
	}
	if got := secretsOf(t, r.Resources); len(got) != 2 || got[svidName] != "chain-1" || got[bundleName] != "roots-1" {
		t.Fatalf("first secrets: %v", got)
	}
	if err := sds.Ack(); err != nil {
		t.Fatal(err)
	}
	fs.set(svidName, "chain-2") // a renewal
	r, err = sds.Fetch()
	if err != nil {
		t.Fatal(err)
	}
	if got := secretsOf(t, r.Resources); got[svidName] != "chain-2" || got[bundleName] != "roots-1" {
		t.Fatalf("after renewal: %v", got)
	}
	if err := sds.Nack("bad secret"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the NACK counted", func() bool { return p.Stats().LocalSecretNACKs == 1 })

	cds := sotwclient.NewADSClient(ctx, &corev3.Node{Id: "node-a"}, resource.ClusterType)
	if err := cds.InitConnect(conn, grpc.WaitForReady(true)); err != nil {
		t.Fatal(err)
	}
	cr, err := cds.Fetch()
	if err != nil {
		t.Fatal(err)
	}
	var c clusterv3.Cluster
	if len(cr.Resources) != 1 || cr.Resources[0].UnmarshalTo(&c) != nil || c.GetName() != "shop/web" {
		t.Fatalf("clusters through the proxy: %v", cr.Resources)
	}
	if upstreamSawSecrets(u) {
		t.Error("a Secret request reached the control plane")
	}
	if st := p.Stats(); st.LocalSecretPushes != 2 {
		t.Errorf("stats %+v, want 2 local secret pushes", st)
	}
}

// TestProxyLocalSecretsDelta: on one Delta stream (as Envoy's bootstrap
// asks for), subscribed secrets come from the provider, a missing one is
// not served until it exists, a renewal is pushed alone, a dropped one is
// removed; clusters on the same stream come from the control plane, whose
// first request carries the node although Envoy sent it with a secret.
func TestProxyLocalSecretsDelta(t *testing.T) {
	u := newUpstreamCP(t)
	u.setClusters("v1", "shop/web")
	fs := newFakeSecrets()
	fs.set(svidName, "chain-1")
	fs.set(bundleName, "roots-1")
	_, conn := startSecretProxy(t, u, fs)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	const other = "spiffe://cluster.local/ns/shop/sa/db" // not on this node
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "node-a"}, TypeUrl: resource.SecretType,
		ResourceNamesSubscribe: []string{svidName, bundleName, other}}); err != nil {
		t.Fatal(err)
	}
	recv := func() *discovery.DeltaDiscoveryResponse {
		t.Helper()
		r, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	names := func(r *discovery.DeltaDiscoveryResponse) map[string]string {
		out := map[string]string{}
		for _, res := range r.GetResources() {
			n, c := chainOf(t, res.GetResource())
			if n != res.GetName() {
				t.Errorf("resource %s holds secret %s", res.GetName(), n)
			}
			out[n] = c
		}
		return out
	}
	r := recv()
	if got := names(r); r.GetTypeUrl() != resource.SecretType || len(got) != 2 || got[svidName] != "chain-1" || got[bundleName] != "roots-1" {
		t.Fatalf("first response %s: %v", r.GetTypeUrl(), got)
	}
	// ACK, then clusters on the same stream (no node this time).
	for _, req := range []*discovery.DeltaDiscoveryRequest{
		{TypeUrl: resource.SecretType, ResponseNonce: r.GetNonce()},
		{TypeUrl: resource.ClusterType, ResourceNamesSubscribe: []string{"*"}},
	} {
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	r = recv()
	if r.GetTypeUrl() != resource.ClusterType || len(r.GetResources()) != 1 || r.GetResources()[0].GetName() != "shop/web" {
		t.Fatalf("clusters: %v", r)
	}
	fs.set(svidName, "chain-2")
	r = recv()
	if got := names(r); len(got) != 1 || got[svidName] != "chain-2" {
		t.Fatalf("renewal push: %v", got)
	}
	fs.set(other, "chain-db") // the other service account comes to the node
	r = recv()
	if got := names(r); len(got) != 1 || got[other] != "chain-db" {
		t.Fatalf("new secret: %v", got)
	}
	fs.set(svidName, "") // web's last pod left
	r = recv()
	if len(r.GetResources()) != 0 || !slices.Equal(r.GetRemovedResources(), []string{svidName}) {
		t.Fatalf("removal: %v removed %v", r.GetResources(), r.GetRemovedResources())
	}
	if upstreamSawSecrets(u) {
		t.Error("a Secret request reached the control plane")
	}
	_, delta, _ := u.requests()
	switch {
	case len(delta) == 0:
		t.Error("no Delta request reached the control plane")
	case delta[0].GetNode().GetId() != "node-a":
		t.Errorf("first upstream request has node %v", delta[0].GetNode())
	}
}

// TestProxySecretsForwardedWithoutProvider: without ProxyConfig.Secrets a
// Secret request goes to the control plane as before.
func TestProxySecretsForwardedWithoutProvider(t *testing.T) {
	u := newUpstreamCP(t)
	u.setClusters("v1", "shop/web")
	_, conn := startProxy(t, u)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sds := sotwclient.NewADSClient(ctx, &corev3.Node{Id: "node-a"}, resource.SecretType)
	if err := sds.InitConnect(conn, grpc.WaitForReady(true)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the Secret request upstream", func() bool { return upstreamSawSecrets(u) })
}
