package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nodemesh/nodemesh/e2e/kubeapi"
	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/identity/kubetoken"
	"github.com/nodemesh/nodemesh/xds"
)

const agentNamespace = "nodemesh-system"

// TestAgentCertOnAPIServer is the node agent's certificate in a cluster,
// with every part real but the kubelet: kube-apiserver and etcd, the meshd
// binary (--kube: TokenReview of the agents' tokens, the bundle published
// in a ConfigMap, --svid-ttl 10s: renewed 5s after issue) and
// the mesh-agent binary with --xds-token (a pod-bound service account token
// from the TokenRequest API, as a projected volume holds it) and
// --xds-root-cert (the ConfigMap's root-cert.pem, as a ConfigMap volume
// holds it). The agent gets its certificate for its pod's node, syncs and
// renews over mTLS (its token alongside); once the token file holds the
// token of a deleted pod, meshd renews nothing more, and the agent keeps its
// last certificate and, past its expiry, the ADS stream it opened with the
// first one. An agent with the token of a pod on another node gets a
// certificate for that node and refuses it.
func TestAgentCertOnAPIServer(t *testing.T) {
	srv := kubeapi.Start(t)
	c := NewCluster(t, Config{Nodes: 1, PodsPerNode: 1})
	RequireBPFFS(t)
	n := c.Nodes[0]
	kc, err := kubernetes.NewForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for _, node := range []string{n.Name, "other-node"} {
		if _, err := kc.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: agentNamespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kc.CoreV1().ServiceAccounts(agentNamespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "mesh-agent"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokenFile, otherTokenFile := filepath.Join(dir, "token", "token"), filepath.Join(dir, "other-token")
	writeFileAt(t, tokenFile, []byte(agentPodToken(t, kc, "mesh-agent-"+n.Name, n.Name)))
	writeFileAt(t, otherTokenFile, []byte(agentPodToken(t, kc, "mesh-agent-other", "other-node")))

	xdsAddr := kubeapi.StartMeshd(t, "--kube", "--kubeconfig", srv.Kubeconfig, "--ca-dir", filepath.Join(dir, "ca"),
		"--lease-namespace", agentNamespace, "--lease-identity", "meshd-0", "--svid-ttl", "10s")
	rootsFile := filepath.Join(dir, "ca-root", kubetoken.RootCertKey)
	if err := pollUntil(30*time.Second, func() error {
		cm, err := kc.CoreV1().ConfigMaps(agentNamespace).Get(ctx, kubetoken.DefaultRootCertConfigMap, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cm.Data[kubetoken.RootCertKey] == "" {
			return fmt.Errorf("configmap %s has no %s", cm.Name, kubetoken.RootCertKey)
		}
		writeFileAt(t, rootsFile, []byte(cm.Data[kubetoken.RootCertKey]))
		return nil
	}); err != nil {
		t.Fatalf("the bundle ConfigMap: %v", err)
	}

	bin := buildMeshAgent(t)
	statusAddr := freeAddr(t)
	cmd := exec.Command(bin, "--node", n.Name, "--control-plane", xdsAddr, "--cgroup", n.Cgroup, "--pin-dir", c.PinDir(n),
		"--node-ip", n.IP.String(), "--status-addr", statusAddr, "--envoy", filepath.Join(dir, "no-envoy"),
		"--xds-token", tokenFile, "--xds-root-cert", rootsFile)
	var logs bytes.Buffer
	cmd.Stderr = &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c.OnCleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		(&meshADS{t: t, c: c}).uninstall(n)
	})
	defer func() {
		if t.Failed() {
			t.Logf("mesh-agent:\n%s", tail(logs.String(), 4000))
		}
	}()
	status := func() agentCertStatus {
		t.Helper()
		var st agentCertStatus
		getJSONURL(t, "http://"+statusAddr+"/status", &st)
		return st
	}
	if err := pollUntil(30*time.Second, func() error {
		if code := httpCode("http://" + statusAddr + "/readyz"); code != http.StatusOK {
			return fmt.Errorf("/readyz: %d", code)
		}
		return nil
	}); err != nil {
		t.Fatalf("mesh-agent not ready: %v", err)
	}
	first := status().XDSCredentials
	if first.Via != identity.AgentCertToken || first.Node != n.Name {
		t.Fatalf("first certificate %+v; want one for %s by token", first, n.Name)
	}
	t.Logf("bootstrapped by the token of pod mesh-agent-%s: serial %s, not after %s", n.Name, first.Serial, first.NotAfter)

	// Renewal over mTLS, the live token alongside.
	if err := pollUntil(30*time.Second, func() error {
		if st := status().XDSCredentials; st.Via != "mtls" || st.Serial == first.Serial || st.Node != n.Name {
			return fmt.Errorf("credentials %+v", st)
		}
		return nil
	}); err != nil {
		t.Fatalf("no renewal over mtls: %v", err)
	}
	second := status().XDSCredentials
	t.Logf("renewed over mtls: serial %s -> %s", first.Serial, second.Serial)

	// The pod-bound token dies with its pod, and with it the right to
	// renew: with such a token meshd renews nothing, not even over mTLS.
	// The agent keeps its certificate, and its stream outlives it.
	dead := agentPodToken(t, kc, "mesh-agent-gone", n.Name)
	zero := int64(0)
	if err := kc.CoreV1().Pods(agentNamespace).Delete(ctx, "mesh-agent-gone", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	writeFileAt(t, tokenFile, []byte(dead))
	const refused = "needs the node agent's bearer token too"
	if err := pollUntil(30*time.Second, func() error {
		if st := status().XDSCredentials; !strings.Contains(st.LastError, refused) {
			return fmt.Errorf("credentials %+v", st)
		}
		return nil
	}); err != nil {
		t.Fatalf("renewal with a deleted pod's token not refused: %v; want %q", err, refused)
	}
	last := status().XDSCredentials
	time.Sleep(time.Until(last.NotAfter.Add(time.Second)))
	st := status()
	if st.XDSCredentials.Serial != last.Serial {
		t.Errorf("renewed with a deleted pod's token: serial %s -> %s", last.Serial, st.XDSCredentials.Serial)
	}
	if !st.ADS.Connected || !st.ADS.Synced || st.ADS.Reconnects != 0 {
		t.Errorf("ADS connected %v, synced %v, %d reconnects (%s); want the first stream up", st.ADS.Connected, st.ADS.Synced, st.ADS.Reconnects, st.ADS.LastError)
	}

	t.Run("token-of-another-node", func(t *testing.T) {
		meshdID, err := xds.ControlPlaneID(identity.DefaultTrustDomain)
		if err != nil {
			t.Fatal(err)
		}
		wrong, err := identity.NewAgentCert(identity.AgentCertConfig{TrustDomain: identity.DefaultTrustDomain, Node: n.Name,
			RootsFile: rootsFile, TokenFile: otherTokenFile, Address: xdsAddr, ServerID: meshdID})
		if err != nil {
			t.Fatal(err)
		}
		go wrong.Run(ctx)
		want := `bound to node "other-node", this agent is node "` + n.Name + `"`
		if err := pollUntil(20*time.Second, func() error {
			if !strings.Contains(wrong.Status().LastError, want) {
				return fmt.Errorf("last error %q", wrong.Status().LastError)
			}
			return nil
		}); err != nil {
			t.Fatalf("%v; want %q", err, want)
		}
		if _, err := wrong.GetX509SVID(); err == nil {
			t.Error("a certificate for another node was installed")
		}
	})
}

// agentPodToken creates pod name of the agents' ServiceAccount on node and
// returns a token bound to it for audience nodemesh: what kubelet puts in
// the agent's projected token volume.
func agentPodToken(t *testing.T, kc kubernetes.Interface, name, node string) string {
	t.Helper()
	pod, err := kc.CoreV1().Pods(agentNamespace).Create(t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: "mesh-agent",
			Containers: []corev1.Container{{Name: "agent", Image: "example/mesh-agent:1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return kubeapi.RequestToken(t, kc, pod, "mesh-agent", kubetoken.DefaultAudience)
}

func pollUntil(d time.Duration, fn func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := fn()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}
