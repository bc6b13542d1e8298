package kubeapi

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// RequestToken issues a token of ServiceAccount sa (in pod's namespace)
// for audience through the TokenRequest API, bound to pod when it has a
// name, as the kubelet fills a projected token volume.
func RequestToken(t testing.TB, kc kubernetes.Interface, pod *corev1.Pod, sa, audience string) string {
	t.Helper()
	exp := int64(3600)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: &exp}}
	if pod.Name != "" {
		req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	got, err := kc.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(t.Context(), sa, req, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token of %s/%s for %s: %v", pod.Namespace, sa, audience, err)
	}
	return got.Status.Token
}

// StartMeshd builds cmd/meshd and runs it with args (plus --xds-addr and
// --debug-addr on free loopback ports) until the test ends; it returns the
// xDS address once meshd is ready, and logs meshd's output if the test
// failed.
func StartMeshd(t testing.TB, args ...string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "meshd")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/nodemesh/nodemesh/cmd/meshd").CombinedOutput(); err != nil {
		t.Fatalf("build meshd: %v\n%s", err, out)
	}
	xdsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	debugAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cmd := exec.Command(bin, append(args, "--xds-addr", xdsAddr, "--debug-addr", debugAddr)...)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("meshd log:\n%s", logs.String())
		}
	})
	if err := poll(60*time.Second, func() error {
		resp, err := http.Get("http://" + debugAddr + "/readyz")
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz: %s", resp.Status)
		}
		return nil
	}); err != nil {
		t.Fatalf("meshd not ready: %v\n%s", err, logs.String())
	}
	return xdsAddr
}
