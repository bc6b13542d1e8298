package identity

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The SPIRE source against a real SPIRE agent is tested in e2e/spire; these
// are the cases that need no agent.

func TestSPIREConfigValidate(t *testing.T) {
	for _, tt := range []struct {
		name    string
		cfg     SPIREConfig
		wantErr string
	}{
		{name: "zero value", cfg: SPIREConfig{}},
		{name: "both sockets", cfg: SPIREConfig{WorkloadAPIAddr: "unix:///run/spire/api.sock", AdminSocketAddr: "unix:///run/spire-admin/admin.sock"}},
		{name: "relative workload api", cfg: SPIREConfig{WorkloadAPIAddr: "api.sock"}, wantErr: "WorkloadAPIAddr"},
		{name: "admin not unix", cfg: SPIREConfig{AdminSocketAddr: "tcp://127.0.0.1:1"}, wantErr: "AdminSocketAddr"},
		{name: "admin is the workload api", cfg: SPIREConfig{WorkloadAPIAddr: "unix:///a.sock", AdminSocketAddr: "unix:///a.sock"}, wantErr: "is the Workload API socket"},
		{name: "negative retry", cfg: SPIREConfig{RetryInterval: -time.Second}, wantErr: "negative"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestSPIRESVIDForWithoutAdminSocket(t *testing.T) {
	s, err := NewSPIRE(SPIREConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.SVIDFor(t.Context(), Workload{Selectors: []Selector{{"unix", "uid:1"}}}); !errors.Is(err, ErrNoAdminSocket) {
		t.Errorf("SVIDFor = %v, want ErrNoAdminSocket", err)
	}
}

func TestSPIRESVIDForWaitsForAgent(t *testing.T) {
	dir := t.TempDir()
	s, err := NewSPIRE(SPIREConfig{
		WorkloadAPIAddr: "unix://" + filepath.Join(dir, "api.sock"),
		AdminSocketAddr: "unix://" + filepath.Join(dir, "admin.sock"),
		RetryInterval:   50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.SVIDFor(t.Context(), Workload{}); err == nil || !strings.Contains(err.Error(), "no selectors or pid") {
		t.Errorf("SVIDFor(empty workload) = %v, want a no-selectors error", err)
	}
	// No agent listens: SVIDFor keeps retrying Unavailable until the
	// context ends, and says so.
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	_, err = s.SVIDFor(ctx, Workload{Selectors: []Selector{{"unix", "uid:1"}}})
	if status.Code(err) != codes.Unavailable || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("SVIDFor without agent = %v, want Unavailable and then the deadline", err)
	}
}

func TestRetryable(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{status.Error(codes.Unavailable, "connection refused"), true},
		{status.Error(codes.PermissionDenied, "no identity issued"), true},
		{status.Error(codes.PermissionDenied, "caller not configured as an authorized delegate"), false},
		{status.Error(codes.InvalidArgument, "could not parse provided selectors"), false},
		{errors.New("plain"), false},
	} {
		if got := retryable(tt.err); got != tt.want {
			t.Errorf("retryable(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
