package main

import (
	"flag"
	"io"
	"strings"
	"testing"
)

func TestCheckSPIREFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		mtls bool
		want string
	}{
		{"spire alone", []string{"--spire-socket", "unix:///s"}, true, ""},
		{"with ca-dir", []string{"--spire-socket", "unix:///s", "--ca-dir", "/ca"}, true, "--ca-dir is a flag of the built-in CA"},
		{"with bootstrap-agents", []string{"--spire-socket", "unix:///s", "--bootstrap-agents", "n"}, true, "--bootstrap-agents is a flag"},
		{"without mtls", []string{"--spire-socket", "unix:///s"}, false, "needs --mtls"},
		{"xds-insecure", []string{"--spire-socket", "unix:///s", "--xds-insecure"}, true, "exclusive"},
		{"xds-insecure=false", []string{"--spire-socket", "unix:///s", "--xds-insecure=false"}, true, ""},
		{"with agent-service-account", []string{"--spire-socket", "unix:///s", "--agent-service-account", "a/b"}, true, "--agent-service-account is a flag"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("meshd", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			fs.String("spire-socket", "", "")
			fs.Bool("xds-insecure", false, "")
			for _, n := range builtInCAFlags {
				fs.String(n, "", "")
			}
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			err := checkSPIREFlags(fs, tc.mtls)
			if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("got %v; want %q", err, tc.want)
			}
		})
	}
}
