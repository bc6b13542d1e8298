package main

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain lets the test binary run as meshd itself (the child of
// TestMeshdServesAndStopsOnSIGTERM).
func TestMain(m *testing.M) {
	if os.Getenv("MESHD_TEST_RUN_MAIN") == "1" {
		os.Args = append([]string{"meshd"}, strings.Fields(os.Getenv("MESHD_TEST_ARGS"))...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestMeshdServesAndStopsOnSIGTERM(t *testing.T) {
	dir := t.TempDir()
	svc := "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  ports:\n  - name: http\n    port: 80\n"
	if err := os.WriteFile(filepath.Join(dir, "svc.yaml"), []byte(svc), 0o644); err != nil {
		t.Fatal(err)
	}
	xdsAddr, debugAddr := freeAddr(t), freeAddr(t)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "MESHD_TEST_RUN_MAIN=1",
		"MESHD_TEST_ARGS=--config "+dir+" --xds-addr "+xdsAddr+" --debug-addr "+debugAddr+" --log-level debug --ca-dir "+t.TempDir())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})

	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + debugAddr + "/readyz")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(string(body), "1 objects") {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("meshd not ready: %v\n%s", err, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if c, err := net.Dial("tcp", xdsAddr); err != nil {
		t.Fatalf("xds port not listening: %v", err)
	} else {
		c.Close()
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		done <- err // for the cleanup
		if err != nil {
			t.Fatalf("meshd exited with %v\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("meshd did not stop on SIGTERM\n%s", stderr.String())
	}
	if !strings.Contains(stderr.String(), "meshd stopped") {
		t.Fatalf("log lacks the stop line:\n%s", stderr.String())
	}
}

func TestMeshdUsage(t *testing.T) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "MESHD_TEST_RUN_MAIN=1", "MESHD_TEST_ARGS=")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "usage: meshd (--config DIR | --kube") {
		t.Fatalf("no --config: %v\n%s", err, out)
	}
}
