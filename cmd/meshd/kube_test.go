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
	} {
		if err := tc.k.check(); (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}
