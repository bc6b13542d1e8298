package agent

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/nodemesh/nodemesh/identity"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		// The child of TestWorkloadSVIDsGRPCXDS hosts gRPC's process-wide
		// xDS clients, which outlive the test by design.
		os.Exit(m.Run())
	}
	goleak.VerifyTestMain(m)
}

func TestConfigValidate(t *testing.T) {
	good := Config{Node: "n1", ControlPlane: "127.0.0.1:15010", CgroupPath: "/sys/fs/cgroup/node"}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string // substring of the error; "" = valid
	}{
		{"minimal", func(*Config) {}, ""},
		{"with envoy", func(c *Config) { c.EnvoySocket = "/run/nodemesh/xds.sock"; c.NodeIP = netip.MustParseAddr("10.0.0.1") }, ""},
		{"no node", func(c *Config) { c.Node = "" }, "node is required"},
		{"no control plane", func(c *Config) { c.ControlPlane = "" }, "control plane address is required"},
		{"no cgroup", func(c *Config) { c.CgroupPath = "" }, "cgroup path"},
		{"relative cgroup", func(c *Config) { c.CgroupPath = "node" }, "must be an absolute path"},
		{"relative socket", func(c *Config) { c.EnvoySocket = "xds.sock" }, "envoy socket"},
		{"bootstrap without socket", func(c *Config) { c.EnvoyBootstrapPath = "/tmp/b.json" }, "needs an envoy socket"},
		{"bad jitter", func(c *Config) { c.Backoff.Jitter = 1 }, "jitter"},
		{"workload svids with files and local sds", func(c *Config) {
			c.WorkloadSVIDs, c.WorkloadCertsDir, c.LocalSDS, c.EnvoySocket = &identity.CA{}, "/run/nodemesh/certs", true, "/run/nodemesh/xds.sock"
		}, ""},
		{"certs dir without a source", func(c *Config) { c.WorkloadCertsDir = "/run/nodemesh/certs" }, "workload certs dir needs a workload SVID source"},
		{"relative certs dir", func(c *Config) { c.WorkloadSVIDs, c.WorkloadCertsDir = &identity.CA{}, "certs" }, "must be an absolute path"},
		{"local sds without a source", func(c *Config) { c.LocalSDS, c.EnvoySocket = true, "/run/nodemesh/xds.sock" }, "local SDS needs"},
		{"local sds without envoy", func(c *Config) { c.LocalSDS, c.WorkloadSVIDs = true, &identity.CA{} }, "local SDS needs"},
		{"spire is asked by pid by default", func(c *Config) { c.WorkloadSVIDs = &identity.SPIRE{} }, ""},
		{"spire by selectors (opt-in)", func(c *Config) { c.WorkloadSVIDs, c.WorkloadSVIDsBy = &identity.SPIRE{}, SVIDBySelectors }, ""},
		{"spire by id", func(c *Config) { c.WorkloadSVIDs, c.WorkloadSVIDsBy = &identity.SPIRE{}, SVIDByID }, "asked by pid"},
		{"by pid from a source that attests no processes", func(c *Config) { c.WorkloadSVIDs, c.WorkloadSVIDsBy = &identity.CA{}, SVIDByPID }, "needs a source that attests processes"},
		{"unknown request mode", func(c *Config) { c.WorkloadSVIDs, c.WorkloadSVIDsBy = &identity.CA{}, "uid" }, `workload SVIDs by "uid"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.edit(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("want valid, got %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("want an error containing %q, got %v", tc.want, err)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	c := Config{Node: "n1", ControlPlane: "x:1", CgroupPath: "/cg", EnvoySocket: "/run/nm/xds.sock",
		NodeIP: netip.MustParseAddr("::ffff:10.0.0.1")}.withDefaults()
	if c.EnvoyBootstrapPath != "/run/nm/envoy-bootstrap.json" || c.EnvoyBinary != "envoy" || c.Logger == nil || c.PodCgroup == nil {
		t.Errorf("defaults not filled: %+v", c)
	}
	if c.NodeIP != netip.MustParseAddr("10.0.0.1") {
		t.Errorf("node IP %s not unmapped", c.NodeIP)
	}
}
