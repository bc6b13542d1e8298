package inboundauthz

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// inboundauthz is part of the pure translator: no gRPC, eBPF, network,
// files or clock (as translate/deps_test.go checks for its package). It
// uses time only for a constant duration.
func TestPureDependencies(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skipf("go command not on PATH: %v", err)
	}
	out, err := exec.Command("go", "list", "-json", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var p struct {
		Imports []string
		Deps    []string
	}
	if err := json.Unmarshal(out, &p); err != nil {
		t.Fatal(err)
	}
	if len(p.Deps) < 10 {
		t.Fatalf("only %d deps: the check would be meaningless", len(p.Deps))
	}
	for _, d := range p.Deps {
		for _, bad := range []string{"google.golang.org/grpc", "github.com/cilium/ebpf"} {
			if d == bad || strings.HasPrefix(d, bad+"/") {
				t.Errorf("depends (transitively) on %s", d)
			}
		}
	}
	for _, imp := range p.Imports {
		switch imp {
		case "net", "os", "os/exec", "syscall", "unsafe", "log", "log/slog":
			t.Errorf("imports %q", imp)
		}
	}
}
