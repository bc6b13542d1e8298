package main

import "testing"

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
