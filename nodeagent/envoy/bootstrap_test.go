package envoy

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/testing/protocmp"
)

func TestBootstrapGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  BootstrapConfig
	}{
		{"delta-defaults", BootstrapConfig{Node: "node-a", XDSSocket: "/run/nodemesh/xds.sock"}},
		{"sotw-limits", BootstrapConfig{Node: "node-b", XDSSocket: "/run/nodemesh/xds.sock", AdminPort: 19000, SotW: true,
			MaxHeapBytes: 512 << 20, MaxDownstreamConnections: 10000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Bootstrap(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.ValidateAll(); err != nil {
				t.Fatalf("ValidateAll: %v", err)
			}
			got, err := MarshalBootstrap(b)
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", "bootstrap-"+tc.name+".json")
			if os.Getenv("UPDATE_GOLDEN") != "" {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with UPDATE_GOLDEN=1 to create)", err)
			}
			if diff := cmp.Diff(string(want), string(got)); diff != "" {
				t.Errorf("bootstrap differs from %s (-want +got; UPDATE_GOLDEN=1 refreshes):\n%s", golden, diff)
			}
			// The file parses back into the same bootstrap (what envoy -c reads).
			var back bootstrapv3.Bootstrap
			if err := protojson.Unmarshal(got, &back); err != nil {
				t.Fatalf("golden does not parse as a Bootstrap: %v", err)
			}
			if diff := cmp.Diff(b, &back, protocmp.Transform()); diff != "" {
				t.Errorf("round trip (-built +parsed):\n%s", diff)
			}
		})
	}
}

func TestBootstrapContents(t *testing.T) {
	b, err := Bootstrap(BootstrapConfig{Node: "node-a", XDSSocket: "/run/x.sock"})
	if err != nil {
		t.Fatal(err)
	}
	if b.GetNode().GetId() != "node-a" || b.GetNode().GetMetadata().GetFields()[MetaProxy].GetStringValue() != "envoy" {
		t.Errorf("node = %v, want id node-a and %s=envoy", b.GetNode(), MetaProxy)
	}
	ads := b.GetDynamicResources().GetAdsConfig()
	if ads.GetApiType().String() != "DELTA_GRPC" || ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != XDSCluster {
		t.Errorf("ads config = %v, want DELTA_GRPC via %s", ads, XDSCluster)
	}
	c := b.GetStaticResources().GetClusters()[0]
	pipe := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe().GetPath()
	if c.GetName() != XDSCluster || pipe != "/run/x.sock" {
		t.Errorf("xds cluster %s -> pipe %q, want %s -> /run/x.sock", c.GetName(), pipe, XDSCluster)
	}
	if _, ok := c.GetTypedExtensionProtocolOptions()[httpOptionsName]; !ok {
		t.Errorf("xds cluster lacks %s (gRPC needs HTTP/2)", httpOptionsName)
	}
	if a := b.GetAdmin().GetAddress().GetSocketAddress(); a.GetAddress() != "127.0.0.1" || a.GetPortValue() != 15000 {
		t.Errorf("admin on %s:%d, want 127.0.0.1:15000", a.GetAddress(), a.GetPortValue())
	}
}

func TestBootstrapConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  BootstrapConfig
		want string
	}{
		{"no node", BootstrapConfig{XDSSocket: "/x.sock"}, "node is required"},
		{"no socket", BootstrapConfig{Node: "n"}, "xds socket is required"},
		{"relative socket", BootstrapConfig{Node: "n", XDSSocket: "x.sock"}, `xds socket "x.sock" must be an absolute path`},
		{"admin port", BootstrapConfig{Node: "n", XDSSocket: "/x.sock", AdminPort: 70000}, "admin port 70000 out of range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Bootstrap(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Bootstrap() error = %v, want containing %q", err, tc.want)
			}
		})
	}
}

func TestWriteBootstrap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bootstrap.json")
	cfg := BootstrapConfig{Node: "node-a", XDSSocket: "/run/x.sock"}
	if err := WriteBootstrap(path, cfg); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Bootstrap(cfg)
	want, _ := MarshalBootstrap(b)
	if !bytes.Equal(got, want) {
		t.Errorf("written bootstrap differs from MarshalBootstrap")
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}

// TestBootstrapAcceptedByEnvoy asks a real Envoy to validate the bootstrap.
func TestBootstrapAcceptedByEnvoy(t *testing.T) {
	bin, err := exec.LookPath("envoy")
	if err != nil {
		t.Skip("envoy not on PATH: the bootstrap is checked only by Validate() and the golden file")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "bootstrap.json")
	if err := WriteBootstrap(path, BootstrapConfig{Node: "node-a", XDSSocket: filepath.Join(dir, "xds.sock"), AdminPort: 0}); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "--mode", "validate", "-c", path).CombinedOutput()
	if err != nil {
		t.Fatalf("envoy --mode validate: %v\n%s", err, out)
	}
}
