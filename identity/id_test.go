package identity

import (
	"errors"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestWorkloadID(t *testing.T) {
	example := spiffeid.RequireTrustDomainFromString("example.org")
	tests := []struct {
		name    string
		td      spiffeid.TrustDomain
		ns, sa  string
		want    string
		wantErr bool
	}{
		{name: "default trust domain", ns: "demo", sa: "web", want: "spiffe://cluster.local/ns/demo/sa/web"},
		{name: "explicit trust domain", td: example, ns: "bookinfo", sa: "bookinfo-ratings", want: "spiffe://example.org/ns/bookinfo/sa/bookinfo-ratings"},
		{name: "empty namespace", sa: "web", wantErr: true},
		{name: "empty service account", ns: "demo", wantErr: true},
		{name: "slash in namespace", ns: "a/b", sa: "web", wantErr: true},
		{name: "dot segment", ns: "..", sa: "web", wantErr: true},
		{name: "bad character", ns: "demo", sa: "we b", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := WorkloadID(tt.td, tt.ns, tt.sa)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("WorkloadID(%q, %q) = %s, want error", tt.ns, tt.sa, id)
				}
				return
			}
			if err != nil {
				t.Fatalf("WorkloadID: %v", err)
			}
			if id.String() != tt.want {
				t.Errorf("WorkloadID = %s, want %s", id, tt.want)
			}
			ns, sa, err := ParseWorkloadID(id)
			if err != nil || ns != tt.ns || sa != tt.sa {
				t.Errorf("ParseWorkloadID(%s) = %q, %q, %v; want %q, %q", id, ns, sa, err, tt.ns, tt.sa)
			}
		})
	}
}

func TestParseWorkloadIDRejects(t *testing.T) {
	for _, s := range []string{
		"spiffe://cluster.local",
		"spiffe://cluster.local/ns/demo",
		"spiffe://cluster.local/ns/demo/sa",
		"spiffe://cluster.local/ns/demo/sa/web/extra",
		"spiffe://cluster.local/namespace/demo/sa/web",
		"spiffe://cluster.local/ns/demo/serviceaccount/web",
		"spiffe://cluster.local/spire/agent/join_token/abc",
	} {
		t.Run(s, func(t *testing.T) {
			id := spiffeid.RequireFromString(s)
			if _, _, err := ParseWorkloadID(id); !errors.Is(err, ErrNotWorkloadID) {
				t.Errorf("ParseWorkloadID(%s) error = %v, want ErrNotWorkloadID", s, err)
			}
		})
	}
	if _, _, err := ParseWorkloadID(spiffeid.ID{}); !errors.Is(err, ErrNotWorkloadID) {
		t.Errorf("ParseWorkloadID(zero) error = %v, want ErrNotWorkloadID", err)
	}
}

func TestAgentID(t *testing.T) {
	if got, want := AgentID(spiffeid.TrustDomain{}).String(), "spiffe://cluster.local/ns/nodemesh-system/sa/mesh-agent"; got != want {
		t.Errorf("AgentID = %s, want %s", got, want)
	}
	td := spiffeid.RequireTrustDomainFromString("mesh.example")
	if got, want := AgentID(td).String(), "spiffe://mesh.example/ns/nodemesh-system/sa/mesh-agent"; got != want {
		t.Errorf("AgentID = %s, want %s", got, want)
	}
}
