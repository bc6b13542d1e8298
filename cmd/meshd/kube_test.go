package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestKubeFlagsCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		k    kubeFlags
		ok   bool
	}{
		{"file mode", kubeFlags{}, true},
		{"kube", kubeFlags{enabled: true}, true},
		{"kubeconfig implies kube", kubeFlags{kubeconfig: "kc", namespace: "ns"}, true},
		{"kube with a lease", kubeFlags{enabled: true, leaseNamespace: "ns", leaseIdentity: "pod"}, true},
		{"namespace without kube", kubeFlags{namespace: "ns"}, false},
		{"lease without kube", kubeFlags{leaseNamespace: "ns", leaseIdentity: "pod"}, false},
		{"lease namespace without identity", kubeFlags{enabled: true, leaseNamespace: "ns"}, false},
		{"lease identity without namespace", kubeFlags{enabled: true, leaseIdentity: "pod"}, false},
		{"agent service account without kube", kubeFlags{agentServiceAccount: "a/b", explicit: map[string]bool{"agent-service-account": true}}, false},
		{"agent token audience without kube", kubeFlags{explicit: map[string]bool{"agent-token-audience": true}}, false},
		{"root configmap without kube", kubeFlags{rootCertConfigMap: "roots", explicit: map[string]bool{"root-cert-configmap": true}}, false},
		{"root configmap without lease namespace", kubeFlags{enabled: true, rootCertConfigMap: "roots", explicit: map[string]bool{"root-cert-configmap": true}}, false},
		{"root configmap disabled without lease namespace", kubeFlags{enabled: true, explicit: map[string]bool{"root-cert-configmap": true}}, true},
		{"agent flags with kube", kubeFlags{enabled: true, agentServiceAccount: "a/b", agentTokenAudience: "x", rootCertConfigMap: "roots",
			leaseNamespace: "ns", leaseIdentity: "pod", explicit: map[string]bool{"agent-service-account": true, "agent-token-audience": true, "root-cert-configmap": true}}, true},
		{"defaults without kube", kubeFlags{agentServiceAccount: "nodemesh-system/mesh-agent", agentTokenAudience: "nodemesh", rootCertConfigMap: "nodemesh-ca-root"}, true},
	} {
		if err := tc.k.check(); (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

// meshd refuses to start with agent bootstrap flags it cannot use, naming
// the flag.
func TestMeshdAgentBootstrapFlags(t *testing.T) {
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	// A server nobody listens on: meshd must fail on the flags before it
	// talks to the API.
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args, want string
	}{
		{"--kube --kubeconfig " + kc + " --ca-dir " + t.TempDir() + " --agent-service-account mesh-agent", "--agent-service-account: kubetoken: ServiceAccount"},
		{"--config " + t.TempDir() + " --agent-token-audience x", "need --kube"},
		{"--kube --kubeconfig " + kc + " --root-cert-configmap roots", "--root-cert-configmap needs --lease-namespace"},
	} {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), "MESHD_TEST_RUN_MAIN=1", "MESHD_TEST_ARGS="+tc.args)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), tc.want) {
			t.Errorf("meshd %s: %v\n%s\nwant exit 2 saying %q", tc.args, err, out, tc.want)
		}
	}
}
